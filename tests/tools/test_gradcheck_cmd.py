"""``numcaffe gradcheck``: finite differences over every layer of a net, at its actual bottoms."""
import numpy as np
import pytest

from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.config import parse_text
from numcaffe.net.net import TRAIN, Net
from numcaffe.net.proto import caffe_pb2
from numcaffe.tools.gradcheck import check_net, check_net_layer
from tests.tools.test_errors import assert_clean_error, cli

MLP = """
name: "mlp"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 2 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "cube" type: "Python" bottom: "ip1" top: "cube"
        python_param { module: "tests.layers.pylayers" layer: "%s" param_str: '{"scale": 0.3}' } }
layer { name: "ip2" type: "InnerProduct" bottom: "cube" top: "ip2" param { lr_mult: 1 } param { lr_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" }
"""


@pytest.fixture
def mlp(tmp_path):
    def write(layer="Cube"):
        path = tmp_path / f"mlp_{layer}.prototxt"
        path.write_text(MLP % layer)
        return str(path)
    return write


def test_correct_net_passes_and_reports_every_layer(mlp, capsys):
    status, out, err = cli(["gradcheck", mlp(), "--max-checks", "30"], capsys)
    assert status == 0, err
    for name in ("ip1", "relu1", "cube", "ip2", "loss"):
        assert f"layer '{name}'" in out
    assert "layer 'acc' (Accuracy): skipped" in out
    assert "bottom data:" in out and "param 0 (5, 6):" in out and "param 1 (5,):" in out
    ip2 = out[out.index("layer 'ip2'"):].split("layer '")[1]
    assert "param 0 (3, 5)" in ip2 and "param 1" not in ip2      # lr_mult 0: not checked
    assert "[FAILED]" not in out and "worst relative error" in out


def test_wrong_gradient_fails_with_exit_1(mlp, capsys):
    status, out, err = cli(["gradcheck", mlp("WrongCube"), "--max-checks", "30"], capsys)
    assert_clean_error(status, err, "gradient check failed", "cube")
    assert "layer 'cube' (Python): worst relative error" in out and "[FAILED]" in out
    assert "layer 'ip1' (InnerProduct): worst relative error" in out and out.count("[FAILED]") == 1


def test_layers_flag_and_weights(mlp, tmp_path, capsys):
    net = Net(mlp(), TRAIN)
    net.params["ip1"][0].data[...] = 0.25
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    status, out, err = cli(["gradcheck", mlp(), "--weights", str(weights), "--layers", "ip1,loss"], capsys)
    assert status == 0, err
    assert "layer 'ip1'" in out and "layer 'loss'" in out and "layer 'relu1'" not in out
    assert "checked 2 layer(s)" in out


def test_unknown_layer_name_suggests(mlp, capsys):
    status, _, err = cli(["gradcheck", mlp(), "--layers", "ip3"], capsys)
    assert_clean_error(status, err, "no layer 'ip3'", "'ip1'")


def test_bad_numbers_and_missing_files(mlp, tmp_path, capsys):
    status, _, err = cli(["gradcheck", mlp(), "--step", "0"], capsys)
    assert_clean_error(status, err, "--step")
    status, _, err = cli(["gradcheck", str(tmp_path / "nope.prototxt")], capsys)
    assert_clean_error(status, err, "nope.prototxt: no such config file")
    status, _, err = cli(["gradcheck", mlp(), "--weights", str(tmp_path / "nope.caffemodel")], capsys)
    assert_clean_error(status, err, "nope.caffemodel")


def test_kinks_are_skipped_not_failed():
    param = parse_text('name: "r" type: "ReLU" bottom: "x" top: "y"', caffe_pb2.LayerParameter())
    layer = create_layer(param)
    x = Blob((10,))
    x.data[...] = [0.0, 0.001, -0.002, 0.5, -0.5, 1.0, -1.0, 0.0, 2.0, -2.0]
    top = [Blob()]
    layer.SetUp([x], top)
    reports = check_net_layer(layer, [x], [0], [], step=1e-2)
    assert reports[0].skipped == 4 and reports[0].checked == 6 and not reports[0].failures


def test_in_place_layer_is_checked_at_its_input(mlp):
    """relu1 runs in place: its inputs are the values before it ran (negative ones included)."""
    net = Net(mlp(), TRAIN)
    seen = {}
    results = check_net(net, ["relu1"], max_checks=30, report=lambda text: seen.setdefault("text", text))
    assert results[0].checked > 0 and not results[0].failed
    # with post-ReLU values every negative input would be 0, a kink: most points would be skipped
    assert results[0].reports[0].skipped < results[0].reports[0].checked
    assert np.all(net.blobs["ip1"].data >= 0)
