"""Behaviour of InnerProduct, Embed, Eltwise, Scale, Bias, Maxout, BatchNorm and MVN
beyond the gradient cases: Caffe's formulas, in-place runs, and clear errors."""
import numpy as np
import pytest
from google.protobuf import text_format

from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, NumcaffeError, ShapeError
from numcaffe.net.net import TEST, TRAIN, Net
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.random import set_random_seed
from tests.layers.gradcase import blob


def make(text, phase=TRAIN):
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    param.name = param.name or "layer"
    param.phase = phase
    set_random_seed(3)
    return create_layer(param)


def setup(layer, *arrays, top=None):
    bottom = [blob(a) for a in arrays]
    top = top if top is not None else [Blob()]
    layer.SetUp(bottom, top)
    return bottom, top


def run(layer, bottom, top, dy):
    layer.Forward(bottom, top)
    top[0].diff[...] = dy
    layer.Backward(top, [True] * len(bottom), bottom)


rs = np.random.RandomState(0)


# -- InnerProduct -----------------------------------------------------------------------------
def test_inner_product_is_x_wt_plus_b():
    layer = make('type: "InnerProduct" inner_product_param { num_output: 5 '
                 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "uniform" min: -1 max: 1 } }')
    x = rs.randn(4, 2, 3).astype(np.float32)
    bottom, top = setup(layer, x)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (5, 6) and b.shape == (5,) and np.abs(b).max() > 0
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x.reshape(4, 6) @ w.T + b, rtol=1e-5, atol=1e-5)


def test_inner_product_transpose_stores_weights_k_by_n_and_backward_matches_numpy():
    layer = make('type: "InnerProduct" inner_product_param { num_output: 3 transpose: true '
                 'weight_filler { type: "gaussian" std: 1 } }')
    x = rs.randn(4, 6).astype(np.float32)
    bottom, top = setup(layer, x)
    w = layer.blobs[0].data.copy()
    assert w.shape == (6, 3)
    dy = rs.randn(4, 3).astype(np.float32)
    run(layer, bottom, top, dy)
    np.testing.assert_allclose(top[0].data, x @ w + layer.blobs[1].data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[0].diff, x.T @ dy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bottom[0].diff, dy @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("M", [1, 2, 4, 5, 9])  # both sides of RANK_UPDATE_MAX_M
def test_inner_product_weight_gradient_accumulates_on_both_paths(M, transpose):
    from numcaffe.layers import inner_product
    assert inner_product.RANK_UPDATE_MAX_M in (4, 5, 6, 7, 8)  # the cases above cover both paths
    layer = make(f'type: "InnerProduct" inner_product_param {{ num_output: 7 transpose: {str(transpose).lower()} '
                 'weight_filler { type: "gaussian" std: 1 } }')
    x = rs.randn(M, 11).astype(np.float32)
    bottom, top = setup(layer, x)
    before = rs.randn(*layer.blobs[0].shape).astype(np.float32)
    layer.blobs[0].diff[...] = before  # parameter diffs accumulate
    dy = rs.randn(M, 7).astype(np.float32)
    run(layer, bottom, top, dy)
    want = before + (x.T @ dy if transpose else dy.T @ x)
    np.testing.assert_allclose(layer.blobs[0].diff, want, rtol=1e-5, atol=1e-5)
    assert (layer._dw is None) == (M <= inner_product.RANK_UPDATE_MAX_M)  # no weight-sized scratch when small


def test_inner_product_rejects_a_different_input_size():
    layer = make('type: "InnerProduct" inner_product_param { num_output: 2 }')
    bottom, top = setup(layer, np.zeros((2, 6)))
    bottom[0].reshape((2, 7))
    with pytest.raises(ShapeError, match="7 values"):
        layer.Forward(bottom, top)


def test_inner_product_needs_num_output():
    layer = make('type: "InnerProduct" inner_product_param { }')
    with pytest.raises(ConfigError, match="num_output"):
        setup(layer, np.zeros((2, 3)))


def test_inner_product_keeps_preloaded_weights():
    layer = make('type: "InnerProduct" inner_product_param { num_output: 2 bias_term: false '
                 'weight_filler { type: "gaussian" } } '
                 'blobs { shape { dim: 2 dim: 3 } data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 }')
    bottom, top = setup(layer, [[1, 0, -1]])
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[-2, -2]])


