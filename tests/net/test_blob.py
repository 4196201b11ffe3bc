"""Blob: shapes, in-place views, growth without reallocation, sharing."""
import numpy as np
import pytest

from numcaffe.net.blob import Blob, proto_array, proto_shape
from numcaffe.net.errors import ShapeError
from numcaffe.net.proto import caffe_pb2


def test_shape_count_and_views_write_through():
    b = Blob((2, 3, 4))
    assert b.shape == (2, 3, 4) and b.count == 24 and b.num_axes == 3
    assert b.data.dtype == np.float32 and b.diff.dtype == np.float32
    b.data[...] = 1.5
    b.diff[1, 2, 3] = 7
    assert b.flat_data.sum() == 36 and b.flat_diff[-1] == 7
    assert b.count_range(1) == 12 and b.count_range(0, 2) == 6
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 4, 1)


def test_reshape_keeps_memory_when_shrinking_and_grows_when_needed():
    b = Blob((4, 5))
    b.flat_data[...] = np.arange(20)
    base = b.flat_data.__array_interface__["data"][0]
    b.reshape((2, 5))
    assert b.flat_data.__array_interface__["data"][0] == base
    np.testing.assert_array_equal(b.data, np.arange(10).reshape(2, 5))
    b.reshape(6, 5)
    assert b.shape == (6, 5)
    np.testing.assert_array_equal(b.flat_data[:20], np.arange(20))


def test_sharing_data_and_diff():
    a, b = Blob((3,)), Blob((3,))
    b.share_data(a)
    a.data[...] = [1, 2, 3]
    np.testing.assert_array_equal(b.data, [1, 2, 3])
    b.diff[...] = 5
    assert a.diff.sum() == 0
    b.share_diff(a)
    b.diff[...] = 4
    np.testing.assert_array_equal(a.diff, 4)
    a.reshape((10,))  # growth is seen by the sharer too
    b.reshape((10,))
    b.data[...] = 9
    np.testing.assert_array_equal(a.data, 9)
    with pytest.raises(ShapeError):
        Blob((4,)).share_data(Blob((5,)))


@pytest.mark.parametrize("shape", [(-1, 2), (2 ** 20, 2 ** 20), (1,) * 40])
def test_hostile_shapes_are_refused(shape):
    with pytest.raises(ShapeError):
        Blob(shape)


def test_proto_round_trip_and_legacy_shape():
    b = Blob((2, 3))
    b.data[...] = np.arange(6).reshape(2, 3)
    p = b.to_proto(caffe_pb2.BlobProto())
    assert proto_shape(p) == (2, 3)
    np.testing.assert_array_equal(proto_array(p), b.data)
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=list(range(6)))
    assert proto_shape(legacy) == (1, 1, 2, 3)
    with pytest.raises(ShapeError):
        proto_array(caffe_pb2.BlobProto(data=[1, 2], shape=caffe_pb2.BlobShape(dim=[3])))


def test_diff_memory_is_allocated_on_first_use():
    b = Blob((1000, 100))
    assert b._diff_mem.buf.size == 0          # forward-only use never pays for gradients
    b.data[...] = 1
    assert b._diff_mem.buf.size == 0
    assert b.diff.shape == (1000, 100) and not b.diff.any()
    assert b._diff_mem.buf.size == 100000
    c = Blob((1000, 100))
    c.share_diff(b)
    c.flat_diff[...] = 3
    assert b.diff.sum() == 300000
