"""``numcaffe convert`` to and from ONNX, as the README's flow runs it: train LeNet, export the snapshot,
run it in onnxruntime with numcaffe's predictions, import it back and fine-tune from it; and the errors."""
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from numcaffe.net import TEST, Net
from numcaffe.net.onnx import INSTALL_HINT
from numcaffe.tools.cli import main
from numcaffe.tools.convert_idx import write_idx_db
from tests.tools.test_errors import assert_clean_error, cli

REPO = Path(__file__).resolve().parents[2]


def lenet_images(n, rng):
    """28x28 uint8 images whose class (0..9) is a bright horizontal band at rows 2k..2k+3, plus noise."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for img, k in zip(images, labels):
        img[2 * k + 4:2 * k + 8, 4:24] = 230
    return images, labels


@pytest.fixture
def lenet(tmp_path, monkeypatch):
    """configs/lenet with small LMDBs in data/, a 30-iteration solver, run from its folder."""
    root = tmp_path / "lenet"
    shutil.copytree(REPO / "configs" / "lenet", root, ignore=shutil.ignore_patterns("snapshots", "data"))
    rng = np.random.default_rng(0)
    (root / "data").mkdir()
    for split, n in (("train", 256), ("test", 200)):
        write_idx_db(*lenet_images(n, rng), str(root / "data" / f"{split}_lmdb"))
    solver = (root / "lenet_solver.prototxt").read_text()
    for key, value in (("test_iter", 2), ("test_interval", 30), ("max_iter", 30), ("snapshot", 30),
                       ("display", 10)):
        solver = re.sub(rf"^{key}: .*$", f"{key}: {value}", solver, flags=re.M)
    (root / "lenet_solver.prototxt").write_text(solver)
    monkeypatch.chdir(root)
    monkeypatch.setenv("GLOG_minloglevel", "0")
    return root


def test_lenet_to_onnxruntime_and_back_to_fine_tuning(lenet, capsys):
    assert main(["train", "--solver", "lenet_solver.prototxt"]) == 0
    snapshot = "snapshots/lenet_iter_30.caffemodel"
    first_run = capsys.readouterr().err

    # Export: one command, the snapshot's weights in an ONNX model onnx.checker accepts.
    assert main(["convert", "lenet_deploy.prototxt", "lenet.onnx", "--weights", snapshot]) == 0
    assert "wrote lenet.onnx: ONNX opset 21" in capsys.readouterr().out
    model = onnx.load("lenet.onnx")
    onnx.checker.check_model(model, full_check=True)

    # onnxruntime's predictions are numcaffe's, at the deploy batch (64) and at batch 1.
    images, _ = lenet_images(64, np.random.default_rng(5))
    x = (images.astype(np.float32) * np.float32(0.00390625))[:, None]
    net = Net("lenet_deploy.prototxt", TEST, weights=snapshot)
    net.blobs["data"].data[...] = x
    want = net.forward()["prob"].copy()
    sess = ort.InferenceSession("lenet.onnx", providers=["CPUExecutionProvider"])
    got = sess.run(["prob"], {"data": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert len(set(want.argmax(1))) > 3                                  # the predictions are not all one class
    np.testing.assert_allclose(sess.run(["prob"], {"data": x[:1]})[0], want[:1], rtol=1e-4, atol=1e-6)

    # Import: a prototxt and a caffemodel that numcaffe runs to the same predictions ...
    assert main(["convert", "lenet.onnx", "imported.prototxt", "--weights-out", "imported.caffemodel"]) == 0
    assert "wrote imported.prototxt: 9 layers; imported.caffemodel: 8 blobs in 4 layers" in capsys.readouterr().out
    again = Net("imported.prototxt", TEST, weights="imported.caffemodel")
    assert [l.type for l in again.layers] == [l.type for l in net.layers]      # LeNet's own layers, no extras
    again.blobs["data"].reshape(x.shape)
    again.blobs["data"].data[...] = x
    np.testing.assert_allclose(again.forward()["prob"], want, rtol=1e-5, atol=1e-7)

    # ... whose weights fine-tune LeNet: the layer names are LeNet's, so train --weights loads every layer,
    # and the test before the first step is the first run's last test.
    assert main(["train", "--solver", "lenet_solver.prototxt", "--weights", "imported.caffemodel"]) == 0
    fine = capsys.readouterr().err
    def tests(log):
        return re.findall(r"Test net output #0: accuracy = ([\d.]+)", log)
    assert "Ignoring source layer" not in fine
    assert tests(fine)[0] == tests(first_run)[-1]
    assert float(tests(first_run)[-1]) > 0.3                            # the band images are learnable


def test_yaml_both_ways_and_static_batch(lenet, capsys):
    assert main(["convert", "lenet_deploy.yaml", "lenet.onnx", "--static-batch"]) == 0
    captured = capsys.readouterr()
    assert "no --weights" in captured.err
    model = onnx.load("lenet.onnx")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [64, 1, 28, 28]
    assert main(["convert", "lenet_deploy.prototxt", "from_text.onnx", "--static-batch"]) == 0
    assert [n.op_type for n in onnx.load("from_text.onnx").graph.node] == [n.op_type for n in model.graph.node]
    assert main(["convert", "lenet.onnx", "net.yaml", "--weights-out", "w.caffemodel", "--batch", "3"]) == 0
    text = Path("net.yaml").read_text()
    assert "type: Convolution" in text and "dim: [64, 1, 28, 28]" in text   # a static batch stays
    net = Net("net.yaml", TEST, weights="w.caffemodel")
    assert net.blobs["prob"].shape == (64, 10)


def test_errors_are_one_line(lenet, capsys, tmp_path, monkeypatch):
    status, _, err = cli(["convert", str(REPO / "tests/net/zoo/mnist_siamese_train_test.prototxt"), "x.onnx"],
                         capsys)
    assert_clean_error(status, err)
    bad = tmp_path / "acc.prototxt"
    bad.write_text('layer { name: "in" type: "Input" top: "x" top: "l" input_param { shape { dim: 2 dim: 3 } '
                   'shape { dim: 2 } } }\n'
                   'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "l" top: "a" }\n')
    status, _, err = cli(["convert", str(bad), "x.onnx"], capsys)
    assert_clean_error(status, err, "layer 'acc' (Accuracy) has no ONNX counterpart")
    assert not Path("x.onnx").exists()

    onnx_path = tmp_path / "t.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [onnx.helper.make_node("Transpose", ["x"], ["t"], name="tr"),
             onnx.helper.make_node("Erf", ["t"], ["y"], name="erf")]
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y])), str(onnx_path))
    status, _, err = cli(["convert", str(onnx_path), "n.prototxt", "--weights-out", "n.caffemodel"], capsys)
    assert_clean_error(status, err, "2 node(s) use operators numcaffe has no layer for: Erf (1: 'erf'); "
                                    "Transpose (1: 'tr')")
    assert not Path("n.prototxt").exists() and not Path("n.caffemodel").exists()

    assert main(["convert", "lenet_deploy.prototxt", "ok.onnx"]) == 0
    capsys.readouterr()
    for argv, needle in ((["ok.onnx", "n.prototxt"], "give --weights-out"),
                         (["ok.onnx", "n.caffemodel", "--weights-out", "w.caffemodel"], "prototxt or YAML"),
                         (["ok.onnx", "again.onnx"], "ONNX to ONNX"),
                         (["ok.onnx", "n.yaml", "--weights-out", "w.caffemodel", "--batch", "0"],
                          "--batch must be at least 1"),
                         (["lenet_deploy.prototxt", "n.yaml", "--weights", "w.caffemodel"], "apply to conversions"),
                         (["ok.onnx", "n.yaml", "--weights", "w.caffemodel"], "--weights: not for a conversion from"),
                         (["lenet_deploy.prototxt", "n.onnx", "--weights-out", "w.caffemodel", "--batch", "2"],
                          "--weights-out, --batch: not for a conversion to ONNX")):
        status, _, err = cli(["convert", *argv], capsys)
        assert_clean_error(status, err, needle)

    # Without the onnx package: one line saying what to install.
    monkeypatch.setitem(sys.modules, "onnx", None)
    status, _, err = cli(["convert", "lenet_deploy.prototxt", "y.onnx"], capsys)
    assert_clean_error(status, err, INSTALL_HINT)
    status, _, err = cli(["convert", "ok.onnx", "n.prototxt", "--weights-out", "w.caffemodel"], capsys)
    assert_clean_error(status, err, "pip install 'numcaffe[onnx]'")


def test_caffes_own_lenet_in_onnxruntime_gives_caffes_outputs(tmp_path, capsys):
    """BVLC Caffe's trained LeNet (tests/fixtures/caffe), exported by the command line: onnxruntime's ip2 and
    prob for Caffe's 100 test images are the ones Caffe itself computed."""
    fixtures = REPO / "tests" / "fixtures" / "caffe"
    out = str(tmp_path / "caffe_lenet.onnx")
    assert main(["convert", str(fixtures / "lenet_deploy.prototxt"), out,
                 "--weights", str(fixtures / "lenet_iter_10000.caffemodel")]) == 0
    images = np.load(fixtures / "images_0.npy").astype(np.float32)[:, None] * np.float32(0.00390625)
    model = onnx.load(out)
    ip2 = next(n.output[0] for n in model.graph.node if n.name == "ip2")
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(ip2))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    prob, logits = sess.run(["prob", ip2], {"data": images})
    np.testing.assert_allclose(logits, np.load(fixtures / "caffe_ip2_0.npy"), atol=1e-4, rtol=0)
    np.testing.assert_allclose(prob, np.load(fixtures / "caffe_prob_0.npy"), atol=1e-4, rtol=0)
    assert (prob.argmax(1) == np.load(fixtures / "labels_0.npy")).mean() > 0.85
