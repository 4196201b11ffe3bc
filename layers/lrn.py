"""LRN: local response normalization, as Caffe's lrn_layer.cpp.

ACROSS_CHANNELS (window of ``n = local_size`` channels centred on c)::

    scale[c] = k + alpha / n * sum_{c' = c - (n-1)/2}^{c + (n-1)/2} x[c']^2      (missing channels count 0)
    y = x * scale^-beta
    dx = dy * scale^-beta - 2 alpha beta / n * x * sum_{c' in window(c)} dy[c'] y[c'] / scale[c']

WITHIN_CHANNEL (an n x n spatial window; Caffe builds it from Split, Power,
AVE Pooling with pad (n-1)/2, Power and Eltwise layers -- the same math, done
directly here; note that ``k`` is not used, the shift is 1)::

    scale[h, w] = 1 + alpha / n^2 * sum_{window} x^2;   y = x * scale^-beta
    dx = dy * scale^-beta - 2 alpha beta / n^2 * x * sum_{window} dy y / scale

``local_size`` must be odd, as in Caffe.

Every step is per image, so with more than one thread the images are cut into
shares run at once on layers/parallel.py's team, each share the plain kernels on
its images: bitwise the one-thread numbers (AlexNet's norm1 and norm2 at batch 8
were 25 ms of a 130 ms forward on one core).
"""
import math

import numpy as np
from numba import njit

from numcaffe.layers.base import Layer, register
from numcaffe.layers.parallel import image_shares, in_shares
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2

LP = caffe_pb2.LRNParameter
#: A value's cost in the kernels below, in multiply-adds (square roots, a division; for image_shares).
VALUE_COST = 64


@njit(cache=True, nogil=True)
def channel_window_sum(src, N, C, HW, pre, coef, base, square, dst):
    """dst[n, c] = base + coef * sum over c' in [c - pre, c + pre] of src[n, c'] (squared if asked).

    A running sum over channels: add the entering channel, drop the leaving one.
    """
    for n in range(N):
        off = n * C * HW
        for q in range(HW):
            dst[off + q] = base
        for c in range(min(pre + 1, C)):
            for q in range(HW):
                v = src[off + c * HW + q]
                dst[off + q] += coef * (v * v if square else v)
        for c in range(1, C):
            cur = off + c * HW
            prev = cur - HW
            head = c + pre
            tail = c - pre - 1
            for q in range(HW):
                dst[cur + q] = dst[prev + q]
            if head < C:
                for q in range(HW):
                    v = src[off + head * HW + q]
                    dst[cur + q] += coef * (v * v if square else v)
            if tail >= 0:
                for q in range(HW):
                    v = src[off + tail * HW + q]
                    dst[cur + q] -= coef * (v * v if square else v)


@njit(cache=True, nogil=True)
def spatial_window_sum(src, planes, H, W, pre, coef, base, square, tmp, dst):
    """dst[p, h, w] = base + coef * sum over the (2 pre + 1)^2 window around (h, w) of src (squared if asked)."""
    for p in range(planes):
        off = p * H * W
        for h in range(H):           # row sums along w
            for w in range(W):
                s = 0.0
                for ww in range(max(w - pre, 0), min(w + pre + 1, W)):
                    v = src[off + h * W + ww]
                    s += v * v if square else v
                tmp[off + h * W + w] = s
        for h in range(H):           # then along h
            for w in range(W):
                s = 0.0
                for hh in range(max(h - pre, 0), min(h + pre + 1, H)):
                    s += tmp[off + hh * W + w]
                dst[off + h * W + w] = base + coef * s


@njit(cache=True, nogil=True)
def lrn_output(x, scale, beta, y):
    """y = x * scale^-beta."""
    for i in range(x.size):
        y[i] = x[i] * scale[i] ** -beta


@njit(cache=True, nogil=True)
def lrn_output_beta75(x, scale, y):
    """lrn_output for beta = 0.75 (AlexNet's, GoogLeNet's, CaffeNet's):
    scale^-0.75 = 1 / (sqrt(scale) * sqrt(sqrt(scale))), two square roots that vectorise where
    pow does not (GoogLeNet's conv2/norm2 at batch 8: 82 ms with pow)."""
    for i in range(x.size):
        r = math.sqrt(scale[i])
        y[i] = x[i] / (r * math.sqrt(r))


