"""ONNX export: every model-zoo net numcaffe loads, and every exported layer type alone, run in
onnxruntime, equal numcaffe's forward blob by blob (1e-4 relative to each blob's largest value);
``onnx.checker`` accepts every model with full checks.
"""
import numpy as np
import onnx
import pytest

from numcaffe.net import TEST, Net
from numcaffe.net.config import read_message
from numcaffe.net.onnx import OnnxError, export_model
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.random import set_random_seed
from tests.net.onnx_util import compare_net, run_onnx
from tests.net.test_zoo import ZOO, randomize

#: (file, input size or None for the net's own). AlexNet and CaffeNet run at 99 x 99 (fc6 shrinks
#: from 9216 to 1024 inputs, every pooling and LRN as in the original); the others at their own size.
ZOO_NETS = [("bvlc_alexnet.prototxt", 99), ("bvlc_reference_caffenet.prototxt", 99),
            ("bvlc_googlenet.prototxt", None), ("resnet50_deploy.prototxt", None),
            ("squeezenet_v1.1.prototxt", None), ("mobilenet_v1.prototxt", None),
            ("mobilenet_v2.prototxt", None), ("cifar10_quick.prototxt", None),
            ("cifar10_full.prototxt", None), ("mnist_siamese.prototxt", None),
            ("../../../configs/lenet/lenet_deploy.prototxt", None)]


def zoo_net(filename, size=None):
    param = read_message(str(ZOO / filename), caffe_pb2.NetParameter)
    dims = param.layer[0].input_param.shape[0].dim
    dims[0] = 1
    if size:
        dims[2] = dims[3] = size
    set_random_seed(5)
    return Net(param, TEST)


def feed(net, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = rng.standard_normal(blob.shape, dtype=np.float32)
        feeds[name] = blob.data.copy()
    return feeds


def check_exported(net, feeds, **kw):
    net.forward()
    model = export_model(net, **kw)
    onnx.checker.check_model(model, full_check=True)
    return model, compare_net(net, model, feeds)


@pytest.mark.parametrize("filename, size", ZOO_NETS, ids=[f.split("/")[-1] for f, _ in ZOO_NETS])
def test_zoo_net_in_onnxruntime(filename, size):
    net = zoo_net(filename, size)
    randomize(net, seed=1)
    bn = [l for l in net.layers if l.type == "BatchNorm"]
    for layer in bn:              # a stored scale factor other than 1, as a trained Caffe model has
        layer.blobs[0].data[...] *= 3.5
        layer.blobs[1].data[...] *= 3.5
        layer.blobs[2].data[...] *= 3.5
    model, errors = check_exported(net, feed(net))
    assert net.outputs and all(o in errors for o in net.outputs)
    assert len(errors) >= len([l for l in net.layers if l.type not in ("Input", "Split")]) // 4
    inputs = model.graph.input[0].type.tensor_type.shape.dim
    assert inputs[0].dim_param == "N"                               # the batch stays symbolic
    # The logits before the softmax, where one exists, are compared too (not only saturated probabilities).
    assert any(l.type in ("InnerProduct", "Convolution") and l.name in errors for l in net.layers)
