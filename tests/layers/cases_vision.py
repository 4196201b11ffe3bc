"""Gradient cases for layers/conv.py, pooling.py, lrn.py and crop.py, with plain numpy oracles.

The oracles below are written straight from Caffe's definitions (loops over
output positions and windows), independently of the layers' kernels.
"""
import itertools
import math

import numpy as np

from tests.layers.gradcase import GradCase, distinct, gaussian, uniform

FILL = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


# ---------------------------------------------------------------------------
# Oracles.
# ---------------------------------------------------------------------------

def conv_ref(x, w, b, stride, pad, dilation, group):
    """Direct convolution of x (N, C, *S) with w (M, C/g, *k), zero padding, Caffe's output size."""
    N, C = x.shape[:2]
    M, kshape = w.shape[0], w.shape[2:]
    D = len(kshape)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p, p) for p in pad])
    ext = [dilation[d] * (kshape[d] - 1) + 1 for d in range(D)]
    out = [(x.shape[2 + d] + 2 * pad[d] - ext[d]) // stride[d] + 1 for d in range(D)]
    y = np.zeros((N, M, *out))
    Cg, Mg = C // group, M // group
    for o in itertools.product(*[range(n) for n in out]):
        window = tuple(slice(o[d] * stride[d], o[d] * stride[d] + ext[d], dilation[d]) for d in range(D))
        patch = xp[(slice(None), slice(None)) + window]          # (N, C, *k)
        for g in range(group):
            pg = patch[:, g * Cg:(g + 1) * Cg].reshape(N, -1)
            wg = w[g * Mg:(g + 1) * Mg].reshape(Mg, -1)
            y[(slice(None), slice(g * Mg, (g + 1) * Mg)) + o] = pg @ wg.T
    if b is not None:
        y += b.reshape((1, M) + (1,) * D)
    return y


def deconv_ref(x, w, b, stride, pad, dilation, group):
    """Transposed convolution: every input pixel scatters w[c, m, k] * x into the output."""
    N, C = x.shape[:2]
    Mg, kshape = w.shape[1], w.shape[2:]
    M = Mg * group
    D = len(kshape)
    ext = [dilation[d] * (kshape[d] - 1) + 1 for d in range(D)]
    out = [stride[d] * (x.shape[2 + d] - 1) + ext[d] - 2 * pad[d] for d in range(D)]
    yp = np.zeros((N, M, *[out[d] + 2 * pad[d] for d in range(D)]))
    Cg = C // group
    for i in itertools.product(*[range(n) for n in x.shape[2:]]):
        window = tuple(slice(i[d] * stride[d], i[d] * stride[d] + ext[d], dilation[d]) for d in range(D))
        for g in range(group):
            xi = x[(slice(None), slice(g * Cg, (g + 1) * Cg)) + i].astype(np.float64)   # (N, Cg)
            contrib = np.tensordot(xi, w[g * Cg:(g + 1) * Cg], axes=(1, 0))           # (N, Mg, *k)
            yp[(slice(None), slice(g * Mg, (g + 1) * Mg)) + window] += contrib
    y = yp[(slice(None), slice(None)) + tuple(slice(pad[d], pad[d] + out[d]) for d in range(D))]
    if b is not None:
        y = y + b.reshape((1, M) + (1,) * D)
    return y


def caffe_pooled(n, k, s, p, ceil=True, padded=None):
    """Caffe's pooled size: ceil (or floor) of (n + 2p - k) / s, plus one; the last window starts
    inside when the layer is padded on either axis (``padded``; default: this axis is)."""
    out = int(math.ceil((n + 2 * p - k) / s) if ceil else math.floor((n + 2 * p - k) / s)) + 1
    if (p > 0 if padded is None else padded) and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool_ref(x, method, k, s, p, ceil=True):
    """MAX / AVE pooling by loops; returns (y, argmax index h*W+w or -1)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    padded = bool(ph or pw)
    Ho, Wo = caffe_pooled(H, kh, sh, ph, ceil, padded), caffe_pooled(W, kw, sw, pw, ceil, padded)
    y = np.zeros((N, C, Ho, Wo))
    arg = -np.ones((N, C, Ho, Wo))
    for oh in range(Ho):
        for ow in range(Wo):
            hs, ws = oh * sh - ph, ow * sw - pw
            if method == "MAX":
                h0, h1, w0, w1 = max(hs, 0), min(hs + kh, H), max(ws, 0), min(ws + kw, W)
                win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
                y[:, :, oh, ow] = win.max(axis=2)
                j = win.argmax(axis=2)  # numpy's argmax is the first maximum, as Caffe's strict '>'
                arg[:, :, oh, ow] = (h0 + j // (w1 - w0)) * W + w0 + j % (w1 - w0)
            else:
                size = (min(hs + kh, H + ph) - hs) * (min(ws + kw, W + pw) - ws)
                win = x[:, :, max(hs, 0):min(hs + kh, H), max(ws, 0):min(ws + kw, W)]
                y[:, :, oh, ow] = win.sum(axis=(2, 3)) / size
    return y, arg


def lrn_ref(x, size, alpha, beta, k, region):
    N, C, H, W = x.shape
    x = x.astype(np.float64)
    half = (size - 1) // 2
    scale = np.zeros_like(x)
    if region == "ACROSS_CHANNELS":
        for c in range(C):
            lo, hi = max(c - half, 0), min(c + half + 1, C)
            scale[:, c] = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
    else:
        for h in range(H):
            for w in range(W):
                win = x[:, :, max(h - half, 0):h + half + 1, max(w - half, 0):w + half + 1]
                scale[:, :, h, w] = 1 + alpha / size ** 2 * (win ** 2).sum(axis=(2, 3))
    return x * scale ** -beta


def im2col_ref(x, k, s, p, d):
    """Caffe's im2col per image: channel (c, taps) x output positions, zero outside."""
    N, C = x.shape[:2]
    D = len(k)
    out = [(x.shape[2 + i] + 2 * p[i] - (d[i] * (k[i] - 1) + 1)) // s[i] + 1 for i in range(D)]
    y = np.zeros((N, C * int(np.prod(k)), *out))
    for c in range(C):
        for t, tap in enumerate(itertools.product(*[range(n) for n in k])):
            for o in itertools.product(*[range(n) for n in out]):
                pos = [o[i] * s[i] - p[i] + tap[i] * d[i] for i in range(D)]
                if all(0 <= pos[i] < x.shape[2 + i] for i in range(D)):
                    y[(slice(None), c * int(np.prod(k)) + t) + o] = x[(slice(None), c) + tuple(pos)]
    return y


# ---------------------------------------------------------------------------
# check_forward callbacks.
# ---------------------------------------------------------------------------

def check_conv(stride, pad, dilation=None, group=1, reverse=False):
    def check(bottoms, tops, layer):
        w = layer.blobs[0].data
        b = layer.blobs[1].data if len(layer.blobs) > 1 else None
        D = w.ndim - 2
        dil = dilation or [1] * D
        for x, t in zip(bottoms, tops):
            ref = (deconv_ref if reverse else conv_ref)(x, w, b, stride, pad, dil, group)
            assert t.shape == ref.shape, (t.shape, ref.shape)
            np.testing.assert_allclose(t, ref, rtol=1e-4, atol=1e-4)
    return check


def check_pool(method, k, s, p, ceil=True, mask=False):
    def check(bottoms, tops, layer):
        y, arg = pool_ref(bottoms[0], method, k, s, p, ceil)
        assert tops[0].shape == y.shape, (tops[0].shape, y.shape)
        np.testing.assert_allclose(tops[0], y, rtol=1e-5, atol=1e-6)
        if mask:
            np.testing.assert_array_equal(tops[1], arg)
    return check


def check_global(method):
    def check(bottoms, tops, layer):
        x = bottoms[0]
        ref = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
        assert tops[0].shape == x.shape[:2] + (1, 1)
        np.testing.assert_allclose(tops[0][:, :, 0, 0], ref, rtol=1e-5, atol=1e-6)
    return check


def check_spp(height, method):
    def check(bottoms, tops, layer):
        x = bottoms[0]
        N, C, H, W = x.shape
        parts = []
        for level in range(height):
            bins = 2 ** level
            kh, kw = math.ceil(H / bins), math.ceil(W / bins)
            ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
            y, _ = pool_ref(x, method, (kh, kw), (kh, kw), (ph, pw))
            parts.append(y)
        if height == 1:
            np.testing.assert_allclose(tops[0], parts[0], rtol=1e-5, atol=1e-6)
        else:
            ref = np.concatenate([y.reshape(N, -1) for y in parts], axis=1)
            assert tops[0].shape == ref.shape, (tops[0].shape, ref.shape)
            np.testing.assert_allclose(tops[0], ref, rtol=1e-5, atol=1e-6)
    return check


def check_lrn(size, alpha, beta, k, region):
    def check(bottoms, tops, layer):
        np.testing.assert_allclose(tops[0], lrn_ref(bottoms[0], size, alpha, beta, k, region),
                                   rtol=1e-4, atol=1e-6)
    return check


def check_crop(axis, offsets):
    def check(bottoms, tops, layer):
        x, ref = bottoms
        axis_ = axis % x.ndim
        sl = []
        for i in range(x.ndim):
            if i < axis_:
                sl.append(slice(None))
            else:
                o = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - axis_]
                sl.append(slice(o, o + ref.shape[i]))
        np.testing.assert_array_equal(tops[0], x[tuple(sl)])
    return check


def check_im2col(k, s, p, d):
    def check(bottoms, tops, layer):
        ref = im2col_ref(bottoms[0], k, s, p, d)
        assert tops[0].shape == ref.shape, (tops[0].shape, ref.shape)
        np.testing.assert_array_equal(tops[0], ref)
    return check


def _conv(params, shape, check, num_top=1, bottoms=1, **kw):
    return GradCase(f'type: "Convolution" convolution_param {{ {params} {FILL} }}',
                    [gaussian(shape)] * bottoms, num_top=num_top, check_forward=check, max_checks=60, **kw)


def _deconv(params, shape, check, **kw):
    return GradCase(f'type: "Deconvolution" convolution_param {{ {params} {FILL} }}',
                    [gaussian(shape)], check_forward=check, max_checks=60, **kw)


def _pool(params, shape, check, num_top=1, **kw):
    return GradCase(f'type: "Pooling" pooling_param {{ {params} }}', [distinct(shape)], num_top=num_top,
                    check_forward=check, max_checks=60, **kw)


CASES = {
    "Convolution": [
        _conv("num_output: 3 kernel_size: 3", (2, 2, 5, 6), check_conv([1, 1], [0, 0]), id="basic"),
        _conv("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 5, 5), check_conv([2, 2], [1, 1]),
              id="pad-stride"),
        _conv("num_output: 2 kernel_size: 2 dilation: 2 pad: 1", (1, 2, 6, 5),
              check_conv([1, 1], [1, 1], [2, 2]), id="dilation"),
        _conv("num_output: 4 kernel_size: 3 pad: 1 group: 2", (2, 4, 4, 4), check_conv([1, 1], [1, 1], group=2),
              id="group"),
        _conv("num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 bias_term: false",
              (2, 2, 6, 5), check_conv([2, 1], [1, 0]), id="rect-nobias"),
        _conv("num_output: 3 kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 0 pad: 1",
              (1, 2, 5, 6), check_conv([1, 2], [0, 1]), id="per-axis"),
        _conv("num_output: 3 kernel_size: 1", (2, 4, 3, 3), check_conv([1, 1], [0, 0]), id="1x1"),
        _conv("num_output: 3 kernel_size: 3 group: 3 pad: 1 stride: 2", (2, 3, 5, 5),
              check_conv([2, 2], [1, 1], group=3), id="depthwise"),
        _conv("num_output: 6 kernel_size: 3 group: 3 pad: 1 dilation: 2", (2, 3, 5, 5),
              check_conv([1, 1], [1, 1], [2, 2], group=3), id="depthwise-multiplier"),
        _conv("num_output: 3 kernel_size: 3 pad: 1 force_nd_im2col: true", (1, 2, 4, 5),
              check_conv([1, 1], [1, 1]), id="force-nd"),
        _conv("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 9), check_conv([2], [1]), id="1d"),
        _conv("num_output: 2 kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 stride: 1 pad: 1",
              (1, 2, 3, 4, 3), check_conv([2, 1, 1], [1, 1, 1]), id="3d"),
        _conv("num_output: 2 kernel_size: 3", (2, 2, 4, 4), check_conv([1, 1], [0, 0]), num_top=2, bottoms=2,
              id="two-bottoms"),
        GradCase(f'type: "Convolution" convolution_param {{ num_output: 3 kernel_size: 2 axis: 2 {FILL} }}',
                 [gaussian((2, 2, 2, 4, 3))], max_checks=60, id="axis2"),
        # Many output positions per image: the per-image GEMM path.
        _conv("num_output: 2 kernel_size: 3 pad: 1", (2, 1, 17, 16), check_conv([1, 1], [1, 1]), id="per-image"),
        _conv("num_output: 4 kernel_size: 1 group: 2", (2, 2, 16, 17), check_conv([1, 1], [0, 0], group=2),
              id="per-image-1x1-group"),
    ],
    "Deconvolution": [
        _deconv("num_output: 3 kernel_size: 3", (2, 2, 3, 4), check_conv([1, 1], [0, 0], reverse=True),
                id="basic"),
        _deconv("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (2, 3, 3, 3),
                check_conv([2, 2], [1, 1], reverse=True), id="upsample"),
        _deconv("num_output: 4 kernel_size: 3 stride: 2 group: 2 dilation: 2 bias_term: false", (1, 2, 3, 3),
                check_conv([2, 2], [0, 0], [2, 2], group=2, reverse=True), id="group-dilation-nobias"),
        _deconv("num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1", (2, 2, 3, 3),
                check_conv([2, 1], [0, 1], reverse=True), id="rect"),
        _deconv("num_output: 3 kernel_size: 1", (2, 2, 3, 3), check_conv([1, 1], [0, 0], reverse=True), id="1x1"),
        _deconv("num_output: 2 kernel_size: 3 stride: 2", (2, 2, 4), check_conv([2], [0], reverse=True), id="1d"),
        _deconv("num_output: 2 kernel_size: 2 stride: 2 pad: 1", (1, 2, 2, 3, 2),
                check_conv([2, 2, 2], [1, 1, 1], reverse=True), id="3d"),
    ],
    "Im2col": [
        GradCase('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }', [gaussian((2, 2, 5, 4))],
                 check_forward=check_im2col([3, 3], [2, 2], [1, 1], [1, 1]), max_checks=60, id="2d"),
        GradCase('type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 3 dilation: 2 }', [gaussian((1, 2, 5, 6))],
                 check_forward=check_im2col([2, 3], [1, 1], [0, 0], [2, 2]), max_checks=60, id="rect-dilation"),
        GradCase('type: "Im2col" convolution_param { kernel_size: 2 stride: 1 pad: 1 }', [gaussian((2, 2, 3, 3, 2))],
                 check_forward=check_im2col([2, 2, 2], [1, 1, 1], [1, 1, 1], [1, 1, 1]), max_checks=60, id="3d"),
    ],
    "Pooling": [
        _pool("pool: MAX kernel_size: 2 stride: 2", (2, 2, 4, 5), check_pool("MAX", (2, 2), (2, 2), (0, 0)),
              id="max-ceil"),
        _pool("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 5), check_pool("MAX", (3, 3), (2, 2), (1, 1)),
              id="max-pad"),
        _pool("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2", (2, 1, 4, 6),
              check_pool("MAX", (2, 3), (1, 2), (0, 0), mask=True), num_top=2, id="max-mask"),
        _pool("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 6, 6),
              check_pool("MAX", (3, 3), (2, 2), (0, 0), ceil=False), id="max-floor"),
        _pool("pool: AVE kernel_size: 3 stride: 2", (2, 2, 6, 5), check_pool("AVE", (3, 3), (2, 2), (0, 0)),
              id="ave-ceil"),
        _pool("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 6), check_pool("AVE", (3, 3), (2, 2), (1, 1)),
              id="ave-pad"),
        _pool("pool: AVE kernel_size: 2 stride: 3 pad_h: 1 pad_w: 0", (1, 2, 7, 5),
              check_pool("AVE", (2, 2), (3, 3), (1, 0)), id="ave-pad-last-window"),
        # 2x2 / stride 2 on even sizes: the unpadded fast paths (the cases above take the general ones).
        _pool("pool: MAX kernel_size: 2 stride: 2", (2, 3, 4, 6), check_pool("MAX", (2, 2), (2, 2), (0, 0), mask=True),
              num_top=2, id="max-2x2-fast"),
        _pool("pool: AVE kernel_size: 2 stride: 2", (2, 3, 6, 4), check_pool("AVE", (2, 2), (2, 2), (0, 0)),
              id="ave-2x2-fast"),
        _pool("pool: MAX global_pooling: true", (2, 3, 3, 4), check_global("MAX"), id="global-max"),
        _pool("pool: AVE global_pooling: true", (2, 3, 3, 2), check_global("AVE"), id="global-ave"),
        GradCase('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }',
                 [uniform((1, 2, 4, 4), 0.1, 1.0)], phase=1, max_checks=60, id="stochastic-test"),
        GradCase('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }',
                 [uniform((1, 2, 4, 4), 0.1, 1.0)], step=1e-3, max_checks=60, id="stochastic-train"),
    ],
    "SPP": [
        GradCase('type: "SPP" spp_param { pyramid_height: 3 pool: MAX }', [distinct((2, 2, 7, 6))],
                 check_forward=check_spp(3, "MAX"), max_checks=60, id="max"),
        GradCase('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [gaussian((1, 2, 5, 5))],
                 check_forward=check_spp(2, "AVE"), max_checks=60, id="ave"),
        GradCase('type: "SPP" spp_param { pyramid_height: 1 }', [distinct((2, 2, 3, 4))],
                 check_forward=check_spp(1, "MAX"), max_checks=60, id="one-level"),
    ],
    "LRN": [
        GradCase('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }', [gaussian((2, 5, 2, 3))],
                 check_forward=check_lrn(3, 0.5, 0.75, 1.0, "ACROSS_CHANNELS"), max_checks=60, id="across"),
        GradCase('type: "LRN" lrn_param { local_size: 5 alpha: 1.5 beta: 0.6 k: 2 }', [gaussian((1, 3, 2, 2))],
                 check_forward=check_lrn(5, 1.5, 0.6, 2.0, "ACROSS_CHANNELS"), max_checks=60,
                 id="across-wide-window"),
        GradCase('type: "LRN" lrn_param { local_size: 3 alpha: 0.7 beta: 0.75 norm_region: WITHIN_CHANNEL }',
                 [gaussian((2, 2, 4, 5))], check_forward=check_lrn(3, 0.7, 0.75, 1.0, "WITHIN_CHANNEL"),
                 max_checks=60, id="within"),
        GradCase('type: "LRN" lrn_param { local_size: 5 alpha: 2 beta: 0.5 k: 3 norm_region: WITHIN_CHANNEL }',
                 [gaussian((1, 2, 3, 3))], check_forward=check_lrn(5, 2.0, 0.5, 3.0, "WITHIN_CHANNEL"),
                 max_checks=60, id="within-k-unused"),
    ],
    "Crop": [
        GradCase('type: "Crop" crop_param { axis: 2 offset: 1 }', [gaussian((2, 3, 5, 6)), gaussian((2, 3, 3, 4))],
                 check_bottom=[0], check_forward=check_crop(2, [1]), id="one-offset"),
        GradCase('type: "Crop" crop_param { axis: 1 offset: 0 offset: 2 offset: 1 }',
                 [gaussian((2, 3, 5, 4)), gaussian((2, 2, 2, 3))], check_bottom=[0],
                 check_forward=check_crop(1, [0, 2, 1]), id="per-axis"),
        GradCase('type: "Crop" crop_param { axis: -1 }', [gaussian((2, 3, 5)), gaussian((1, 1, 3))],
                 check_bottom=[0], check_forward=check_crop(-1, []), id="no-offset-negative-axis"),
    ],
}
