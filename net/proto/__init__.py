"""Protobuf schema of numcaffe (wire-compatible with BVLC Caffe's caffe.proto).

``caffe_pb2`` is generated from ``caffe.proto`` by
``python -m numcaffe.net.proto.regenerate``; do not edit it by hand.
"""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
