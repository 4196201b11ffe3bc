"""Data: batches of Datum records read from an LMDB or LevelDB database.

As Caffe's DataLayer: records are read in key order and the cursor wraps
around at the end; each record is a ``Datum`` holding raw uint8 pixels
(``data``), floats (``float_data``) or an encoded image (``encoded``, decoded
with Pillow into Caffe's BGR order); ``transform_param`` (scale, mean, crop,
mirror) is applied by the DataTransformer.  The first top is the
(batch_size, C, H, W) data, the optional second the (batch_size,) labels.

A relative ``source`` is looked up in the working directory (Caffe's rule) and
then next to the net's config file.  Batches are prefetched on a background
thread; ``get_state()`` names the key and random state of the next batch, so a
resumed run reads exactly the batches the uninterrupted run would have.

Trained over several MPI ranks, rank r of N reads records r, r + N, ... of the
stream (Caffe's DataLayer::Skip), so the ranks' batches together are one
process's batch of N x batch_size; test nets read everything (net/comm.py).
"""
import numpy as np

from numcaffe.layers.base import register
from numcaffe.layers.base_data import PrefetchingDataLayer
from numcaffe.net.comm import layer_shard, realign
from numcaffe.net.data.db import datum_array, open_reader, parse_datum
from numcaffe.net.data.transform import DataTransformer, decode_image
from numcaffe.net.errors import ConfigError, DataError
from numcaffe.net.io import resolve_path
from numcaffe.net.log import get_logger
from numcaffe.net.proto.caffe_pb2 import Datum


def generator_like(rng, state):
    """A new Generator of ``rng``'s kind, put in ``state`` (to replay a past draw)."""
    bg = type(rng.bit_generator)()
    bg.state = state
    return np.random.Generator(bg)


class DatumSource:
    """Reads batches of Datums from a database :class:`~numcaffe.net.data.db.Reader` and transforms them."""

    def __init__(self, reader, transformer, batch_size, rng, with_label, where, shard=(0, 1)):
        self.reader = reader
        self.shard = shard        # (rank, size): this rank reads records rank, rank + size, ...
        self.transformer = transformer
        self.batch_size = batch_size
        self.rng = rng
        self.with_label = with_label
        self.where = where

    def _where(self, key):
        return f"{self.where}: record {key!r} of {self.reader.path!r}"

    def item_array(self, key, value):
        """(C, H, W) uint8/float32 array and label of one record."""
        d = parse_datum(value, self._where(key))
        if d.encoded:
            return decode_image(d.data, self.transformer.decode_color, where=self._where(key)), d.label
        return datum_array(d, self._where(key)), d.label

    def item_shape(self):
        """Shape of one transformed item, from the record the cursor is on (Caffe's InferBlobShape)."""
        key, value = self.reader.peek()
        return self.transformer.output_shape(*self.item_array(key, value)[0].shape)

    def _stack(self, records):
        try:
            datums = [Datum.FromString(v) for _, v in records]
        except Exception:  # find the bad record and report it by key
            datums = [parse_datum(v, self._where(k)) for k, v in records]
        labels = np.array([d.label for d in datums], dtype=np.float32)
        datas = [d.data for d in datums]
        first = datums[0]
        shape = (first.channels, first.height, first.width)
        if all(datas) and not any(d.encoded for d in datums):
            raw = b"".join(datas)
            n = shape[0] * shape[1] * shape[2]
            if len(raw) == n * len(datums) and {(d.channels, d.height, d.width) for d in datums} == {shape}:
                return np.frombuffer(raw, dtype=np.uint8).reshape((len(datums),) + shape), labels
        arrays = []
        for (k, _), d in zip(records, datums):
            if d.encoded:
                arrays.append(decode_image(d.data, self.transformer.decode_color, where=self._where(k)))
            else:
                arrays.append(datum_array(d, self._where(k)))
            if arrays[-1].shape != arrays[0].shape:
                raise DataError(f"{self._where(k)}: is {arrays[-1].shape} (C, H, W) but the first item of its "
                                f"batch is {arrays[0].shape}; items of one batch must have one shape")
        dtype = np.uint8 if all(a.dtype == np.uint8 for a in arrays) else np.float32
        return np.stack(arrays).astype(dtype, copy=False), labels

    def load_batch(self, arrays):
        raw, labels = self._stack(self.reader.read(self.batch_size, stride=self.shard[1]))
        data = self.transformer.transform(raw, self.rng, out=arrays[0] if arrays else None)
        if not self.with_label:
            return [data]
        return [data, labels]

    def position(self):
        return {"key": self.reader.key.hex(), "rng": self.rng.bit_generator.state, "shard": list(self.shard)}

    def seek(self, position):
        try:
            key = bytes.fromhex(position["key"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.where}: the saved state has no valid database key") from None
        self.reader.seek(key)
        self.reader.skip(realign(position, *self.shard))
        self.rng.bit_generator.state = position["rng"]

    def close(self):
        self.reader.close()


@register("Data")
class DataLayer(PrefetchingDataLayer):
    """Batches from a database of Datums; tops: data and (optionally) label."""

    min_num_top = 1
    max_num_top = 2

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.data_param
        if not p.batch_size:
            raise ConfigError(f"{self.describe()}: data_param.batch_size must be positive")
        if not p.source:
            raise ConfigError(f"{self.describe()}: data_param.source (the database path) is missing")
        transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.base_dir,
                                      self.describe(), legacy=p)
        if p.force_encoded_color:
            transformer.force_color = True
        path = resolve_path(p.source, self.base_dir, f"{self.describe()}: data_param.source")
        reader = open_reader(path, p.backend)
        get_logger().info("Opened %s %s", reader.backend, p.source)
        try:
            if p.rand_skip:
                # Caffe's deprecated random skip of up to rand_skip leading records
                skip = int(self.random.integers(p.rand_skip))
                get_logger().info("Skipping first %d data points.", skip)
                reader.read(skip)
            shard = layer_shard(self)
            reader.skip(shard[0])   # Caffe's DataLayer::Skip: record i goes to rank i mod size
            source = DatumSource(reader, transformer, int(p.batch_size), self.random, len(top) > 1,
                                 self.describe(), shard)
            shape = source.item_shape()
        except BaseException:
            reader.close()
            raise
        top[0].reshape((int(p.batch_size),) + shape)
        get_logger().info("output data size: %s", ",".join(str(d) for d in top[0].shape))
        if len(top) > 1:
            top[1].reshape((int(p.batch_size),))
        self.prefetch_depth = max(1, int(p.prefetch))
        self.start_prefetch(source)
