"""Neuron layers beyond the gradient table: in-place runs, Dropout's masks, PReLU's slopes, bad parameters."""
import numpy as np
import pytest
from google.protobuf import text_format

from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, ShapeError
from numcaffe.net.net import TEST, TRAIN, Net
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.random import set_random_seed
from tests.layers.cases_neuron import CASES
from tests.layers.gradcase import blob


def make_layer(text, phase=TRAIN, seed=5):
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    param.name = param.name or "n"
    param.phase = phase
    set_random_seed(seed)
    return create_layer(param)


IN_PLACE = [pytest.param(t, c, id=f"{t}-{c.id or i}") for t, items in sorted(CASES.items())
            for i, c in enumerate(items)]


def _run(case, x, dys, in_place):
    """Forward/backward ``len(dys)`` times on copies of x; returns tops, bottom diffs and param diffs."""
    layer, _, _ = case.build()
    bottom = blob(x)
    top = bottom if in_place else Blob()
    layer.SetUp([bottom], [top])
    tops, dxs, dps = [], [], []
    for dy in dys:
        bottom.reshape(x.shape)
        bottom.data[...] = x
        for p in layer.blobs:
            p.diff[...] = 0
        layer.Forward([bottom], [top])
        tops.append(top.data.copy())
        # A later in-place layer may overwrite the top; backward must not depend on it.
        top.data[...] = -123.0
        top.diff[...] = dy
        layer.Backward([top], [True], [bottom])
        dxs.append(bottom.diff.copy())
        dps.append([p.diff.copy() for p in layer.blobs])
    return layer, tops, dxs, dps


@pytest.mark.parametrize("type_name,case", IN_PLACE)
def test_in_place_matches_out_of_place(type_name, case):
    rs = np.random.RandomState(3)
    x = np.asarray(case.bottoms[0](rs), dtype=np.float32)
    dys = [rs.uniform(-1, 1, x.shape).astype(np.float32) for _ in range(2)]
    _, tops, dxs, dps = _run(case, x, dys, in_place=False)
    layer, tops_ip, dxs_ip, dps_ip = _run(case, x, dys, in_place=True)
    for k in range(len(dys)):
        np.testing.assert_array_equal(tops_ip[k], tops[k])
        np.testing.assert_array_equal(dxs_ip[k], dxs[k])
        for a, b in zip(dps_ip[k], dps[k]):
            np.testing.assert_array_equal(a, b)
    if type_name == "Threshold":
        np.testing.assert_array_equal(dxs[0], 0.0)


def test_in_place_copy_buffer_is_reused_and_only_grows():
    layer = make_layer('type: "TanH"')
    b = Blob((4, 5))
    b.data[...] = np.linspace(-2, 2, 20).reshape(4, 5)
    layer.SetUp([b], [b])
    layer.Forward([b], [b])
    buf = layer._input_copy.buf
    assert buf.size == 20
    layer.Forward([b], [b])
    b.reshape((2, 5))
    layer.Forward([b], [b])
    assert layer._input_copy.buf is buf
    out = Blob()
    layer2 = make_layer('type: "TanH"')
    layer2.SetUp([b], [out])
    layer2.Forward([b], [out])
    assert layer2._input_copy.buf.size == 0  # not in place: no copy


def _net(text):
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    set_random_seed(11)
    return Net(param, TRAIN)


INPUT = 'force_backward: true layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 40 } } } '


@pytest.mark.parametrize("first,second", [
    ('type: "Sigmoid"', 'type: "Dropout" dropout_param { dropout_ratio: 0.4 }'),
    ('type: "TanH"', 'type: "Dropout"'),
    ('type: "ELU" elu_param { alpha: 0.5 }', 'type: "Power" power_param { scale: 3 shift: -0.2 }'),
    ('type: "ReLU"', 'type: "Power" power_param { scale: -1 }'),
    ('type: "Swish"', 'type: "Power" power_param { scale: -2 shift: 1 }'),
])
def test_backward_survives_a_later_in_place_layer(first, second):
    """Caffe's Sigmoid/TanH/ELU/Swish (and in-place ReLU) read the top in backward, which an in-place
    successor has overwritten by then; here the gradient is the same with and without in-place wiring."""
    rs = np.random.RandomState(0)
    x = rs.uniform(-2, 2, (3, 40)).astype(np.float32)
    dy = rs.uniform(-1, 1, (3, 40)).astype(np.float32)
    results = []
    for mid, out in (("x", "x"), ("a", "b")):
        net = _net(INPUT + f'layer {{ name: "f" {first} bottom: "x" top: "{mid}" }} '
                           f'layer {{ name: "g" {second} bottom: "{mid}" top: "{out}" }}')
        y = net.forward(x=x)[out].copy()
        dx = net.backward(**{out: dy})["x"].copy()
        results.append((y, dx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-7)


# -- Dropout ---------------------------------------------------------------------------
def _dropout(text, shape=(200, 100), phase=TRAIN, in_place=False, seed=5):
    layer = make_layer(text, phase, seed)
    x = np.random.RandomState(1).uniform(0.5, 1.5, shape).astype(np.float32)
    b = blob(x)
    t = b if in_place else Blob()
    layer.SetUp([b], [t])
    return layer, x, b, t


def test_dropout_drops_the_ratio_and_scales_the_rest():
    layer, x, b, t = _dropout('type: "Dropout" dropout_param { dropout_ratio: 0.3 }')
    layer.Forward([b], [t])
    y = t.data
    dropped = (y == 0).mean()
    assert abs(dropped - 0.3) < 0.02
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    t.diff[...] = 1.0
    layer.Backward([t], [True], [b])
    np.testing.assert_allclose(b.diff, np.where(kept, 1 / 0.7, 0.0), rtol=1e-6)


def test_dropout_draws_a_new_mask_each_pass_and_replays_from_state():
    layer, x, b, t = _dropout('type: "Dropout"', shape=(50, 20))
    state = layer.get_state()
    layer.Forward([b], [t])
    first = t.data.copy()
    layer.Forward([b], [t])
    assert not np.array_equal(first, t.data)
    layer.set_state(state)
    layer.Forward([b], [t])
    np.testing.assert_array_equal(first, t.data)


def test_dropout_same_seed_same_mask():
    outs = []
    for _ in range(2):
        layer, x, b, t = _dropout('type: "Dropout"', shape=(30, 10), seed=42)
        layer.Forward([b], [t])
        outs.append(t.data.copy())
    np.testing.assert_array_equal(*outs)


def test_dropout_test_phase_is_identity_in_place():
    layer, x, b, t = _dropout('type: "Dropout" dropout_param { dropout_ratio: 0.6 }', phase=TEST, in_place=True)
    layer.Forward([b], [t])
    np.testing.assert_array_equal(b.data, x)
    b.diff[...] = 2.5
    layer.Backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, 2.5)


