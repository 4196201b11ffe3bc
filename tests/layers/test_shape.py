"""Concat, Slice, Flatten, Reshape, Tile, Silence, ArgMax and Reduction beyond the gradient
cases: shared memory, partial backward, Caffe's reshape rules, a net through them, clear errors."""
import numpy as np
import pytest
from google.protobuf import text_format

from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, NumcaffeError, ShapeError
from numcaffe.net.net import TRAIN, Net
from numcaffe.net.proto import caffe_pb2
from tests.layers.gradcase import blob

rs = np.random.RandomState(0)


def make(text):
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    param.name = param.name or "layer"
    param.phase = TRAIN
    return create_layer(param)


def setup(text, *arrays, num_top=1):
    layer = make(text)
    bottom = [blob(a) for a in arrays]
    top = [Blob() for _ in range(num_top)]
    layer.SetUp(bottom, top)
    return layer, bottom, top


# -- Flatten and Reshape share memory -------------------------------------------------------
ALIASES = [('type: "Flatten"', (2, 3, 4), (2, 12)),
           ('type: "Reshape" reshape_param { shape { dim: -1 dim: 3 } }', (2, 3, 4), (8, 3))]


@pytest.mark.parametrize("text,shape,out", ALIASES)
def test_alias_top_shares_data_and_after_backward_the_diff(text, shape, out):
    layer, bottom, top = setup(text, rs.randn(*shape))
    x, y = bottom[0], top[0]
    assert y.shape == out
    assert np.shares_memory(y.data, x.data)
    x.data[0, 0, 0] = 42.0  # no forward needed: it is the same buffer
    assert y.flat_data[0] == 42.0
    layer.Forward(bottom, top)
    y.diff[...] = rs.randn(*out)
    layer.Backward(top, [True], bottom)
    assert np.shares_memory(x.flat_diff, y.flat_diff)
    np.testing.assert_array_equal(x.diff, y.diff.reshape(shape))


@pytest.mark.parametrize("text,shape,out", ALIASES)
def test_alias_follows_a_bottom_that_grows(text, shape, out):
    layer, bottom, top = setup(text, rs.randn(*shape))
    bigger = (shape[0] * 3,) + shape[1:]
    values = rs.randn(*bigger).astype(np.float32)
    bottom[0].reshape(bigger)
    bottom[0].data[...] = values
    layer.Forward(bottom, top)
    assert top[0].shape[0] == out[0] * 3
    np.testing.assert_array_equal(top[0].data, values.reshape(top[0].shape))


