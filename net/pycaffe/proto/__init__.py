"""pycaffe's ``caffe.proto``: ``from numcaffe.net.pycaffe.proto import caffe_pb2`` as ``from caffe.proto import caffe_pb2``.

The schema is :mod:`numcaffe.net.proto.caffe_pb2` (Caffe's messages and field
numbers); this package names the same module, so ``import
numcaffe.net.pycaffe.proto.caffe_pb2`` works too.
"""
import sys

from numcaffe.net.proto import caffe_pb2

sys.modules[__name__ + ".caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]