def test_dropout_scale_train_false_scales_at_test():
    text = 'type: "Dropout" dropout_param { dropout_ratio: 0.25 scale_train: false }'
    layer, x, b, t = _dropout(text)
    layer.Forward([b], [t])
    kept = t.data != 0
    np.testing.assert_array_equal(t.data[kept], x[kept])
    assert abs((~kept).mean() - 0.25) < 0.02
    layer, x, b, t = _dropout(text, phase=TEST)
    layer.Forward([b], [t])
    np.testing.assert_allclose(t.data, x * 0.75, rtol=1e-6)
    t.diff[...] = 1.0
    layer.Backward([t], [True], [b])
    np.testing.assert_allclose(b.diff, 0.75, rtol=1e-6)


def test_dropout_ratio_zero_keeps_everything():
    layer, x, b, t = _dropout('type: "Dropout" dropout_param { dropout_ratio: 0 }')
    layer.Forward([b], [t])
    np.testing.assert_array_equal(t.data, x)


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_dropout_rejects_bad_ratio(ratio):
    layer = make_layer(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}')
    b = Blob((2, 3))
    with pytest.raises(ConfigError, match="dropout_ratio"):
        layer.SetUp([b], [Blob()])


# -- PReLU -----------------------------------------------------------------------------
def test_prelu_default_slopes_and_shapes():
    layer = make_layer('type: "PReLU"')
    b = Blob((2, 3, 4))
    layer.SetUp([b], [Blob()])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    shared = make_layer('type: "PReLU" prelu_param { channel_shared: true }')
    shared.SetUp([b], [Blob()])
    assert shared.blobs[0].shape == ()       # Caffe's shape for one shared slope
    assert float(shared.blobs[0].data) == 0.25


def test_prelu_slope_gradient_sums_over_batch_and_space():
    layer = make_layer('type: "PReLU"')
    x = np.array([[[-1.0, 2.0], [3.0, -4.0]], [[-0.5, -1.0], [0.0, 1.0]]], dtype=np.float32)  # (2, 2, 2)
    b, t = blob(x), Blob()
    layer.SetUp([b], [t])
    layer.Forward([b], [t])
    np.testing.assert_allclose(t.data, np.where(x > 0, x, 0.25 * x))
    t.diff[...] = 1.0
    layer.blobs[0].diff[...] = 10.0
    layer.Backward([t], [True], [b])
    # channel 0: x <= 0 at -1, -0.5, -1 -> sum -2.5; channel 1: -4 and 0 -> -4; added to the existing 10.
    np.testing.assert_allclose(layer.blobs[0].diff, [7.5, 6.0])
    np.testing.assert_allclose(b.diff, np.where(x > 0, 1.0, 0.25))


def test_prelu_loads_caffe_shaped_blobs():
    layer = make_layer('type: "PReLU" prelu_param { channel_shared: true } blobs { shape { } data: 0.1 }')
    b = Blob((2, 3))
    layer.SetUp([b], [Blob()])
    assert layer.blobs[0].count == 1 and float(layer.blobs[0].data) == pytest.approx(0.1)


def test_prelu_param_propagate_down_false_leaves_slope_diff():
    layer = make_layer('type: "PReLU"')
    b, t = blob(np.full((2, 3), -1.0, np.float32)), Blob()
    layer.SetUp([b], [t])
    layer.param_propagate_down = [False]
    layer.Forward([b], [t])
    t.diff[...] = 1.0
    layer.Backward([t], [True], [b])
    np.testing.assert_array_equal(layer.blobs[0].diff, 0.0)


