"""MemoryData: batches from arrays handed in from Python (Caffe's MemoryDataLayer).

``layer.reset(data, labels)`` (or pycaffe's ``net.set_input_arrays(data,
labels)``) gives the layer an (N, channels, height, width) float array and N
labels, N a multiple of ``batch_size``; every forward pass emits the next
``batch_size`` rows and labels, wrapping around.  As in Caffe the arrays are
used as given, without ``transform_param``; numcaffe keeps a reference (a
float32 C-contiguous array is not copied).  Tops: data and label.  Over N MPI
ranks (training only) every rank is given the same arrays and rank r emits rows
r, r + N, ... (any number of rows then works).
"""
import numpy as np

from numcaffe.layers.base import Layer, register
from numcaffe.net.errors import ConfigError, ShapeError


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Emits consecutive batches of the arrays given to :meth:`reset`."""

    exact_num_bottom = 0
    exact_num_top = 2
    force_backward_bottoms = False

    def __init__(self, param):
        super().__init__(param)
        p = param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.item_shape = (int(p.channels), int(p.height), int(p.width))
        self.data = None
        self.labels = None
        self.pos = 0
        self.shard = (0, 1)

    def LayerSetUp(self, bottom, top):
        from numcaffe.net.comm import layer_shard
        self.shard = layer_shard(self)   # pos counts the rows of all ranks; this rank takes every size-th
        if self.batch_size <= 0 or min(self.item_shape) <= 0:
            raise ConfigError(f"{self.describe()}: memory_data_param needs positive batch_size, channels, "
                              f"height and width")
        top[0].reshape((self.batch_size,) + self.item_shape)
        top[1].reshape((self.batch_size,))

    def reset(self, data, labels):
        """Use ``data`` (N, C, H, W) and ``labels`` (N) from now on, starting at row 0."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise ShapeError(f"{self.describe()}: data must have shape (N, {', '.join(map(str, self.item_shape))})"
                             f" (N, channels, height, width); got {data.shape}")
        labels = labels.reshape(labels.shape[0], -1) if labels.ndim > 1 else labels
        if labels.ndim != 1 and labels.shape[1] != 1:
            raise ShapeError(f"{self.describe()}: labels must hold one value per row; got shape {labels.shape}")
        labels = labels.reshape(-1)
        n = data.shape[0]
        if labels.shape[0] != n:
            raise ShapeError(f"{self.describe()}: {n} data rows but {labels.shape[0]} labels")
        if n == 0 or n % self.batch_size:
            raise ShapeError(f"{self.describe()}: the number of rows ({n}) must be a positive multiple of "
                             f"batch_size ({self.batch_size})")
        self.data, self.labels, self.pos = data, labels, 0

    # pycaffe's name on the layer
    set_input_arrays = reset

    def set_batch_size(self, batch_size):
        """Change the batch size (Caffe's set_batch_size); the arrays must still divide evenly."""
        batch_size = int(batch_size)
        if batch_size <= 0:
            raise ConfigError(f"{self.describe()}: batch_size must be positive")
        if self.data is not None and self.data.shape[0] % batch_size:
            raise ShapeError(f"{self.describe()}: {self.data.shape[0]} rows are not a multiple of "
                             f"batch_size {batch_size}")
        self.batch_size = batch_size

    def Reshape(self, bottom, top):
        top[0].reshape((self.batch_size,) + self.item_shape)
        top[1].reshape((self.batch_size,))

    def Forward_cpu(self, bottom, top):
        if self.data is None:
            raise ConfigError(f"{self.describe()}: no data yet; call reset(data, labels) or "
                              f"net.set_input_arrays(data, labels) first")
        b, p = self.batch_size, self.pos % self.data.shape[0]
        rank, size = self.shard
        if size == 1:
            top[0].data[...] = self.data[p:p + b]
            top[1].data[...] = self.labels[p:p + b]
        else:   # rows p + rank, p + rank + size, ...: item i goes to rank i mod size
            rows = (p + rank + size * np.arange(b)) % self.data.shape[0]
            np.take(self.data, rows, axis=0, out=top[0].data)
            np.take(self.labels, rows, axis=0, out=top[1].data)
        self.pos = (p + b * size) % self.data.shape[0]

    def Backward_cpu(self, top, propagate_down, bottom):
        pass

    def get_state(self):
        state = super().get_state()
        state["pos"] = int(self.pos)
        return state

    def set_state(self, state):
        super().set_state(state)
        if "pos" in state:
            self.pos = int(state["pos"])
