"""HDF5Data and HDF5Output: arrays from and to HDF5 files.

HDF5Data (Caffe's HDF5DataLayer): ``source`` is a text file listing .h5 files,
one per line; each top names a dataset that every file holds, all with the
same number of rows (first axis).  Batches take ``batch_size`` consecutive
rows, moving on to the next file (and from the last back to the first) as
needed, so a batch may span files.  With ``shuffle`` the file order is
permuted at setup and at every pass over the files, and the rows of a file
whenever it is loaded or its rows have all been read.  Values are read as
float32 and no transformation is applied (Caffe's rule).  A file is loaded
whole, as in Caffe; batches are prefetched on a background thread.  Over N MPI
ranks (training only) rank r takes rows r, r + N, ... of that stream, every
rank drawing the same permutations (Caffe's HDF5DataLayer::Skip).

HDF5Output (Caffe's HDF5OutputLayer): writes its two bottoms to datasets
``data`` and ``label`` of ``file_name``, which is created (truncated) at
setup.  Caffe writes once and fails on a second forward pass; numcaffe appends
the rows of every pass instead, so the file holds all batches in order.
"""
import os

import numpy as np

from numcaffe.layers.base import Layer, register
from numcaffe.layers.base_data import PrefetchingDataLayer
from numcaffe.layers.data import generator_like
from numcaffe.net.comm import layer_shard, realign
from numcaffe.net.data.db import need
from numcaffe.net.errors import ConfigError, DataError
from numcaffe.net.io import resolve_path


