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


# -- the net-initialization log, line by line against Caffe's ---------------------------

_INIT_MESSAGES = ("The NetState", "Creating Layer", "Setting up", "Top shape:", "with loss weight",
                  "Memory required for data", "This network produces output", "Network initialization done",
                  "Opened lmdb", "output data size")


def _init_messages(lines, sources):
    """The messages of a glog-format log written while nets are built (by files ``sources``), in order."""
    out = []
    for line in lines:
        head, sep, msg = line.partition("] ")
        msg = msg.strip()
        if sep and head.split()[-1].split(":")[0] in sources and (
                msg.startswith(_INIT_MESSAGES) or " <- " in msg or " -> " in msg or "backward computation" in msg):
            out.append(msg)
    return out


def test_building_caffes_lenet_logs_what_caffes_net_init_logs(tmp_path, monkeypatch, capsys):
    """TRAIN and TEST nets of Caffe's own prototxt: every Opened lmdb, output data size, Creating Layer,
    <-, ->, Top shape, Memory required, backward and output line, in order, as in Caffe's training log."""
    from numcaffe.net.data.db import LMDB, array_datum, open_writer
    from numcaffe.net.net import Net
    for name in ("train_lmdb", "test_lmdb"):  # the sources the prototxt names, in the working directory
        with open_writer(str(tmp_path / name), LMDB) as w:
            for i in range(3):
                w.put(b"%08d" % i, array_datum(np.zeros((1, 28, 28), np.uint8), label=i).SerializeToString())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for phase in ("TRAIN", "TEST"):
        Net(os.path.join(FIX, "lenet_train_test.prototxt"), phase)
    ours = _init_messages(capsys.readouterr().err.splitlines(), ("net.py", "data.py"))
    with open(os.path.join(FIX, "lenet_train.log")) as f:
        caffes = _init_messages(f.read().splitlines(), ("net.cpp", "db_lmdb.cpp", "data_layer.cpp"))
    assert len(caffes) > 150 and "Top shape: 100 20 24 24 (1152000)" in caffes and "relu1 -> ip1 (in-place)" in caffes
    assert "Opened lmdb train_lmdb" in caffes and "output data size: 100,1,28,28" in caffes
    # Caffe opens the database in the layer's constructor, one line before "Creating Layer"; numcaffe in
    # its setup, a few lines after: compare those lines on their own.
    opened = [[m for m in msgs if m.startswith("Opened")] for msgs in (ours, caffes)]
    assert opened[0] == opened[1] == ["Opened lmdb train_lmdb", "Opened lmdb test_lmdb"]
    assert [m for m in ours if not m.startswith("Opened")] == [m for m in caffes if not m.startswith("Opened")]