def test_inner_product_in_a_net_matches_numpy():
    net_param = caffe_pb2.NetParameter()
    text_format.Parse('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
                inner_product_param { num_output: 2 weight_filler { type: "xavier" }
                                      bias_filler { type: "constant" value: 0.25 } } }''', net_param)
    net = Net(net_param, TRAIN)
    x = rs.randn(3, 4).astype(np.float32)
    y = net.forward(x=x)["y"]
    w, b = net.params["fc"][0].data, net.params["fc"][1].data
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b, 0.25)


# -- Embed ---------------------------------------------------------------------------------------
def test_embed_scatter_adds_repeated_indices_and_gives_indices_no_gradient():
    layer = make('type: "Embed" embed_param { num_output: 2 input_dim: 3 bias_term: false '
                 'weight_filler { type: "gaussian" } }')
    bottom, top = setup(layer, [2, 0, 2])
    dy = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    bottom[0].diff[...] = 9
    run(layer, bottom, top, dy)
    np.testing.assert_array_equal(top[0].data, layer.blobs[0].data[[2, 0, 2]])
    np.testing.assert_array_equal(layer.blobs[0].diff, [[3, 4], [0, 0], [6, 8]])
    np.testing.assert_array_equal(bottom[0].diff, 0)
    assert not layer.allow_force_backward(0)


@pytest.mark.parametrize("bad", [3, -1, 1.5, np.nan])
def test_embed_rejects_indices_outside_the_vocabulary(bad):
    layer = make('type: "Embed" embed_param { num_output: 2 input_dim: 3 }')
    bottom, top = setup(layer, [0, bad])
    with pytest.raises(NumcaffeError, match=r"position 1 .*\[0, 3\)"):
        layer.Forward(bottom, top)


# -- Eltwise ---------------------------------------------------------------------------------------
def test_eltwise_max_breaks_ties_as_caffe():
    # first pair: ties go to bottom 1; later bottoms must be strictly larger
    layer = make('type: "Eltwise" eltwise_param { operation: MAX }')
    bottom, top = setup(layer, [1, 2], [1, 0], [1, 2])
    run(layer, bottom, top, [10, 20])
    np.testing.assert_array_equal(bottom[0].diff, [0, 20])
    np.testing.assert_array_equal(bottom[1].diff, [10, 0])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0])


def test_eltwise_prod_gradients_stable_and_unstable_agree():
    x = [rs.uniform(0.5, 2, (2, 3)) for _ in range(3)]
    dy = rs.randn(2, 3)
    grads = []
    for stable in ("true", "false"):
        layer = make(f'type: "Eltwise" eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}')
        bottom, top = setup(layer, *x)
        run(layer, bottom, top, dy)
        grads.append([b.diff.copy() for b in bottom])
    for a, b, other in zip(grads[0], grads[1], [x[1] * x[2], x[0] * x[2], x[0] * x[1]]):
        np.testing.assert_allclose(a, dy * other, rtol=1e-5)
        np.testing.assert_allclose(b, dy * other, rtol=1e-5)


@pytest.mark.parametrize("text,err,match", [
    ('operation: SUM coeff: 1', ConfigError, "once per bottom"),
    ('operation: PROD coeff: 1 coeff: 2', ConfigError, "not allowed with operation PROD"),
])
def test_eltwise_config_errors(text, err, match):
    layer = make(f'type: "Eltwise" eltwise_param {{ {text} }}')
    with pytest.raises(err, match=match):
        setup(layer, np.zeros(3), np.zeros(3))


def test_eltwise_max_accepts_and_ignores_coefficients_as_caffe():
    # Caffe's EltwiseLayer::LayerSetUp rejects coeff only for PROD; MAX takes and ignores them.
    a, b = np.array([1.0, 5.0, -2.0]), np.array([3.0, 4.0, -1.0])
    layer = make('type: "Eltwise" eltwise_param { operation: MAX coeff: 2 coeff: -1 }')
    bottom, top = setup(layer, a, b)
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, np.maximum(a, b))
    run(layer, bottom, top, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(bottom[0].diff, [0, 2, 0])
    np.testing.assert_array_equal(bottom[1].diff, [1, 0, 3])


def test_eltwise_shape_mismatch_and_in_place_are_errors():
    layer = make('type: "Eltwise"')
    with pytest.raises(ShapeError, match="one shape"):
        setup(layer, np.zeros(3), np.zeros(4))
    a, b = blob(np.zeros(3)), blob(np.zeros(3))
    with pytest.raises(ShapeError, match="in place"):
        make('type: "Eltwise"').SetUp([a, b], [a])


# -- Scale / Bias -------------------------------------------------------------------------------------
def test_scale_defaults_to_identity_and_bias_to_zero():
    x = rs.randn(2, 3, 4)
    layer = make('type: "Scale" scale_param { bias_term: true }')
    bottom, top = setup(layer, x)
    assert layer.blobs[0].shape == (3,) and layer.blobs[1].shape == (3,)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x, rtol=1e-6)
    layer = make('type: "Bias"')
    bottom, top = setup(layer, x)
    np.testing.assert_array_equal(layer.blobs[0].data, 0)


def test_scale_with_bottom_scale_and_bias_has_only_the_bias_blob():
    layer = make('type: "Scale" scale_param { axis: 1 bias_term: true bias_filler { type: "constant" value: 1 } }')
    bottom, top = setup(layer, rs.randn(2, 3, 4), rs.randn(3, 4))
    assert [b.shape for b in layer.blobs] == [(3, 4)]


def test_scale_with_a_preloaded_scale_adds_the_missing_bias():
    layer = make('type: "Scale" scale_param { bias_term: true bias_filler { type: "constant" value: 2 } } '
                 'blobs { shape { dim: 3 } data: 1 data: 2 data: 3 }')
    bottom, top = setup(layer, np.ones((2, 3)))
    layer.Forward(bottom, top)
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(top[0].data, [[3, 4, 5], [3, 4, 5]])


@pytest.mark.parametrize("text,bottoms", [
    ('type: "Scale" scale_param { filler { type: "gaussian" } bias_term: true '
     'bias_filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('type: "Scale"', [(2, 3, 4), (3,)]),
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('type: "Bias"', [(2, 3, 4), (3,)]),
    ('type: "BatchNorm"', [(3, 2, 4)]),
    ('type: "BatchNorm" batch_norm_param { use_global_stats: true }', [(3, 2, 4)]),
    ('type: "Scale" scale_param { filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('type: "MVN"', [(2, 3, 4)]),
    ('type: "MVN" mvn_param { normalize_variance: false }', [(2, 3, 4)]),
])
def test_in_place_matches_out_of_place(text, bottoms):
    arrays = [rs.randn(*s).astype(np.float32) for s in bottoms]
    dy = rs.randn(*bottoms[0]).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = make(text)
        bottom = [blob(a) for a in arrays]
        top = [bottom[0]] if in_place else [Blob()]
        layer.SetUp(bottom, top)
        layer.Forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.Backward(top, [True] * len(bottom), bottom)
        results.append((y, [b.diff.copy() for b in bottom], [p.diff.copy() for p in layer.blobs]))
    (y0, d0, p0), (y1, d1, p1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
    for a, b in zip(d0 + p0, d1 + p1):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_scale_shape_mismatch_is_an_error():
    layer = make('type: "Scale"')
    with pytest.raises(ShapeError, match="does not match"):
        setup(layer, np.zeros((2, 3, 4)), np.zeros((4,)))
    layer = make('type: "Bias" bias_param { num_axes: 3 }')
    with pytest.raises(ShapeError, match="extends past"):
        setup(layer, np.zeros((2, 3)))


# -- Maxout ----------------------------------------------------------------------------------------------
def test_maxout_groups_consecutive_channels_and_routes_gradient_to_the_winner():
    layer = make('type: "Maxout" maxout_param { num_pieces: 2 }')
    x = np.array([[[1.0], [3.0], [5.0], [4.0]]])          # 1 x 4 x 1
    bottom, top = setup(layer, x)
    run(layer, bottom, top, [[[7.0], [8.0]]])
    np.testing.assert_array_equal(top[0].data, [[[3.0], [5.0]]])
    np.testing.assert_array_equal(bottom[0].diff, [[[0.0], [7.0], [8.0], [0.0]]])


def test_maxout_needs_channels_divisible_by_num_pieces():
    layer = make('type: "Maxout" maxout_param { num_pieces: 3 }')
    with pytest.raises(ShapeError, match="not divisible"):
        setup(layer, np.zeros((2, 4, 2)))


# -- BatchNorm ---------------------------------------------------------------------------------------------
def test_batch_norm_running_stats_follow_caffes_formula():
    layer = make('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }')
    x1, x2 = rs.randn(4, 3, 2), rs.randn(4, 3, 2) * 2 + 1
    bottom, top = setup(layer, x1)
    layer.Forward(bottom, top)
    bottom[0].data[...] = x2
    layer.Forward(bottom, top)
    m = 4 * 2
    f = 0.9

    def stats(x):
        x = x.astype(np.float32).astype(np.float64)
        return x.mean(axis=(0, 2)), x.var(axis=(0, 2)) * m / (m - 1)
    (m1, v1), (m2, v2) = stats(x1), stats(x2)
    np.testing.assert_allclose(layer.blobs[2].data, [f * 1 + 1], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, f * m1 + m2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].data, f * v1 + v2, rtol=1e-5, atol=1e-6)

    # A TEST-phase layer with those blobs normalizes with mean = blobs[0] / blobs[2], var likewise.
    test_layer = make('type: "BatchNorm"', phase=TEST)
    test_layer.blobs = [blob(b.data) for b in layer.blobs]
    tb, tt = setup(test_layer, x2)
    test_layer.Forward(tb, tt)
    before = [b.data.copy() for b in test_layer.blobs]
    s = f + 1
    mean, var = (f * m1 + m2) / s, (f * v1 + v2) / s
    expected = (x2 - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)
    np.testing.assert_allclose(tt[0].data, expected, rtol=1e-4, atol=1e-4)
    for b, d in zip(test_layer.blobs, before):
        np.testing.assert_array_equal(b.data, d)       # global stats: no update


def test_batch_norm_global_stats_with_zero_factor_uses_zero_mean_and_variance():
    layer = make('type: "BatchNorm" batch_norm_param { use_global_stats: true }')
    x = rs.randn(2, 3)
    bottom, top = setup(layer, x)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x / np.sqrt(1e-5), rtol=1e-4)


def test_batch_norm_statistics_are_not_learnable():
    net_param = caffe_pb2.NetParameter()
    text_format.Parse('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }''', net_param)
    net = Net(net_param, TRAIN)
    bn = net.layers[1]
    assert net.params_lr == [0.0, 0.0, 0.0]
    assert bn.param_propagate_down == [False, False, False]
    assert [p.lr_mult for p in bn.layer_param.param] == [0.0, 0.0, 0.0]
    assert bn.use_global_stats is False
    assert Net(net_param, TEST).layers[1].use_global_stats is True


