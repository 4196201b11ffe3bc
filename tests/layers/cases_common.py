"""Gradient cases for layers/inner_product.py, elementwise.py and normalization.py.

Forward values are checked against numpy oracles written from Caffe's
definitions; the layer's own parameter blobs are read back for them.
"""
import numpy as np

from numcaffe.net.proto import caffe_pb2
from tests.layers.gradcase import GradCase, away_from, distinct, gaussian, labels

TOL = dict(rtol=1e-5, atol=1e-5)


def shifted(gen, offset):
    """``gen`` plus a constant, so distinct() bottoms of a MAX never tie with each other."""
    return lambda rs: gen(rs) + offset


# -- InnerProduct / Embed -----------------------------------------------------------------
def _ip_forward(axis):
    def check(bottoms, tops, layer):
        x = bottoms[0]
        ax = axis % x.ndim
        x2 = x.reshape(int(np.prod(x.shape[:ax])), -1)
        w = layer.blobs[0].data
        y = x2 @ (w if layer.transpose else w.T)
        if layer.bias_term:
            y = y + layer.blobs[1].data
        assert tops[0].shape == x.shape[:ax] + (layer.N,)
        np.testing.assert_allclose(tops[0].reshape(y.shape), y, **TOL)
    return check


def _embed_forward(bottoms, tops, layer):
    idx = bottoms[0].astype(int)
    y = layer.blobs[0].data[idx]
    if layer.bias_term:
        y = y + layer.blobs[1].data
    assert tops[0].shape == bottoms[0].shape + (layer.N,)
    np.testing.assert_allclose(tops[0], y, **TOL)


FILL = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def _ip(extra, bottom_shape, axis=1, **kw):
    return GradCase(f'type: "InnerProduct" inner_product_param {{ {extra} {FILL} axis: {axis} }}',
                    [gaussian(bottom_shape)], check_forward=_ip_forward(axis), **kw)


# -- Eltwise -------------------------------------------------------------------------------
def _eltwise_forward(op, coeffs=None):
    def check(bottoms, tops, layer):
        if op == "PROD":
            y = np.prod(bottoms, axis=0)
        elif op == "SUM":
            c = coeffs or [1.0] * len(bottoms)
            y = sum(ci * b for ci, b in zip(c, bottoms))
        else:
            y = np.max(bottoms, axis=0)
        np.testing.assert_allclose(tops[0], y, **TOL)
    return check


def _eltwise(op, n, shape=(2, 3, 4), extra="", coeffs=None, gen=None, **kw):
    gen = gen or (lambda k: gaussian(shape))
    return GradCase(f'type: "Eltwise" eltwise_param {{ operation: {op} {extra} }}',
                    [gen(k) for k in range(n)], check_forward=_eltwise_forward(op, coeffs), **kw)


# -- Scale / Bias ----------------------------------------------------------------------------
def _bshape(x_shape, s_shape, axis):
    """s reshaped to broadcast against x from ``axis`` on."""
    axis = 0 if len(s_shape) == 0 else axis % len(x_shape)
    return (1,) * axis + tuple(s_shape) + (1,) * (len(x_shape) - axis - len(s_shape))


def _scale_forward(axis):
    def check(bottoms, tops, layer):
        x = bottoms[0]
        s = bottoms[1] if len(bottoms) > 1 else layer.blobs[0].data
        y = x * s.reshape(_bshape(x.shape, s.shape, axis))
        if layer.bias_term:
            b = layer.blobs[-1].data
            y = y + b.reshape(_bshape(x.shape, b.shape, axis))
        np.testing.assert_allclose(tops[0], y, **TOL)
    return check


def _bias_forward(axis):
    def check(bottoms, tops, layer):
        x = bottoms[0]
        b = bottoms[1] if len(bottoms) > 1 else layer.blobs[0].data
        np.testing.assert_allclose(tops[0], x + b.reshape(_bshape(x.shape, b.shape, axis)), **TOL)
    return check


def _scale(param, bottoms, axis=1, **kw):
    return GradCase(f'type: "Scale" scale_param {{ axis: {axis} {param} }}', bottoms,
                    check_forward=_scale_forward(axis), **kw)


def _bias(param, bottoms, axis=1, **kw):
    return GradCase(f'type: "Bias" bias_param {{ axis: {axis} {param} }}', bottoms,
                    check_forward=_bias_forward(axis), **kw)