def test_alias_without_propagate_down_leaves_the_bottom_diff_alone():
    layer, bottom, top = setup('type: "Flatten"', rs.randn(2, 3))
    bottom[0].diff[...] = 5.0
    top[0].diff[...] = 1.0
    layer.Backward(top, [False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 5.0)


@pytest.mark.parametrize("dims,extra,shape,out", [
    # Caffe's test_reshape_layer cases
    ([1, 1, 1], "axis: 0 num_axes: 0", (2, 3, 6, 5), (1, 1, 1, 2, 3, 6, 5)),
    ([1, 1, 1], "axis: 2 num_axes: 0", (2, 3, 6, 5), (2, 3, 1, 1, 1, 6, 5)),
    ([1, 1, 1], "axis: -1 num_axes: 0", (2, 3, 6, 5), (2, 3, 6, 5, 1, 1, 1)),
    ([-1], "axis: 1 num_axes: 2", (2, 3, 6, 5), (2, 18, 5)),
    ([0, 0, 0, 0], "", (2, 3, 6, 5), (2, 3, 6, 5)),
    ([0, 3, 10, -1], "", (2, 3, 6, 5), (2, 3, 10, 3)),
    ([3, 10, -1], "axis: 1", (2, 3, 6, 5), (2, 3, 10, 3)),
    ([-1], "axis: -3", (2, 3, 6, 5), (2, 3, 30)),  # a negative axis counts from one past the last
    ([0, -1], "axis: -3", (2, 3, 6, 5), (2, 3, 6, 5)),
    ([6, 0], "axis: 0 num_axes: 1", (2, 3), None),  # 0 copies bottom axis 1 -> (6, 3): count 18 != 6
])
def test_reshape_follows_caffe_rules(dims, extra, shape, out):
    text = f'type: "Reshape" reshape_param {{ shape {{ {" ".join(f"dim: {d}" for d in dims)} }} {extra} }}'
    if out is None:
        with pytest.raises(ShapeError, match="counts must match"):
            setup(text, np.zeros(shape))
        return
    layer, bottom, top = setup(text, rs.randn(*shape))
    assert top[0].shape == out


# -- Concat and Slice -----------------------------------------------------------------------
def test_concat_backward_fills_only_the_bottoms_that_propagate():
    a, b = rs.randn(2, 1, 3), rs.randn(2, 2, 3)
    layer, bottom, top = setup('type: "Concat"', a, b)
    layer.Forward(bottom, top)
    dy = rs.randn(2, 3, 3).astype(np.float32)
    top[0].diff[...] = dy
    bottom[0].diff[...] = 9.0
    layer.Backward(top, [False, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 9.0)
    np.testing.assert_array_equal(bottom[1].diff, dy[:, 1:])


def test_concat_dim_is_the_legacy_spelling_of_axis():
    a, b = rs.randn(2, 3), rs.randn(1, 3)
    _, bottom, top = setup('type: "Concat" concat_param { concat_dim: 0 }', a, b)
    assert top[0].shape == (3, 3)


def test_one_bottom_concat_and_one_top_slice_share_the_bottom():
    for text in ('type: "Concat"', 'type: "Slice"'):
        layer, bottom, top = setup(text, rs.randn(2, 3))
        layer.Forward(bottom, top)
        assert np.shares_memory(top[0].data, bottom[0].data)
        top[0].diff[...] = 3.0
        layer.Backward(top, [True], bottom)
        np.testing.assert_array_equal(bottom[0].diff, 3.0)


def test_slice_then_concat_round_trips_data_and_diff():
    x = rs.randn(2, 7, 3)
    sl, bottom, mid = setup('type: "Slice" slice_param { slice_point: 2 slice_point: 3 }', x, num_top=3)
    sl.Forward(bottom, mid)
    assert [m.shape for m in mid] == [(2, 2, 3), (2, 1, 3), (2, 4, 3)]
    cat = make('type: "Concat"')
    out = [Blob()]
    cat.SetUp(mid, out)
    cat.Forward(mid, out)
    np.testing.assert_array_equal(out[0].data, bottom[0].data)
    dy = rs.randn(2, 7, 3).astype(np.float32)
    out[0].diff[...] = dy
    cat.Backward(out, [True] * 3, mid)
    sl.Backward(mid, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, dy)


# -- Tile, Silence, Reduction, ArgMax -----------------------------------------------------------
def test_tile_backward_sums_the_copies():
    x = rs.randn(2, 3, 2)
    layer, bottom, top = setup('type: "Tile" tile_param { axis: 1 tiles: 4 }', x)
    layer.Forward(bottom, top)
    dy = rs.randn(2, 12, 2).astype(np.float32)
    top[0].diff[...] = dy
    layer.Backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dy.reshape(2, 4, 3, 2).sum(axis=1), rtol=1e-6, atol=1e-6)


def test_silence_zeroes_only_the_bottoms_that_propagate():
    layer, bottom, top = setup('type: "Silence"', rs.randn(2, 3), rs.randn(4), num_top=0)
    assert top == []
    for b in bottom:
        b.diff[...] = 5.0
    layer.Forward(bottom, top)
    layer.Backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0.0)
    np.testing.assert_array_equal(bottom[1].diff, 5.0)


def test_reduction_mean_divides_by_the_current_dim_after_a_reshape():
    layer, bottom, top = setup('type: "Reduction" reduction_param { operation: MEAN axis: 1 coeff: 2 }',
                               rs.randn(2, 3))
    x = rs.randn(2, 5).astype(np.float32)
    bottom[0].reshape(x.shape)
    bottom[0].data[...] = x
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, 2 * x.mean(axis=1), rtol=1e-5)
    top[0].diff[...] = [1.0, -3.0]
    layer.Backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, np.array([[0.4] * 5, [-1.2] * 5]), rtol=1e-5)


def test_reduction_asum_gradient_is_zero_at_zero():
    layer, bottom, top = setup('type: "Reduction" reduction_param { operation: ASUM }', [[-2.0, 0.0, 3.0]])
    layer.Forward(bottom, top)
    assert top[0].shape == () and top[0].data == 5.0
    top[0].diff[...] = 2.0
    layer.Backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[-2.0, 0.0, 2.0]])


def test_argmax_ranks_ties_by_the_larger_index_and_keeps_three_axes():
    layer, bottom, top = setup('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }',
                               [[1.0, 5.0, 5.0, 0.0, 5.0]])
    layer.Forward(bottom, top)
    assert top[0].shape == (1, 2, 3)
    np.testing.assert_array_equal(top[0].data, [[[4, 2, 1], [5, 5, 5]]])


def test_argmax_has_no_gradient():
    layer, bottom, top = setup('type: "ArgMax"', rs.randn(2, 3))
    layer.Forward(bottom, top)
    with pytest.raises(NumcaffeError, match="no gradient"):
        layer.Backward(top, [True], bottom)
    assert not layer.allow_force_backward(0)


