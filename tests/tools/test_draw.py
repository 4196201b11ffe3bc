"""``numcaffe draw``: a net as a Graphviz graph, as Caffe's draw_net."""
import re
import shutil
from pathlib import Path

import pytest

from numcaffe.net.config import parse_text
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.draw import build_graph, layer_label
from tests.tools.test_errors import assert_clean_error, cli

LENET = Path(__file__).resolve().parents[2] / "configs" / "lenet" / "lenet_train_test.prototxt"
HAVE_DOT = shutil.which("dot") is not None


def _dot(tmp_path, capsys, *extra):
    out = tmp_path / "net.dot"
    status, _, err = cli(["draw", str(LENET), str(out), *extra], capsys)
    assert status == 0, err
    return out.read_text()


def _labels(source):
    return re.findall(r'label="?([^"\]]+)"?', source)


def test_dot_source_has_layers_blobs_and_caffe_labels(tmp_path, capsys):
    src = _dot(tmp_path, capsys)
    assert src.startswith("digraph LeNet")
    assert "rankdir=LR" in src
    assert "conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 0" in src
    assert "pool: MAX" in src
    assert 'label="Batch 64"' in src and 'label="Batch 100"' in src and "label=500" in src
    assert "#FF5050" in src and "#FF9900" in src and "#CC33FF" in src and "octagon" in src


def test_phase_filter_and_rankdir(tmp_path, capsys):
    src = _dot(tmp_path, capsys, "--phase", "TRAIN", "--rankdir", "TB")
    assert 'label="Batch 64"' in src and "Batch 100" not in src and "(Accuracy)" not in src
    assert "rankdir=TB" in src and "conv1 (Convolution) kernel size: 5" in src


def test_in_place_layers_get_a_new_blob_version():
    net = parse_text("""
        name: "n"
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
        layer { name: "out" type: "Sigmoid" bottom: "x" top: "y" }""", caffe_pb2.NetParameter())
    src = build_graph(net).source
    edges = re.findall(r"(\w+) -> (\w+)", src)
    assert ("layer0", "blob1") in edges and ("blob1", "layer1") in edges
    assert ("layer1", "blob2") in edges and ("blob2", "layer2") in edges  # no loop through one node


def test_label_of_2d_conv_fields_and_lr():
    layer = parse_text('name: "c" type: "Convolution" param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 } '
                       'convolution_param { kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 1 group: 2 }',
                       caffe_pb2.LayerParameter())
    text = layer_label(layer, "TB", show_lr=True)
    assert "kernel size: 3x5 stride: 2x1 pad: 0" in text and "group: 2" in text
    assert "lr mult: 1, 2 decay mult: 1, 0" in text


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot program is not installed")
@pytest.mark.parametrize("ext,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_rendered_formats(tmp_path, capsys, ext, magic):
    out = tmp_path / f"lenet{ext}"
    status, stdout, err = cli(["draw", str(LENET), str(out)], capsys)
    assert status == 0, err
    assert out.read_bytes().startswith(magic)


def test_missing_dot_binary_is_a_clear_error_but_dot_source_works(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # no `dot` anywhere
    status, _, err = cli(["draw", str(LENET), str(tmp_path / "x.png")], capsys)
    assert_clean_error(status, err, "needs Graphviz's `dot` program", ".dot")
    status, _, err = cli(["draw", str(LENET), str(tmp_path / "x.dot")], capsys)
    assert status == 0 and (tmp_path / "x.dot").read_text().startswith("digraph")


@pytest.mark.parametrize("args,needle", [
    (["{net}", "out.gif"], "unsupported format '.gif'"),
    (["missing.prototxt", "out.dot"], "missing.prototxt: no such config file"),
    (["{net}", "out.dot", "--phase", "VALIDATE"], "invalid choice"),
])
def test_errors(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(["draw"] + [a.replace("{net}", str(LENET)) for a in args], capsys)
    assert_clean_error(status, err, needle)