@pytest.mark.parametrize("text,shape,error,match", [
    ('type: "PReLU"', (5,), ShapeError, "at least 2 axes"),
    ('type: "PReLU" blobs { shape { dim: 4 } data: 1 data: 2 data: 3 data: 4 }', (2, 3), ConfigError,
     "holds 4 value"),
    ('type: "PReLU" prelu_param { channel_shared: true } blobs { shape { dim: 3 } data: 1 data: 2 data: 3 }',
     (2, 3), ConfigError, "channel_shared"),
])
def test_prelu_rejects_bad_shapes(text, shape, error, match):
    layer = make_layer(text)
    with pytest.raises(error, match=match):
        layer.SetUp([Blob(shape)], [Blob()])


def test_prelu_rejects_a_channel_change_on_reshape():
    layer = make_layer('type: "PReLU"')
    b, t = Blob((2, 3)), Blob()
    layer.SetUp([b], [t])
    b.reshape((2, 4))
    with pytest.raises(ShapeError, match="4 channels"):
        layer.Forward([b], [t])


# -- parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize("text,match", [
    ('type: "Exp" exp_param { base: 0 }', "base"),
    ('type: "Exp" exp_param { base: -2 }', "base"),
    ('type: "Log" log_param { base: -0.5 }', "base"),
    ('type: "Log" log_param { base: 1 }', "base 1"),
    ('type: "Clip" clip_param { min: 1 max: 0 }', "above max"),
    ('type: "Clip"', "min and max"),
])
def test_bad_parameters_are_config_errors(text, match):
    layer = make_layer(text)
    with pytest.raises(ConfigError, match=match):
        layer.SetUp([Blob((2, 3))], [Blob()])


def test_threshold_takes_no_forced_gradient():
    layer = make_layer('type: "Threshold"')
    assert not layer.allow_force_backward(0)


def test_clip_passes_the_gradient_at_its_bounds():
    layer = make_layer('type: "Clip" clip_param { min: -1 max: 1 }')
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=np.float32)
    b, t = blob(x), Blob()
    layer.SetUp([b], [t])
    layer.Forward([b], [t])
    np.testing.assert_array_equal(t.data, [-1, -1, 0, 1, 1])
    t.diff[...] = 3.0
    layer.Backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, [0, 3, 3, 3, 0])


def test_relu_and_absval_at_zero_follow_caffe():
    x = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
    for text, expected in (('type: "ReLU" relu_param { negative_slope: 0.5 }', [1.5, 1.5, 3.0]),
                           ('type: "AbsVal"', [-3.0, 0.0, 3.0])):
        layer = make_layer(text)
        b, t = blob(x), Blob()
        layer.SetUp([b], [t])
        layer.Forward([b], [t])
        t.diff[...] = 3.0
        layer.Backward([t], [True], [b])
        np.testing.assert_array_equal(b.diff, expected)


def test_power_with_zero_scale_is_constant_with_zero_gradient():
    layer = make_layer('type: "Power" power_param { power: 2 scale: 0 shift: 3 }')
    b, t = blob(np.array([np.inf, -1.0, 5.0], np.float32)), Blob()
    layer.SetUp([b], [t])
    layer.Forward([b], [t])
    np.testing.assert_array_equal(t.data, 9.0)
    t.diff[...] = 1.0
    layer.Backward([t], [True], [b])
    np.testing.assert_array_equal(b.diff, 0.0)


def test_sigmoid_and_bnll_do_not_overflow():
    x = np.array([-1000.0, -60.0, 0.0, 60.0, 1000.0], dtype=np.float32)
    for text in ('type: "Sigmoid"', 'type: "BNLL"', 'type: "Swish"', 'type: "TanH"'):
        layer = make_layer(text)
        b, t = blob(x), Blob()
        layer.SetUp([b], [t])
        layer.Forward([b], [t])
        t.diff[...] = 1.0
        layer.Backward([t], [True], [b])
        assert np.all(np.isfinite(t.data)) and np.all(np.isfinite(b.diff)), text


def test_clip_mask_kernels_equal_the_plain_ones():
    from numcaffe.layers.neuron import clip_backward, clip_backward_inside, clip_forward, clip_forward_inside
    rs = np.random.RandomState(3)
    x = (rs.standard_normal(1001) * 4).astype(np.float32)
    x[:4] = [0.0, 6.0, -np.inf, np.inf]                 # the bounds themselves are inside
    dy = rs.standard_normal(x.size).astype(np.float32)
    y_plain, dx_plain = np.empty_like(x), np.empty_like(x)
    clip_forward(x, y_plain, 0.0, 6.0)
    clip_backward(x, dy, dx_plain, 0.0, 6.0)
    y, d, inside = x.copy(), dy.copy(), np.empty(x.size, np.bool_)
    clip_forward_inside(y, inside, 0.0, 6.0)
    clip_backward_inside(inside, d)
    np.testing.assert_array_equal(y, y_plain)
    np.testing.assert_array_equal(d, dx_plain)