SFILL = 'filler { type: "gaussian" std: 1 }'
BFILL = 'bias_filler { type: "gaussian" std: 1 }'


# -- Maxout ------------------------------------------------------------------------------------
def _maxout_forward(k):
    def check(bottoms, tops, layer):
        x = bottoms[0]
        n, c = x.shape[:2]
        y = x.reshape((n, c // k, k) + x.shape[2:]).max(axis=2)
        np.testing.assert_array_equal(tops[0], y)
    return check


def _maxout(k, shape, **kw):
    return GradCase(f'type: "Maxout" maxout_param {{ num_pieces: {k} }}', [distinct(shape)],
                    check_forward=_maxout_forward(k), **kw)


# -- BatchNorm / MVN -------------------------------------------------------------------------
def _bn_forward(bottoms, tops, layer):
    x = bottoms[0].astype(np.float64)
    xs = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    if layer.use_global_stats:
        f = layer.blobs[2].data[0]
        scale = 0.0 if f == 0 else 1.0 / f
        mean, var = layer.blobs[0].data * scale, layer.blobs[1].data * scale
    else:
        mean, var = xs.mean(axis=(0, 2)), xs.var(axis=(0, 2))
    y = (xs - mean[None, :, None]) / np.sqrt(var[None, :, None] + layer.eps)
    np.testing.assert_allclose(tops[0], y.reshape(x.shape), rtol=1e-4, atol=1e-4)


# mean (0.25, -0.5, 1) and variance (1, 1.5, 0.5) once divided by the scale factor 2
BN_STATS = ('blobs { shape { dim: 3 } data: 0.5 data: -1 data: 2 } '
            'blobs { shape { dim: 3 } data: 2 data: 3 data: 1 } '
            'blobs { shape { dim: 1 } data: 2 }')


def _mvn_forward(normalize_variance, across_channels, eps=1e-9):
    def check(bottoms, tops, layer):
        x = bottoms[0].astype(np.float64)
        rows = x.shape[0] if across_channels else x.shape[0] * (x.shape[1] if x.ndim > 1 else 1)
        xr = x.reshape(rows, -1)
        y = xr - xr.mean(axis=1, keepdims=True)
        if normalize_variance:
            y = y / (np.sqrt((y ** 2).mean(axis=1, keepdims=True)) + eps)
        np.testing.assert_allclose(tops[0], y.reshape(x.shape), rtol=1e-4, atol=1e-4)
    return check


def _mvn(nv, ac, shape=(2, 3, 2, 2), **kw):
    flags = f'normalize_variance: {str(nv).lower()} across_channels: {str(ac).lower()}'
    return GradCase(f'type: "MVN" mvn_param {{ {flags} }}', [gaussian(shape)],
                    check_forward=_mvn_forward(nv, ac), id=f"nv{int(nv)}-ac{int(ac)}-{len(shape)}d", **kw)


CASES = {
    "InnerProduct": [
        _ip("num_output: 4", (2, 3, 2, 2), id="4d-axis1"),
        _ip("num_output: 5", (3, 4), id="2d"),
        _ip("num_output: 3", (2, 3, 4), axis=2, id="3d-axis2"),
        _ip("num_output: 3", (2, 3, 2, 2), axis=2, id="4d-axis2"),
        _ip("num_output: 4 transpose: true", (3, 5), id="2d-transpose"),
        _ip("num_output: 2 transpose: true", (2, 3, 2), axis=-1, id="3d-axis-1-transpose"),
        _ip("num_output: 4 bias_term: false", (2, 3, 2, 2), id="4d-nobias"),
        _ip("num_output: 3 bias_term: false transpose: true", (4, 6), id="2d-nobias-transpose"),
    ],
    "Embed": [
        GradCase(f'type: "Embed" embed_param {{ num_output: 4 input_dim: 5 {FILL} }}',
                 [labels((2, 3), 5)], check_bottom=[], check_forward=_embed_forward, id="bias"),
        GradCase(f'type: "Embed" embed_param {{ num_output: 3 input_dim: 4 bias_term: false {FILL} }}',
                 [labels((7,), 4)], check_bottom=[], check_forward=_embed_forward, id="nobias-repeats"),
    ],
    "Eltwise": [
        _eltwise("SUM", 2, id="sum2"),
        _eltwise("SUM", 3, extra="coeff: 1 coeff: -0.5 coeff: 2", coeffs=[1, -0.5, 2], id="sum3-coeff"),
        _eltwise("PROD", 2, id="prod2"),
        _eltwise("PROD", 3, shape=(2, 5), id="prod3"),
        _eltwise("PROD", 3, extra="stable_prod_grad: false", id="prod3-unstable",
                 gen=lambda k: away_from((2, 3, 4), margin=0.3)),
        _eltwise("MAX", 2, gen=lambda k: shifted(distinct((2, 3, 4), gap=0.1), 0.03 * k), id="max2"),
        _eltwise("MAX", 3, shape=(4, 5), gen=lambda k: shifted(distinct((4, 5), gap=0.1), 0.03 * k),
                 id="max3"),
    ],
    "Scale": [
        _scale(SFILL, [gaussian((2, 3, 4))], id="learned-axis1"),
        _scale(f"{SFILL} bias_term: true {BFILL}", [gaussian((2, 3, 4))], id="learned-bias"),
        _scale(f"num_axes: 2 {SFILL}", [gaussian((2, 3, 4))], id="learned-2axes"),
        _scale(f"num_axes: -1 {SFILL} bias_term: true {BFILL}", [gaussian((2, 3, 2, 2))],
               id="learned-to-end-bias"),
        _scale(f"num_axes: 0 {SFILL}", [gaussian((2, 3))], id="learned-scalar"),
        _scale(f"num_axes: 1 {SFILL}", [gaussian((2, 3, 4))], axis=0, id="learned-axis0"),
        _scale(f"num_axes: 1 {SFILL}", [gaussian((2, 3, 4))], axis=-1, id="learned-axis-1"),
        _scale("", [gaussian((2, 3, 4)), gaussian((3,))], id="bottom-axis1"),
        _scale(f"bias_term: true {BFILL}", [gaussian((2, 3, 4)), gaussian((3, 4))], id="bottom-2axes-bias"),
        _scale("", [gaussian((2, 3, 4)), gaussian((2, 3))], axis=0, id="bottom-axis0"),
        _scale("", [gaussian((2, 3)), gaussian((2, 3))], axis=0, id="bottom-eltwise"),
        _scale("", [gaussian((2, 3)), gaussian(())], id="bottom-scalar"),
    ],
    "Bias": [
        _bias(SFILL, [gaussian((2, 3, 4))], id="learned-axis1"),
        _bias(f"num_axes: 2 {SFILL}", [gaussian((2, 3, 4))], id="learned-2axes"),
        _bias(f"num_axes: 0 {SFILL}", [gaussian((2, 3))], id="learned-scalar"),
        _bias(f"num_axes: -1 {SFILL}", [gaussian((2, 3, 2))], axis=0, id="learned-all"),
        _bias("", [gaussian((2, 3, 4)), gaussian((3, 4))], id="bottom-2axes"),
        _bias("", [gaussian((2, 3, 4)), gaussian((2,))], axis=0, id="bottom-axis0"),
    ],
    "Maxout": [
        _maxout(2, (2, 4, 2, 2), id="k2-4d"),
        _maxout(3, (2, 6, 3), id="k3-3d"),
        _maxout(3, (3, 6), id="k3-2d"),
        _maxout(1, (2, 3, 2), id="k1-identity"),
    ],
    "BatchNorm": [
        GradCase('type: "BatchNorm"', [gaussian((3, 2, 2, 2))], check_forward=_bn_forward, id="train-4d"),
        GradCase('type: "BatchNorm" batch_norm_param { eps: 0.01 }', [gaussian((5, 3))],
                 check_forward=_bn_forward, id="train-2d"),
        GradCase('type: "BatchNorm" batch_norm_param { use_global_stats: false }', [gaussian((2, 3, 4))],
                 check_forward=_bn_forward, id="explicit-batch-3d"),
        GradCase(f'type: "BatchNorm" batch_norm_param {{ use_global_stats: true }} {BN_STATS}',
                 [gaussian((2, 3, 2, 2))], check_forward=_bn_forward, id="global-stats"),
        GradCase(f'type: "BatchNorm" {BN_STATS}', [gaussian((4, 3))], check_forward=_bn_forward,
                 id="test-phase-default-global", phase=caffe_pb2.TEST),
    ],
    "MVN": [
        _mvn(nv, ac) for nv in (True, False) for ac in (True, False)
    ] + [
        _mvn(True, False, shape=(2, 3, 5)),
        _mvn(True, True, shape=(3, 4)),
    ],
}