def test_batch_norm_rejects_a_learning_rate_on_its_statistics():
    layer = make('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }')
    with pytest.raises(ConfigError, match="statistics"):
        setup(layer, np.zeros((2, 3)))


def test_batch_norm_backward_uses_its_cached_output_when_a_later_layer_overwrites_it():
    layer = make('type: "BatchNorm"')
    x = rs.randn(4, 2)
    dy = rs.randn(4, 2)
    bottom, top = setup(layer, x)
    run(layer, bottom, top, dy)
    expected = bottom[0].diff.copy()
    top[0].data[...] = 0          # e.g. an in-place ReLU on the top
    layer.Backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, expected)


# -- MVN ------------------------------------------------------------------------------------------------------
def test_mvn_eps_is_added_to_the_standard_deviation():
    layer = make('type: "MVN" mvn_param { eps: 0.5 across_channels: true }')
    x = np.array([[1.0, 3.0], [0.0, 4.0]])
    bottom, top = setup(layer, x)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, [[-1 / 1.5, 1 / 1.5], [-2 / 2.5, 2 / 2.5]], rtol=1e-6)


@pytest.mark.parametrize("outer, dim, inner", [(2, 3, 8), (3, 5, 19), (8, 4, 196)])
def test_scale_one_pass_gradients_equal_the_plain_reductions(outer, dim, inner):
    from numcaffe.layers.elementwise import reduce_product, reduce_product_and_sum, reduce_sum
    r = np.random.RandomState(inner)
    dy = r.standard_normal(outer * dim * inner).astype(np.float32)
    x = r.standard_normal(dy.size).astype(np.float32)
    ds, db = np.zeros(dim), np.zeros(dim)
    reduce_product_and_sum(dy, x, outer, dim, inner, ds, db)
    ds_plain, db_plain = np.zeros(dim, np.float32), np.zeros(dim, np.float32)
    reduce_product(dy, x, outer, dim, inner, ds_plain, False)
    reduce_sum(dy, outer, dim, inner, db_plain, False)
    np.testing.assert_allclose(ds, ds_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, db_plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("learned", [True, False])
def test_scale_layer_gradients_on_a_wide_plane_match_numpy(learned):
    x = rs.randn(2, 3, 5, 7)                        # inner 35: the one-pass kernel
    s = rs.randn(3)
    layer = make('type: "Scale" scale_param { bias_term: true }')
    bottom, top = setup(layer, x) if learned else setup(layer, x, s)
    if learned:
        layer.blobs[0].data[...] = s
    layer.Forward(bottom, top)
    dy = rs.randn(*x.shape).astype(np.float32)
    top[0].diff[...] = dy
    layer.Backward(top, [True, True], bottom)
    ds = (dy * x).sum(axis=(0, 2, 3))
    scale_diff = layer.blobs[0].diff if learned else bottom[1].diff
    np.testing.assert_allclose(scale_diff, ds, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[-1].diff, dy.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bottom[0].diff, dy * s.reshape(1, 3, 1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ca, cb", [(1.0, 1.0), (0.5, -2.0), (1.0 / 3.0, 0.1)])
def test_two_term_sum_equals_the_plain_passes_bitwise(ca, cb):
    from numcaffe.layers.elementwise import axpy, weighted_sum2
    r = np.random.RandomState(4)
    a = r.standard_normal(1003).astype(np.float32)
    b = (r.standard_normal(a.size) * 1e3).astype(np.float32)
    plain = np.zeros_like(a)
    axpy(ca, a, plain)
    axpy(cb, b, plain)
    y = np.empty_like(a)
    weighted_sum2(ca, a, cb, b, y)
    np.testing.assert_array_equal(y, plain)
