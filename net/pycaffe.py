"""pycaffe's ``caffe`` module on numcaffe: change ``import caffe`` into

    import numcaffe.net.pycaffe as caffe

and a pycaffe script runs as it did: ``caffe.Net(model, weights, caffe.TEST)``,
``caffe.SGDSolver(path)``, ``caffe.io.Transformer``, ``caffe.Classifier``,
``caffe.NetSpec`` / ``caffe.layers`` / ``caffe.params``, ``caffe.proto.caffe_pb2``,
``caffe.Layer`` for Python layers.  numcaffe runs on the CPU: ``set_mode_gpu`` and
``set_device`` log one warning and carry on.

``caffe.draw.draw_net_to_file`` / ``draw_net`` draw a NetParameter with Graphviz,
as ``numcaffe draw`` does.

Not provided: GPU and multi-GPU parts (NCCL, ``solver.add_callback``), ``Detector``,
pydot's ``get_pydot_graph`` and ``caffe.coord_map``.  ``from caffe.proto import caffe_pb2`` has no
one-line equivalent; use ``caffe_pb2 = caffe.proto.caffe_pb2``.
"""
import types

import numpy as np

import numcaffe.layers  # noqa: F401  (registers every layer type)
from numcaffe.layers.python_layer import Layer
from numcaffe.net import pycaffe_io as io
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ShapeError
from numcaffe.net.log import get_logger
from numcaffe.net.net import TEST, TRAIN, Net
from numcaffe.net.netspec import NetSpec, layers, params, to_proto
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.random import set_random_seed
from numcaffe.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                              SGDSolver, get_solver)

__all__ = ["Net", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
           "Layer", "Blob", "NetSpec", "layers", "params", "to_proto", "get_solver", "SGDSolver",
           "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "proto",
           "io", "draw", "Classifier", "layer_type_list"]

#: ``caffe.proto.caffe_pb2``, numcaffe's schema (Caffe's messages and field numbers).
proto = types.SimpleNamespace(caffe_pb2=caffe_pb2)

_warned_gpu = False


def _cpu_only(what):
    global _warned_gpu
    if not _warned_gpu:
        _warned_gpu = True
        get_logger("numcaffe.pycaffe").warning("%s: numcaffe runs on the CPU only; carrying on with the CPU", what)


def set_mode_cpu():
    """Run on the CPU (what numcaffe always does)."""


def set_mode_gpu():
    """Accepted for pycaffe scripts; numcaffe stays on the CPU (warns once)."""
    _cpu_only("caffe.set_mode_gpu()")


def set_device(device_id):
    """Accepted for pycaffe scripts; numcaffe has no GPU devices (warns once)."""
    _cpu_only(f"caffe.set_device({device_id})")


def _draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """pycaffe's ``caffe.draw.draw_net``: the image bytes of ``caffe_net`` (a NetParameter)."""
    from numcaffe.tools.draw import render
    return render(caffe_net, ext, rankdir, phase, display_lrm)


def _draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """pycaffe's ``caffe.draw.draw_net_to_file``: write the drawing, format from ``filename``'s extension."""
    from numcaffe.tools.draw import draw as draw_to_file
    return draw_to_file(caffe_net, filename, rankdir, phase, display_lrm)


#: ``caffe.draw``.
draw = types.SimpleNamespace(draw_net=_draw_net, draw_net_to_file=_draw_net_to_file)


def layer_type_list():
    """The registered layer type names, sorted (pycaffe's ``caffe.layer_type_list()``)."""
    from numcaffe.layers.base import LAYER_REGISTRY
    return sorted(LAYER_REGISTRY)


def _centre_crop(size, crop):
    start = (np.asarray(size, dtype=int) - np.asarray(crop, dtype=int)) // 2
    return start, start + np.asarray(crop, dtype=int)


class Classifier(Net):
    """pycaffe's Classifier: a TEST-phase Net that preprocesses images and predicts class probabilities.

    ``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: images are resized to ``image_dims`` (default: the
    net's input size), cropped to the input size, then transformed by ``self.transformer``
    (transpose (2, 0, 1), then the given channel swap, raw scale, mean and input scale).
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        in_ = self.inputs[0]
        self.transformer = io.Transformer({in_: self.blobs[in_].data.shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or len(image_dims) == 0 else np.array(image_dims)

    def predict(self, inputs, oversample=True):
        """(N, classes) probabilities for N H x W x K images; with ``oversample`` the mean over the
        10 crops of :func:`caffe.io.oversample`, else from the centre crop only."""
        if len(inputs) == 0:
            raise ShapeError("Classifier.predict needs at least one image")
        h, w = (int(d) for d in self.image_dims)
        input_ = np.zeros((len(inputs), h, w, np.shape(inputs[0])[2]), dtype=np.float32)
        for ix, im in enumerate(inputs):
            input_[ix] = io.resize_image(im, (h, w))
        if oversample:
            input_ = io.oversample(input_, self.crop_dims)
        else:
            start, end = _centre_crop((h, w), self.crop_dims)
            input_ = input_[:, start[0]:end[0], start[1]:end[1], :]
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, x) for x in input_])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
