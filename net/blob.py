"""Blob: the N-D float32 array pair (``data`` and ``diff``) that layers exchange.

As in Caffe, a blob's memory only grows: reshaping to a smaller or equal count
reuses the buffer, so a net that reshapes every batch allocates nothing after
the first.  ``data`` and ``diff`` are numpy views into that buffer; callers may
write into them in place (``blob.data[...] = x``).

Sharing (``share_data`` / ``share_diff``) makes two blobs use one buffer; the
buffer lives in a small holder object, so a later reshape of either blob that
grows the buffer is seen by both (Caffe's shared pointers lose the link there).
"""
import os

import numpy as np

from numcaffe.net.errors import ShapeError

#: Caffe's limit on the number of axes (kMaxBlobAxes).
MAX_BLOB_AXES = 32
#: The largest element count a blob may hold; guards against hostile shapes.
MAX_BLOB_COUNT = 2 ** 31 - 1


def _max_blob_bytes():
    """An eighth of the machine's memory (or $NUMCAFFE_MAX_BLOB_BYTES): one blob's data and diff,
    plus the float64 temporaries a filler makes, then stay well inside it, so a hostile shape
    is an error instead of an out-of-memory kill."""
    try:
        value = int(os.environ.get("NUMCAFFE_MAX_BLOB_BYTES", "0"))
    except ValueError:
        value = 0
    if value > 0:
        return value
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8
    except (ValueError, OSError, AttributeError):
        return None


#: The largest buffer (data or diff) a blob may hold, in bytes; None: no limit beyond MAX_BLOB_COUNT.
MAX_BLOB_BYTES = _max_blob_bytes()


class _Memory:
    """A growable flat float32 buffer shared by the blobs that hold it."""

    __slots__ = ("buf",)

    def __init__(self):
        self.buf = np.zeros(0, dtype=np.float32)

    def ensure(self, count):
        if count > self.buf.size:
            grown = np.zeros(count, dtype=np.float32)
            grown[: self.buf.size] = self.buf
            self.buf = grown


def check_shape(shape):
    """Validate ``shape`` and return it as a tuple of ints and its element count."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_BLOB_AXES:
        raise ShapeError(f"blob shape {shape} has {len(shape)} axes; at most {MAX_BLOB_AXES} are allowed")
    count = 1
    for d in shape:
        if d < 0:
            raise ShapeError(f"blob shape {shape} has a negative dimension")
        count *= d
        if count > MAX_BLOB_COUNT:
            raise ShapeError(f"blob shape {shape} has more than {MAX_BLOB_COUNT} elements")
    if MAX_BLOB_BYTES and count * 4 > MAX_BLOB_BYTES:
        raise ShapeError(f"blob shape {shape} needs {count * 4 / 2 ** 30:.2f} GiB, more than the "
                         f"{MAX_BLOB_BYTES / 2 ** 30:.2f} GiB a blob may take on this machine (an eighth of "
                         f"its memory; set NUMCAFFE_MAX_BLOB_BYTES to change it)")
    return shape, count


class Blob:
    """An N-D float32 array with its gradient, as Caffe's ``Blob<float>``."""

    __slots__ = ("_shape", "_count", "_data_mem", "_diff_mem")

    def __init__(self, shape=()):
        self._data_mem = _Memory()
        self._diff_mem = _Memory()
        self._shape = ()
        self._count = 1
        self.reshape(shape)

    # -- shape -----------------------------------------------------------
    def reshape(self, *shape):
        """Change the shape; grows the buffers if needed, never shrinks them."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        self._shape, self._count = check_shape(shape)
        self._data_mem.ensure(self._count)
        # The diff buffer is allocated on first use, as Caffe's SyncedMemory does: nets that
        # only run forward (tests, deployment) never pay for gradients.

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._count

    @property
    def num_axes(self):
        return len(self._shape)

    def count_range(self, start, end=None):
        """Product of the dimensions ``start .. end-1`` (Caffe's ``count(start, end)``)."""
        end = len(self._shape) if end is None else end
        n = 1
        for d in self._shape[start:end]:
            n *= d
        return n

    def canonical_axis(self, axis):
        """Turn a possibly negative axis into an index, as Caffe's CanonicalAxisIndex."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise ShapeError(f"axis {axis} is out of range for a {n}-D blob of shape {self._shape}")
        return axis + n if axis < 0 else axis

    # legacy 4-D accessors (num, channels, height, width)
    def _legacy(self, i):
        if len(self._shape) > 4:
            raise ShapeError(f"legacy accessor on a {len(self._shape)}-D blob")
        return self._shape[i] if i < len(self._shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    # -- data and diff -----------------------------------------------------
    @property
    def data(self):
        return self._data_mem.buf[: self._count].reshape(self._shape)

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        return self.flat_diff.reshape(self._shape)

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def flat_data(self):
        """The data as a contiguous 1-D view (what kernels take)."""
        return self._data_mem.buf[: self._count]

    @property
    def flat_diff(self):
        mem = self._diff_mem
        if mem.buf.size < self._count:
            mem.ensure(self._count)
        return mem.buf[: self._count]

    def share_data(self, other):
        """Use ``other``'s data buffer from now on (shapes must hold the same count)."""
        if other.count != self._count:
            raise ShapeError(f"cannot share data between blobs of shapes {other.shape} and {self._shape}")
        self._data_mem = other._data_mem

    def share_diff(self, other):
        if other.count != self._count:
            raise ShapeError(f"cannot share diff between blobs of shapes {other.shape} and {self._shape}")
        self._diff_mem = other._diff_mem

    def shares_data_with(self, other):
        return self._data_mem is other._data_mem

    # -- proto ---------------------------------------------------------------
    def to_proto(self, proto, write_diff=False):
        """Fill a ``BlobProto`` as Caffe writes it (shape plus float data)."""
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        proto.data.extend(self.flat_data.tolist())
        if write_diff:
            proto.diff.extend(self.flat_diff.tolist())
        return proto

    def __repr__(self):
        return f"Blob(shape={self._shape})"


def proto_shape(proto):
    """The shape a ``BlobProto`` describes: its ``shape`` or the legacy 4 dims."""
    if proto.HasField("shape"):
        return tuple(proto.shape.dim)
    if proto.HasField("num") or proto.HasField("channels") or proto.HasField("height") or proto.HasField("width"):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.data) or len(proto.double_data),)


def proto_array(proto, shape=None, field="data"):
    """The values of a ``BlobProto`` as a float32 array of ``shape`` (default: its own)."""
    shape = proto_shape(proto) if shape is None else tuple(shape)
    values = getattr(proto, field)
    if not len(values):
        values = getattr(proto, "double_" + field)
    arr = np.asarray(values, dtype=np.float32)
    expected = int(np.prod(shape, dtype=np.int64))
    if arr.size != expected:
        raise ShapeError(f"blob holds {arr.size} values but its shape {shape} needs {expected}")
    return arr.reshape(shape)
