"""Net assembly: phase rules, splits, in-place layers, sharing, loss weights, backward pruning."""
import numpy as np
import pytest
from google.protobuf import text_format

from numcaffe.net import TEST, TRAIN, Net
from numcaffe.net.errors import ConfigError, ModelFileError
from numcaffe.net.net import insert_splits
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.random import set_random_seed


def make_net(text, phase=TRAIN, tmp_path=None, **kw):
    set_random_seed(3)
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    return Net(param, phase, **kw)


def numeric_input_gradient(net, blob_name, step=1e-2):
    """d(total weighted loss)/d(blob) by central differences over the net's Forward."""
    blob = net.blobs[blob_name]
    grad = np.zeros(blob.count)
    flat = blob.flat_data
    for i in range(blob.count):
        x = float(flat[i])
        flat[i] = x + step
        pos = net.Forward()
        flat[i] = x - step
        neg = net.Forward()
        flat[i] = x
        grad[i] = (pos - neg) / (2 * step)
    net.Forward()
    return grad.reshape(blob.shape)


INPUT = 'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }\n'


def ip(name, bottom, top, n=2, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra} '
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }} '
            f'bias_filler {{ type: "gaussian" std: 0.5 }} }} }}\n')


def fill_inputs(net, seed=0):
    rs = np.random.RandomState(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = rs.standard_normal(net.blobs[name].shape)


def test_split_inserted_with_caffe_names_and_gradients_add():
    text = ("force_backward: true\n" + INPUT + ip("a", "x", "ya") + ip("b", "x", "yb")
            + 'layer { name: "sum" type: "Eltwise" bottom: "ya" bottom: "yb" top: "y" }\n'
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n')
    net = make_net(text)
    names = [l.name for l in net.net_param.layer]
    assert "x_in_0_split" in names
    assert net.net_param.layer[1].top[:] == ["x_in_0_split_0", "x_in_0_split_1"]
    fill_inputs(net)
    net.Forward()
    net.Backward()
    analytic = net.blobs["x"].diff.copy()
    np.testing.assert_allclose(analytic, numeric_input_gradient(net, "x"), rtol=2e-2, atol=2e-3)
    assert np.abs(analytic).sum() > 0


def test_in_place_layer_reuses_the_blob_and_backprops():
    text = ("force_backward: true\n" + INPUT + ip("a", "x", "h", n=5)
            + 'layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }\n' + ip("b", "h", "y")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n')
    net = make_net(text)
    relu = net.layers[net.layer_index("relu")]
    i = net.layer_index("relu")
    assert net.bottom_vecs[i][0] is net.top_vecs[i][0]
    fill_inputs(net, 1)
    net.Forward()
    assert np.all(net.blobs["h"].data >= 0)
    net.Backward()
    np.testing.assert_allclose(net.blobs["x"].diff, numeric_input_gradient(net, "x"), rtol=2e-2, atol=2e-3)
    assert relu.type == "ReLU"


def test_shared_parameters_accumulate():
    shared = 'param { name: "w" } param { name: "bias" }'
    text = ('layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 4 } } }\n'
            + ip("a", "x", "ya", n=4, extra=shared) + ip("b", "ya", "yb", n=4, extra=shared)
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "yb" bottom: "t" top: "loss" }\n')
    net = make_net(text)
    wa, wb = net.params["a"][0], net.params["b"][0]
    assert wa.shares_data_with(wb) and len(net.learnable_params) == 2 and len(net.params) == 2
    fill_inputs(net, 2)
    net.ClearParamDiffs()
    net.Forward()
    net.Backward()
    # The shared diff is the sum of both uses: check against central differences on the shared weight.
    analytic = wa.diff.copy()
    numeric = np.zeros(wa.count)
    for i in range(wa.count):
        v = float(wa.flat_data[i])
        wa.flat_data[i] = v + 1e-2
        pos = net.Forward()
        wa.flat_data[i] = v - 1e-2
        neg = net.Forward()
        wa.flat_data[i] = v
        numeric[i] = (pos - neg) / 2e-2
    np.testing.assert_allclose(analytic.ravel(), numeric, rtol=2e-2, atol=2e-3)


def test_shared_parameter_shape_mismatch_is_an_error():
    shared = 'param { name: "w" }'
    text = (INPUT + ip("a", "x", "ya", n=4, extra=shared) + ip("b", "ya", "yb", n=3, extra=shared))
    with pytest.raises(ConfigError, match="shared parameter 'w' has shape"):
        make_net(text)


def test_shared_parameter_multipliers_follow_caffe():
    # Net::AppendParam: the first explicit lr_mult / decay_mult of a shared blob is taken; a later
    # explicit one that differs is an error; an unset one keeps what is there.
    def net_with(spec_a, spec_b):
        return make_net(INPUT + ip("a", "x", "ya", n=4, extra=f'param {{ name: "w" {spec_a} }}')
                        + ip("b", "ya", "yb", n=4, extra=f'param {{ name: "w" {spec_b} }}'))
    net = net_with("", "decay_mult: 3 lr_mult: 2")
    assert (net.params_lr[0], net.params_weight_decay[0]) == (2, 3)
    net = net_with("decay_mult: 3", "")
    assert net.params_weight_decay[0] == 3
    net = net_with("decay_mult: 3", "decay_mult: 3")
    assert net.params_weight_decay[0] == 3
    with pytest.raises(ConfigError, match="shared parameter 'w' has decay_mult 2"):
        net_with("decay_mult: 3", "decay_mult: 2")
    with pytest.raises(ConfigError, match="shared parameter 'w' has lr_mult 2"):
        net_with("lr_mult: 3", "lr_mult: 2")


def test_loss_weights_scale_losses_and_any_top_can_be_a_loss():
    base = INPUT + ip("a", "x", "y")
    one = make_net(base + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }')
    half = make_net(base + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" '
                           'loss_weight: 0.5 }')
    for n in (one, half):
        fill_inputs(n)
    l1, l2 = one.Forward(), half.Forward()
    assert l2 == pytest.approx(0.5 * l1, rel=1e-6)
    assert one.layers[-1].loss_weights == [1.0] and one.layers[1].loss_weights == [0.0]
    # A non-loss top with a loss weight contributes weight * sum(top).
    summed = make_net(INPUT + ip("a", "x", "y", extra="loss_weight: 2"))
    fill_inputs(summed)
    assert summed.Forward() == pytest.approx(2 * float(summed.blobs["y"].data.sum()), rel=1e-5)


def test_loss_top_that_is_also_consumed_gets_a_split_carrying_the_loss():
    text = (INPUT + ip("a", "x", "y", extra="loss_weight: 1")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n')
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    split = [l for l in insert_splits(param).layer if l.type == "Split"][0]
    assert list(split.loss_weight) == [1.0, 0.0]
    net = make_net(text)
    fill_inputs(net)
    total = net.Forward()
    y, t = net.blobs["y"].data, net.blobs["t"].data
    assert total == pytest.approx(float(y.sum()) + float(((y - t) ** 2).sum() / 2 / 3), rel=1e-5)


RULES = (INPUT
         + 'layer { name: "train_only" type: "ReLU" bottom: "x" top: "r1" include { phase: TRAIN } }\n'
         + 'layer { name: "test_only" type: "ReLU" bottom: "x" top: "r2" include { phase: TEST } }\n'
         + 'layer { name: "staged" type: "ReLU" bottom: "x" top: "r3" include { stage: "deploy" } }\n'
         + 'layer { name: "not_staged" type: "ReLU" bottom: "x" top: "r4" exclude { stage: "deploy" } }\n'
         + 'layer { name: "leveled" type: "ReLU" bottom: "x" top: "r5" include { min_level: 2 } }\n')


def _layer_names(net):
    return {l.name for l in net.layers}


def test_phase_stage_and_level_rules():
    assert {"train_only", "not_staged"} <= _layer_names(make_net(RULES, TRAIN))
    assert not {"test_only", "staged", "leveled"} & _layer_names(make_net(RULES, TRAIN))
    test = _layer_names(make_net(RULES, TEST, stages=("deploy",), level=3))
    assert {"test_only", "staged", "leveled"} <= test and not {"train_only", "not_staged"} & test


def test_a_given_state_replaces_the_nets_and_the_message_is_not_changed():
    param = text_format.Parse(RULES, caffe_pb2.NetParameter())
    before = param.SerializeToString()
    net = Net(param, TRAIN, state=caffe_pb2.NetState(phase=caffe_pb2.TEST, stage=["deploy"], level=3))
    assert net.phase == TEST and net.param.state.level == 3
    assert _layer_names(net) == _layer_names(make_net(RULES, TEST, stages=("deploy",), level=3))
    assert param.SerializeToString() == before


def test_outputs_are_unconsumed_blobs_sorted_and_inputs_are_input_tops():
    net = make_net(RULES, TRAIN)
    assert net.inputs == ["x", "t"]
    assert net.outputs == sorted(["t", "r1", "r4"])


def test_backward_only_where_needed_and_propagate_down():
    text = (INPUT + ip("frozen", "x", "h", n=3, extra="param { lr_mult: 0 } param { lr_mult: 0 }")
            + ip("b", "h", "y", extra='propagate_down: false')
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n'
            + ip("dead", "x", "unused", n=2))
    net = make_net(text)
    need = dict(zip((l.name for l in net.layers), net.layer_need_backward))
    assert need["b"] and need["loss"] and not need["frozen"] and not need["dead"]
    assert net.bottom_need_backward[net.layer_index("b")] == [False]
    fill_inputs(net)
    net.Forward()
    net.blobs["h"].diff[...] = 123.0
    net.Backward()
    assert np.all(net.blobs["h"].diff == 123.0)  # nobody wrote a gradient into h
    assert np.abs(net.params["b"][0].diff).sum() > 0


def test_force_backward_reaches_the_inputs_but_not_labels():
    text = ("force_backward: true\n" + INPUT + ip("a", "x", "y")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n')
    net = make_net(text)
    assert net.bottom_need_backward[net.layer_index("a")] == [True]
    fill_inputs(net)
    out = net.forward()
    grads = net.backward()
    assert set(out) == {"loss"} and set(grads) == {"x", "t"}
    np.testing.assert_allclose(grads["x"], numeric_input_gradient(net, "x"), rtol=2e-2, atol=2e-3)


def test_layers_know_whether_backward_runs_and_an_in_place_scale_keeps_its_input_only_then():
    scale = 'layer { name: "s" type: "Scale" bottom: "y" top: "y" scale_param { bias_term: true } }\n'
    loss = 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n'
    deployed = make_net(INPUT + ip("a", "x", "y") + scale, phase=TEST)     # nothing to learn from
    trained = make_net(INPUT + ip("a", "x", "y") + scale + loss)
    assert [l.backward_wanted for l in deployed.layers] == deployed.layer_need_backward == [False] * 3
    assert [l.backward_wanted for l in trained.layers] == trained.layer_need_backward == [False, True, True, True]
    for net in (deployed, trained):
        fill_inputs(net)
        net.params["s"][0].data[...] = [1.5, -2.0]
        net.Forward()
    np.testing.assert_array_equal(deployed.blobs["y"].data, trained.blobs["y"].data)
    assert deployed.layer_dict["s"]._x_copy.size == 0                # inference keeps no copy
    assert trained.layer_dict["s"]._x_copy.size == 6
    trained.Backward()
    # the scale's gradient reads the kept input h: y = gamma * h + beta, d loss / d y = (y - t) / 3
    y = trained.blobs["y"].data
    h = (y - trained.params["s"][1].data) / np.array([1.5, -2.0], dtype=np.float32)
    dy = (y - trained.blobs["t"].data) / 3
    assert np.abs(trained.params["s"][0].diff).max() > 0.01
    np.testing.assert_allclose(trained.params["s"][0].diff, (dy * h).sum(0), rtol=1e-5, atol=1e-6)


def test_pycaffe_style_forward_backward_with_arguments():
    net = make_net(INPUT + ip("a", "x", "y"))
    x = np.ones((5, 4), np.float32)
    out = net.forward(x=x)
    assert out["y"].shape == (5, 2)  # inputs may be reshaped by the caller
    w, b = net.params["a"]
    np.testing.assert_allclose(out["y"], x @ w.data.T + b.data, rtol=1e-5)
    grads = net.backward(y=np.ones((5, 2), np.float32))
    assert "x" in grads
    with pytest.raises(ConfigError, match="no blob 'nope'"):
        net.forward(nope=x)


YAML_NET = """
name: two
force_backward: true
layer:
  - {name: in, type: Input, top: [x, t], input_param: {shape: [{dim: [3, 4]}, {dim: [3, 2]}]}}
  - name: a
    type: InnerProduct
    bottom: x
    top: h
    inner_product_param: {num_output: 5, weight_filler: {type: gaussian, std: 0.5}, bias_filler: {type: constant, value: 0.1}}
  - {name: act, type: TanH, bottom: h, top: h}
  - name: b
    type: InnerProduct
    bottom: h
    top: y
    inner_product_param: {num_output: 2, weight_filler: {type: gaussian, std: 0.5}}
  - {name: loss, type: EuclideanLoss, bottom: [y, t], top: loss}
"""

PROTOTXT_NET = """
name: "two"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "act" type: "TanH" bottom: "h" top: "h" }
layer { name: "b" type: "InnerProduct" bottom: "h" top: "y"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def test_yaml_and_prototxt_nets_give_identical_outputs_and_gradients(tmp_path):
    (tmp_path / "n.yaml").write_text(YAML_NET)
    (tmp_path / "n.prototxt").write_text(PROTOTXT_NET)
    results = []
    for name in ("n.yaml", "n.prototxt"):
        set_random_seed(11)
        net = Net(str(tmp_path / name), TRAIN)
        fill_inputs(net, 5)
        loss = net.Forward()
        net.Backward()
        results.append((loss, net.blobs["x"].diff.copy(), [p.diff.copy() for p in net.learnable_params]))
    (la, ga, pa), (lb, gb, pb) = results
    assert la == lb
    np.testing.assert_array_equal(ga, gb)
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a, b)


def test_save_and_copy_from_round_trip(tmp_path):
    net = make_net(PROTOTXT_NET)
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    saved = caffe_pb2.NetParameter.FromString(open(path, "rb").read())
    assert [l.name for l in saved.layer] == [l.name for l in net.layers]
    assert list(saved.layer[1].blobs[0].shape.dim) == [5, 4]
    set_random_seed(99)
    other = Net(text_format.Parse(PROTOTXT_NET, caffe_pb2.NetParameter()), TEST, weights=path)
    for name in ("a", "b"):
        for p, q in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(p.data, q.data)


def test_fine_tuning_a_renamed_layer_logs_it_and_keeps_its_fresh_weights(tmp_path, capsys):
    net = make_net(PROTOTXT_NET)
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    set_random_seed(7)
    tuned = Net(text_format.Parse(PROTOTXT_NET.replace('name: "b"', 'name: "b_new"'), caffe_pb2.NetParameter()))
    fresh = tuned.params["b_new"][0].data.copy()
    capsys.readouterr()
    assert tuned.copy_from(path) == 1
    err = capsys.readouterr().err
    assert "Ignoring source layer b\n" in err and "Ignoring source layer a\n" not in err
    assert not np.array_equal(fresh, net.params["b"][0].data)
    np.testing.assert_array_equal(tuned.params["a"][0].data, net.params["a"][0].data)
    np.testing.assert_array_equal(tuned.params["b_new"][0].data, fresh)
    stranger = make_net(PROTOTXT_NET.replace('name: "a"', 'name: "a2"').replace('name: "b"', 'name: "b2"')
                        .replace('name: "in"', 'name: "in2"').replace('name: "act"', 'name: "act2"')
                        .replace('name: "loss"', 'name: "loss2"'))
    assert stranger.copy_from(path) == 0
    assert "no layer of this net has a name that is in the file; nothing was copied" in capsys.readouterr().err


def test_copy_from_shape_mismatch_names_layer_and_shapes(tmp_path):
    net = make_net(PROTOTXT_NET)
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    wrong = make_net(PROTOTXT_NET.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(ModelFileError, match=r"layer 'a' parameter 0: the file has shape \(5, 4\), the net expects \(6, 4\)"):
        wrong.copy_from(path)
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(ModelFileError, match="junk.caffemodel"):
        net.copy_from(str(tmp_path / "junk.caffemodel"))


@pytest.mark.parametrize("text,needle", [
    (INPUT + ip("a", "nope", "y"), "unknown bottom blob 'nope'"),
    (INPUT + ip("a", "x", "t"), "produced by more than one layer"),
    (INPUT + 'layer { name: "r" type: "ReLu" bottom: "x" top: "y" }', "did you mean 'ReLU'"),
    (INPUT + INPUT.replace('"in"', '"in"'), "two layers are named 'in'"),
    (INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" top: "z" }', "takes 1 top blob"),
    (INPUT + ip("a", "x", "y", extra="loss_weight: 1 loss_weight: 2"), "loss_weight must be given once per top"),
])
def test_bad_nets_give_clear_errors(text, needle):
    with pytest.raises(ConfigError) as e:
        make_net(text)
    assert needle in str(e.value)


# Caffe's XOR example net, as users write it for Caffe (Input layers, Caffe syntax), unmodified.
CAFFE_XOR = """
name: "XOR"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 4 dim: 2 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape: { dim: 4 } } }
layer {
  name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0 } }
}
layer { name: "tanh1" type: "TanH" bottom: "fc1" top: "fc1" }
layer {
  name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc2" bottom: "label" top: "accuracy" include { phase: TEST } }
"""


def test_caffe_syntax_xor_net_runs_unmodified(tmp_path):
    (tmp_path / "xor.prototxt").write_text(CAFFE_XOR)
    net = Net(str(tmp_path / "xor.prototxt"), TEST)
    out = net.forward(data=np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
                      label=np.array([0, 1, 1, 0], np.float32))
    assert set(out) == {"accuracy", "loss"} and 0 <= out["accuracy"] <= 1 and out["loss"] > 0
    assert net.outputs == ["accuracy", "loss"]


def test_a_weighted_top_keeps_its_weight_when_the_batch_grows():
    net = make_net(INPUT + ip("a", "x", "y", extra="loss_weight: 2"))
    x = np.random.RandomState(0).standard_normal((7, 4)).astype(np.float32)  # 3 rows at setup, 7 now
    net.blobs["x"].reshape(x.shape)
    net.blobs["x"].data[...] = x
    loss = net.Forward()
    assert loss == pytest.approx(2 * float(net.blobs["y"].data.sum()), rel=1e-5)
    net.ClearParamDiffs()
    net.Backward()
    # d(2 * sum(W x + b))/db = 2 per example and output
    np.testing.assert_allclose(net.params["a"][1].diff, 2 * 7, rtol=1e-6)


def test_init_log_says_why_layers_are_left_out_and_which_parameters_are_shared(capsys):
    capsys.readouterr()
    make_net(RULES, TRAIN)
    err = capsys.readouterr().err
    assert "The NetState phase (0) differed from the phase (1) specified by a rule in layer test_only" in err
    assert "The NetState did not contain stage 'deploy' specified by a rule in layer staged" in err
    assert "The NetState level (0) is below the min_level (2) specified by a rule in layer leveled" in err
    assert "not_staged" not in err.split("Initializing net from parameters")[0]  # kept: no reason given
    shared = 'param { name: "w" } param { name: "bias" }'
    make_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }\n'
             + ip("a", "x", "ya", n=4, extra=shared) + ip("b", "ya", "yb", n=4, extra=shared))
    err = capsys.readouterr().err
    assert "Sharing parameters 'w' owned by layer 'a', param index 0" in err
    assert "Sharing parameters 'bias' owned by layer 'a', param index 1" in err
    assert "Top shape: 3 4 (12)" in err and "Memory required for data: 144" in err  # x, ya, yb: 3 * 12 floats


@pytest.mark.parametrize("level,shown", [("0", True), ("1", False)])
def test_glog_minloglevel_silences_the_init_log(level, shown):
    import os
    import subprocess
    import sys
    code = ("from numcaffe.net import Net; from numcaffe.net.proto import caffe_pb2; "
            "from google.protobuf import text_format; "
            "Net(text_format.Parse('layer { name: \"in\" type: \"Input\" top: \"x\" "
            "input_param { shape { dim: 2 } } }', caffe_pb2.NetParameter()))")
    env = dict(os.environ, GLOG_minloglevel=level)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ("Top shape: 2 (2)" in out.stderr) == shown


def test_forward_all_runs_any_number_of_rows_in_batches_as_pycaffe():
    # pycaffe's Net.forward_all: inputs of any length go through in batches of the net's batch size,
    # the last batch padded, and each output has one row per input row
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }\n'
            + ip("a", "x", "y"))
    net = make_net(text, TEST)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    out = net.forward_all(x=x, blobs=["x"])
    w, b = net.params["a"][0].data, net.params["a"][1].data
    assert set(out) == {"y", "x"}
    np.testing.assert_allclose(out["y"], x @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["x"], x)
    assert net.blobs["x"].shape == (4, 3)


def test_pycaffes_model_weights_phase_form_loads_the_weights(tmp_path):
    # caffe.Net(model_def, model_weights, caffe.TEST), the form of Caffe's classification tutorial
    source = make_net(PROTOTXT_NET)
    weights = tmp_path / "w.caffemodel"
    source.save(str(weights))
    model = tmp_path / "n.prototxt"
    model.write_text(PROTOTXT_NET)
    for w in (str(weights), weights):
        net = Net(str(model), w, TEST)
        assert net.phase == TEST
        np.testing.assert_array_equal(net.params["a"][0].data, source.params["a"][0].data)
    with pytest.raises(ConfigError, match="unknown phase"):
        Net(str(model), "TESTT")


def test_pycaffe_name_maps_top_names_bottom_names_and_blob_loss_weights():
    net = make_net(PROTOTXT_NET)
    assert list(net.layer_dict) == list(net.top_names) and net.layer_dict["a"].blobs is net.params["a"]
    assert list(net.top_names) == [l.name for l in net.layers]
    assert net.top_names["a"] == ["h"] and net.top_names["act"] == ["h"] and net.top_names["in"] == ["x", "t"]
    assert net.bottom_names["loss"] == ["y", "t"] and net.bottom_names["in"] == []
    weights = net.blob_loss_weights
    assert list(weights) == list(net.blobs) and weights["loss"] == 1.0
    assert all(w == 0.0 for name, w in weights.items() if name != "loss")
