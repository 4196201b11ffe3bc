"""Net weights in HDF5, in Caffe's layout (Net::ToHDF5 / CopyTrainedLayersFromHDF5).

The file holds a group ``/data`` with one group per layer of the net (layers
without parameters included, as Caffe writes them) and in it one float32
dataset per parameter blob, named ``0``, ``1``, ...  A parameter shared with an
earlier layer (``ParamSpec.name``) is written only by the layer that owns it.
With ``write_diff`` the gradients go to ``/diff`` in the same layout, shared
ones included.

h5py is an optional dependency (``pip install numcaffe[data]``); it is imported
only here, when an HDF5 file is actually read or written.  Writing goes to a
temporary file in the same directory that is renamed into place, so a crash
mid-write leaves the previous file intact.
"""
import contextlib
import os
import tempfile

import numpy as np

from numcaffe.net.errors import ModelFileError, NumcaffeError


def require_h5py(what="HDF5 files"):
    try:
        import h5py
    except ImportError:
        raise NumcaffeError(f"{what} need the h5py package; install it with "
                            f"`pip install numcaffe[data]` (or `pip install h5py`)") from None
    return h5py


@contextlib.contextmanager
def atomic_h5_file(path):
    """An ``h5py.File`` open for writing at a temporary name, renamed to ``path`` on success."""
    h5py = require_h5py()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_h5_for_reading(path, what="HDF5 file"):
    h5py = require_h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such {what}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ModelFileError(f"{path}: not a readable HDF5 file ({e})") from None


def _owned_params(net):
    return {id(b) for b in net.learnable_params}


def save_net_hdf5(net, path, write_diff=False):
    """Write ``net``'s parameters to ``path`` in Caffe's HDF5 snapshot layout."""
    owned = _owned_params(net)
    with atomic_h5_file(path) as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for layer in net.layers:
            ldata = data.create_group(layer.name)
            ldiff = diff.create_group(layer.name) if write_diff else None
            for j, blob in enumerate(layer.blobs):
                if id(blob) in owned:
                    ldata.create_dataset(str(j), data=np.array(blob.data, dtype=np.float32))
                if write_diff:
                    ldiff.create_dataset(str(j), data=np.array(blob.diff, dtype=np.float32))


def load_net_hdf5(net, path):
    """Copy weights from a Caffe HDF5 weights file into ``net`` by layer name; returns the count."""
    path = os.fspath(path)
    owned = _owned_params(net)
    layer_index = {layer.name: layer for layer in net.layers}
    copied = 0
    with open_h5_for_reading(path, "weights file") as f:
        if "data" not in f:
            raise ModelFileError(f"{path}: has no /data group; is it a Caffe HDF5 weights file?")
        data = f["data"]
        for name in data:
            layer = layer_index.get(name)
            if layer is None:
                continue
            group = data[name]
            if len(group) > len(layer.blobs):
                raise ModelFileError(f"{path}: layer {name!r} has {len(group)} parameter blob(s) in the file "
                                     f"but {len(layer.blobs)} in the net")
            for j, blob in enumerate(layer.blobs):
                key = str(j)
                if key not in group:
                    if id(blob) not in owned:
                        continue  # shared with an earlier layer, which carries the values
                    raise ModelFileError(f"{path}: layer {name!r} lacks parameter {j} "
                                         f"({len(group)} in the file, {len(layer.blobs)} in the net)")
                values = group[key][()]
                if tuple(values.shape) != tuple(blob.shape):
                    raise ModelFileError(f"{path}: layer {name!r} parameter {j}: the file has shape "
                                         f"{tuple(values.shape)}, the net expects {blob.shape}")
                blob.data[...] = values
            copied += 1
    return copied
