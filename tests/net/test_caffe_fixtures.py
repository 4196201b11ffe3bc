"""Interoperability with real Caffe: its LeNet weights reproduce its outputs; our files are its format.

The fixtures (tests/fixtures/caffe/, copied from real Caffe runs, see its README) hold a LeNet trained
by BVLC Caffe on Fashion-MNIST, 100 test images, and Caffe's own ip2 and prob outputs for them.
"""
import os

import numpy as np
import pytest

from numcaffe.net import TEST, Net
from numcaffe.net.proto import caffe_pb2

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "caffe")


def fixture(name):
    return os.path.join(FIX, name)


@pytest.fixture(scope="module")
def caffe_net():
    return Net(fixture("lenet_deploy.prototxt"), TEST, weights=fixture("lenet_iter_10000.caffemodel"))


def test_caffe_weights_reproduce_caffe_outputs(caffe_net):
    images = np.load(fixture("images_0.npy")).astype(np.float32)[:, None] * 0.00390625
    out = caffe_net.forward(data=images, blobs=["ip2"])
    np.testing.assert_allclose(out["ip2"], np.load(fixture("caffe_ip2_0.npy")), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["prob"], np.load(fixture("caffe_prob_0.npy")), atol=1e-4, rtol=0)
    accuracy = (out["prob"].argmax(1) == np.load(fixture("labels_0.npy"))).mean()
    assert accuracy > 0.8


def test_our_caffemodel_has_caffes_messages_names_and_shapes(caffe_net, tmp_path):
    path = str(tmp_path / "lenet.caffemodel")
    caffe_net.save(path)
    ours = caffe_pb2.NetParameter.FromString(open(path, "rb").read())
    theirs = caffe_pb2.NetParameter.FromString(open(fixture("lenet_iter_10000.caffemodel"), "rb").read())
    def shapes(param):
        return {l.name: [tuple(b.shape.dim) for b in l.blobs] for l in param.layer if len(l.blobs)}
    assert shapes(ours) == shapes(theirs)
    by_name = {l.name: l for l in theirs.layer}
    for layer in ours.layer:
        if len(layer.blobs):
            assert layer.type == by_name[layer.name].type
            for a, b in zip(layer.blobs, by_name[layer.name].blobs):
                np.testing.assert_array_equal(np.array(a.data, np.float32), np.array(b.data, np.float32))
    # and it loads back, as Caffe would load it
    again = Net(fixture("lenet_deploy.prototxt"), TEST, weights=path)
    for name, blobs in caffe_net.params.items():
        for p, q in zip(blobs, again.params[name]):
            np.testing.assert_array_equal(p.data, q.data)