@njit(cache=True, nogil=True)
def lrn_ratio(dy, y, scale, ratio):
    """ratio = dy * y / scale (what the window sum of the backward pass adds up)."""
    for i in range(dy.size):
        ratio[i] = dy[i] * y[i] / scale[i]


@njit(cache=True, nogil=True)
def lrn_input_grad(dy, x, scale, accum, beta, coef, dx):
    """dx = dy * scale^-beta - coef * x * accum."""
    for i in range(dx.size):
        dx[i] = dy[i] * scale[i] ** -beta - coef * x[i] * accum[i]


@njit(cache=True, nogil=True)
def lrn_input_grad_beta75(dy, x, scale, accum, coef, dx):
    """lrn_input_grad for beta = 0.75, by square roots as lrn_output_beta75."""
    for i in range(dx.size):
        r = math.sqrt(scale[i])
        dx[i] = dy[i] / (r * math.sqrt(r)) - coef * x[i] * accum[i]


@register("LRN")
class LRNLayer(Layer):
    """Local response normalization across channels or within each channel."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = p.local_size
        if self.size % 2 != 1:
            raise ConfigError(f"{self.describe()}: local_size must be odd, got {self.size}")
        self.pre = (self.size - 1) // 2
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        self.scale = np.zeros(0, dtype=np.float32)
        self.work = np.zeros(0, dtype=np.float32)
        self.work2 = np.zeros(0, dtype=np.float32)

    def Reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.shape_error(f"input must have 4 axes (num, channels, height, width), got {b.shape}")
        if top[0] is b:
            raise self.shape_error("cannot run in place")
        top[0].reshape(b.shape)
        if self.scale.size < b.count:
            self.scale = np.zeros(b.count, dtype=np.float32)
            self.work = np.zeros(b.count, dtype=np.float32)
            self.work2 = np.zeros(b.count, dtype=np.float32)

    def _window_sum(self, src, shape, base, coef, square, dst, tmp):
        N, C, H, W = shape
        if self.region == LP.ACROSS_CHANNELS:
            channel_window_sum(src, N, C, H * W, self.pre, coef, base, square, dst)
        else:
            spatial_window_sum(src, N * C, H, W, self.pre, coef, base, square, tmp, dst)

    def _by_images(self, blob, step):
        """``step(lo, hi)`` over images lo .. hi of ``blob``: all at once, or in shares on the team."""
        in_shares(blob.shape[0], image_shares(blob.shape[0], blob.count * VALUE_COST), step)

    def _coef(self):
        n = self.size if self.region == LP.ACROSS_CHANNELS else self.size * self.size
        return self.alpha / n

    def Forward_cpu(self, bottom, top):
        b = bottom[0]
        per = b.count // max(b.shape[0], 1)
        base = self.k if self.region == LP.ACROSS_CHANNELS else 1.0

        def images(lo, hi):
            part = slice(lo * per, hi * per)
            x, scale = b.flat_data[part], self.scale[part]
            self._window_sum(x, (hi - lo, *b.shape[1:]), base, self._coef(), True, scale, self.work2[part])
            if self.beta == 0.75:
                lrn_output_beta75(x, scale, top[0].flat_data[part])
            else:
                lrn_output(x, scale, self.beta, top[0].flat_data[part])
        self._by_images(b, images)

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        b = bottom[0]
        per = b.count // max(b.shape[0], 1)
        coef = 2.0 * self.beta * self._coef()

        def images(lo, hi):
            part = slice(lo * per, hi * per)
            dy, scale, ratio = top[0].flat_diff[part], self.scale[part], self.work[part]
            lrn_ratio(dy, top[0].flat_data[part], scale, ratio)
            accum = b.flat_diff[part]  # the window sum goes straight into dx, then is combined in place
            self._window_sum(ratio, (hi - lo, *b.shape[1:]), 0.0, 1.0, False, accum, self.work2[part])
            if self.beta == 0.75:
                lrn_input_grad_beta75(dy, b.flat_data[part], scale, accum, coef, accum)
            else:
                lrn_input_grad(dy, b.flat_data[part], scale, accum, self.beta, coef, accum)
        self._by_images(b, images)