def read_file_list(path, base_dir, where):
    """The HDF5 paths listed in ``path`` (whitespace-separated, as Caffe reads them)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = f.read().split()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: cannot read the file list {path!r}: {e}") from None
    if not names:
        raise DataError(f"{where}: the file list {path!r} names no HDF5 files")
    list_dir = os.path.dirname(os.path.abspath(path))
    out = []
    for name in names:
        found = resolve_path(name, base_dir, "HDF5 file", must_exist=False)
        if not os.path.exists(found) and not os.path.isabs(name):
            alt = os.path.join(list_dir, name)
            found = alt if os.path.exists(alt) else found
        out.append(found)
    return out


def load_hdf5(path, names, where):
    """The datasets ``names`` of one file as float32 arrays with equal row counts."""
    h5py = need("h5py", "reading HDF5 files")
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise DataError(f"{where}: HDF5 file {path!r} does not exist") from None
    except OSError as e:
        raise DataError(f"{where}: cannot open HDF5 file {path!r}: {e}") from None
    with f:
        arrays = []
        for name in names:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                have = ", ".join(repr(k) for k in f.keys()) or "none"
                raise DataError(f"{where}: {path!r} has no dataset {name!r} (the tops of HDF5Data name "
                                f"the datasets to read; the file has {have})")
            ds = f[name]
            if ds.ndim < 1 or ds.shape[0] == 0:
                raise DataError(f"{where}: dataset {name!r} of {path!r} has shape {ds.shape}; "
                                f"it needs at least one row")
            arrays.append(np.ascontiguousarray(ds[...], dtype=np.float32))
    rows = {a.shape[0] for a in arrays}
    if len(rows) != 1:
        sizes = ", ".join(f"{n}: {a.shape[0]}" for n, a in zip(names, arrays))
        raise DataError(f"{where}: the datasets of {path!r} have different numbers of rows ({sizes})")
    return arrays


class HDF5Source:
    """Rows of the listed files in (possibly shuffled) file and row order."""

    def __init__(self, files, names, batch_size, shuffle, rng, where, shard=(0, 1)):
        self.files = files
        # (rank, size): this rank takes rows rank, rank + size, ... of the stream.  Every rank draws the same
        # permutations (the generator draws nothing else, in the same order on every rank) and deals them.
        self.shard = shard
        self.names = names
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = rng
        self.where = where
        self.file_state = None      # generator state the file order was drawn from (None: listed order)
        self.file_order = np.arange(len(files))
        self.file_pos = 0
        self.row_state = None
        self.row = 0
        self._loaded = None         # index into self.files of the arrays held
        if shuffle:
            self.file_state, self.file_order = self._permute(len(files))
        self._load(shuffle_rows=shuffle)

    def _permute(self, n):
        state = self.rng.bit_generator.state
        return state, self.rng.permutation(n)

    def _load(self, shuffle_rows):
        index = int(self.file_order[self.file_pos])
        if self._loaded != index:
            self.arrays = load_hdf5(self.files[index], self.names, self.where)
            self._loaded = index
        n = self.arrays[0].shape[0]
        if shuffle_rows:
            self.row_state, self.row_order = self._permute(n)
        else:
            self.row_state, self.row_order = None, np.arange(n)

    def item_shapes(self):
        return [a.shape[1:] for a in self.arrays]

    def _advance_file(self):
        """Caffe's Next() at the end of a file's rows."""
        if len(self.files) > 1:
            self.file_pos += 1
            if self.file_pos == len(self.files):
                self.file_pos = 0
                if self.shuffle:
                    self.file_state, self.file_order = self._permute(len(self.files))
        self._load(self.shuffle)
        self.row = 0

    def skip(self, n):
        """Pass over the next ``n`` rows."""
        for _ in range(n):
            self.row += 1
            if self.row == self.arrays[0].shape[0]:
                self._advance_file()

    def _check_rows(self, out, src):
        if src.shape[1:] != out.shape[1:]:
            raise DataError(f"{self.where}: {self.files[self._loaded]!r} holds rows of shape "
                            f"{src.shape[1:]} where earlier files had {out.shape[1:]}")

    def load_batch(self, arrays):
        n = self.batch_size
        shapes = [(n,) + a.shape[1:] for a in self.arrays]
        if len(arrays) != len(shapes) or any(a.shape != s for a, s in zip(arrays, shapes)):
            arrays = [np.empty(s, dtype=np.float32) for s in shapes]
        if self.shard[1] > 1:
            for j in range(n):      # one row, then past the other ranks' rows
                r = self.row_order[self.row]
                for out, src in zip(arrays, self.arrays):
                    self._check_rows(out, src)
                    out[j] = src[r]
                self.skip(self.shard[1])
            return arrays
        filled = 0
        while filled < n:
            k = min(n - filled, self.arrays[0].shape[0] - self.row)
            rows = self.row_order[self.row:self.row + k]
            for out, src in zip(arrays, self.arrays):
                self._check_rows(out, src)
                np.take(src, rows, axis=0, out=out[filled:filled + k])
            filled += k
            self.row += k
            if self.row == self.arrays[0].shape[0]:
                self._advance_file()
        return arrays

    def position(self):
        return {"files": self.file_state, "file": int(self.file_pos), "rows": self.row_state,
                "row": int(self.row), "rng": self.rng.bit_generator.state, "shard": list(self.shard)}

    def seek(self, position):
        try:
            file_state, file_pos = position["files"], int(position["file"])
            row_state, row = position["rows"], int(position["row"])
            rng_state = position["rng"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.where}: the saved state is not an HDF5Data position") from None
        if not 0 <= file_pos < len(self.files):
            raise DataError(f"{self.where}: the saved state names file {file_pos} of {len(self.files)}")
        n = len(self.files)
        self.file_state = file_state
        self.file_order = np.arange(n) if file_state is None else generator_like(self.rng, file_state).permutation(n)
        self.file_pos = file_pos
        self._load(shuffle_rows=False)
        rows = self.arrays[0].shape[0]
        if not 0 <= row < rows:
            raise DataError(f"{self.where}: the saved row {row} is outside the file's {rows} rows")
        self.row_state = row_state
        self.row_order = np.arange(rows) if row_state is None else generator_like(self.rng, row_state).permutation(rows)
        self.row = row
        self.rng.bit_generator.state = rng_state
        self.skip(realign(position, *self.shard))

    def close(self):
        self.arrays = None
        self._loaded = None


@register("HDF5Data")
class HDF5DataLayer(PrefetchingDataLayer):
    """Rows of HDF5 datasets named by the tops, from the files a list names."""

    min_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.hdf5_data_param
        if not p.batch_size:
            raise ConfigError(f"{self.describe()}: hdf5_data_param.batch_size must be positive")
        if len(self.layer_param.top) != len(top):
            raise ConfigError(f"{self.describe()}: the tops name the datasets to read")
        list_path = resolve_path(p.source, self.base_dir, f"{self.describe()}: hdf5_data_param.source")
        files = read_file_list(list_path, self.base_dir, self.describe())
        source = HDF5Source(files, list(self.layer_param.top), int(p.batch_size), bool(p.shuffle),
                            self.random, self.describe(), layer_shard(self))
        source.skip(source.shard[0])
        for t, shape in zip(top, source.item_shapes()):
            t.reshape((int(p.batch_size),) + tuple(shape))
        self.start_prefetch(source)


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes bottoms 0 and 1 to the datasets ``data`` and ``label`` of ``file_name``."""

    exact_num_bottom = 2
    exact_num_top = 0
    force_backward_bottoms = False
    dataset_names = ("data", "label")

    def LayerSetUp(self, bottom, top):
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise ConfigError(f"{self.describe()}: hdf5_output_param.file_name is missing")
        h5py = need("h5py", "writing HDF5 files")
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as e:
            raise DataError(f"{self.describe()}: cannot create {self.file_name!r}: {e}") from None

    def Reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.shape_error(f"data and label must have the same num; got {bottom[0].shape} "
                                   f"and {bottom[1].shape}")

    def Forward_cpu(self, bottom, top):
        h5py = need("h5py", "writing HDF5 files")
        with h5py.File(self.file_name, "a") as f:
            for name, b in zip(self.dataset_names, bottom):
                value = b.data
                if name not in f:
                    f.create_dataset(name, data=value, maxshape=(None,) + value.shape[1:],
                                     chunks=True if value.ndim else None)
                    continue
                ds = f[name]
                if ds.shape[1:] != value.shape[1:]:
                    raise self.shape_error(f"{name!r} rows of shape {value.shape[1:]} cannot be appended to "
                                           f"{self.file_name!r}, which holds rows of shape {ds.shape[1:]}")
                n = ds.shape[0]
                ds.resize(n + value.shape[0], axis=0)
                ds[n:] = value

    def Backward_cpu(self, top, propagate_down, bottom):
        pass