# -- through a net --------------------------------------------------------------------------
NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 dim: 2 } } }
layer { name: "slice" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 2 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" top: "c" }
layer { name: "flat" type: "Flatten" bottom: "c" top: "f" }
layer { name: "re" type: "Reshape" bottom: "f" top: "r" reshape_param { shape { dim: -1 } } }
layer { name: "sq" type: "Reduction" bottom: "r" top: "sq" loss_weight: 1
        reduction_param { operation: SUMSQ coeff: 0.5 } }
layer { name: "mean" type: "Reduction" bottom: "f" top: "mean" loss_weight: 2
        reduction_param { operation: MEAN } }
layer { name: "tile" type: "Tile" bottom: "a" top: "ta" tile_param { axis: 1 tiles: 2 } }
layer { name: "quiet" type: "Silence" bottom: "ta" }
"""


def test_a_net_through_the_shape_layers_gets_caffes_gradients_every_iteration():
    net = Net(text_format.Parse(NET, caffe_pb2.NetParameter()), TRAIN)
    assert "ta" not in net.outputs
    for seed in (1, 2):  # the second pass runs with the diffs already shared
        x = np.random.RandomState(seed).randn(2, 6, 2).astype(np.float32)
        net.blobs["x"].data[...] = x
        loss = net.Forward()
        np.testing.assert_allclose(loss, 0.5 * (x.astype(np.float64) ** 2).sum() + 2 * x.mean(), rtol=1e-5)
        net.Backward()
        np.testing.assert_allclose(net.blobs["x"].diff, x + 2.0 / x.size, rtol=1e-5, atol=1e-6)


# -- clear errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,arrays,num_top,error,message", [
    ('type: "Concat"', [(2, 3, 4), (2, 5, 3)], 1, ShapeError, r"\(2, 3, 4\).*\(2, 5, 3\)"),
    ('type: "Concat"', [(2, 3), (2, 3, 1)], 1, ShapeError, "same number of axes"),
    ('type: "Concat" concat_param { axis: 3 }', [(2, 3), (2, 3)], 1, ShapeError, "concat axis 3 is out of range"),
    ('type: "Concat" concat_param { concat_dim: 2 }', [(2, 3), (2, 3)], 1, ShapeError, "concat_dim 2"),
    ('type: "Concat" concat_param { axis: 0 concat_dim: 0 }', [(2, 3), (2, 3)], 1, ConfigError, "not both"),
    ('type: "Slice" slice_param { slice_point: 1 }', [(2, 4)], 3, ShapeError, "1 slice_point"),
    ('type: "Slice" slice_param { slice_point: 3 slice_point: 2 }', [(2, 4)], 3, ShapeError,
     "strictly increasing"),
    ('type: "Slice" slice_param { slice_point: 5 }', [(2, 4)], 2, ShapeError, "beyond axis 1 of size 4"),
    ('type: "Slice"', [(2, 4)], 3, ShapeError, "3 tops do not evenly divide"),
    ('type: "Slice" slice_param { axis: 0 slice_dim: 0 }', [(2, 4)], 2, ConfigError, "not both"),
    ('type: "Flatten" flatten_param { axis: 2 end_axis: 0 }', [(2, 3, 4)], 1, ShapeError, "comes after"),
    ('type: "Flatten" flatten_param { axis: 5 }', [(2, 3)], 1, ShapeError, "flatten axis 5 is out of range"),
    ('type: "Reshape" reshape_param { shape { dim: 5 dim: 5 } }', [(2, 3)], 1, ShapeError,
     r"\(5, 5\) holds 25 values .* \(2, 3\) holds 6"),
    ('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', [(2, 3)], 1, ConfigError, "more than one -1"),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: 0 dim: 0 } }', [(2, 3)], 1, ShapeError, "no axis 2"),
    ('type: "Reshape" reshape_param { shape { dim: 4 dim: -1 } }', [(2, 3)], 1, ShapeError, "cannot infer"),
    ('type: "Reshape" reshape_param { shape { dim: 6 } axis: 3 }', [(2, 3)], 1, ShapeError, "out of range"),
    ('type: "Reshape" reshape_param { shape { dim: 6 } axis: 1 num_axes: 2 }', [(2, 3)], 1, ShapeError,
     "goes past"),
    ('type: "Tile"', [(2, 3)], 1, ConfigError, "tiles"),
    ('type: "Tile" tile_param { tiles: 0 }', [(2, 3)], 1, ConfigError, "positive"),
    ('type: "ArgMax" argmax_param { top_k: 7 }', [(2, 3, 2)], 1, ShapeError, "top_k 7"),
    ('type: "ArgMax" argmax_param { top_k: 4 axis: 1 }', [(2, 3, 2)], 1, ShapeError, "axis 1 of size 3"),
    ('type: "ArgMax" argmax_param { top_k: 0 }', [(2, 3)], 1, ConfigError, "at least 1"),
    ('type: "Reduction" reduction_param { axis: 2 }', [(2, 3)], 1, ShapeError, "reduction axis 2"),
])
def test_bad_shapes_and_params_give_one_clear_error(text, arrays, num_top, error, message):
    with pytest.raises(error, match=message) as info:
        setup(text, *[np.zeros(s) for s in arrays], num_top=num_top)
    assert "layer 'layer'" in str(info.value)


@pytest.mark.parametrize("text", ['type: "Flatten"', 'type: "Reshape" reshape_param { shape { dim: -1 } }',
                                  'type: "Tile" tile_param { tiles: 2 }'])
def test_shape_layers_refuse_to_run_in_place(text):
    layer = make(text)
    x = blob(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="in place"):
        layer.SetUp([x], [x])
