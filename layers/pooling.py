"""Pooling and SPP (spatial pyramid pooling), as Caffe's pooling_layer.cpp / spp_layer.cpp.

Pooling windows: output ``(ph, pw)`` covers rows ``ph * stride_h - pad_h`` up to
``+ kernel_h`` (and likewise columns).  Output size is Caffe's::

    pooled = ceil((H + 2 pad - kernel) / stride) + 1      (round_mode CEIL, the default; FLOOR floors)
    if (pad_h or pad_w) and (pooled - 1) * stride >= H + pad:  pooled -= 1
                                        (the last window starts inside; both axes once either is padded)

* MAX: the largest value in the window clipped to the image; the first maximum
  (in row-major order) wins ties, and the gradient goes to it alone.  A second
  top receives that argmax as a flat index ``h * W + w`` (float).
* AVE: the sum over the window clipped to the image, divided by the window size
  clipped to the *padded* image, ``(min(hstart + k, H + pad) - hstart) * (...)``
  with the unclipped start -- so padding counts as zeros except past the far
  padded edge.  The gradient spreads back with the same divisor.
* STOCHASTIC (no padding): in TRAIN, pick one element of the window with
  probability proportional to its (non-negative) value; the gradient goes to it.
  In TEST, the probability-weighted average ``sum x^2 / sum x``, whose backward
  here is that formula's derivative (Caffe defines none for TEST).
"""
import math

import numpy as np
from numba import njit, prange

from numcaffe.layers.base import Layer, register
from numcaffe.layers.parallel import parts, share
from numcaffe.layers.geometry import output_range, pool_window, pooled_size
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2

PP = caffe_pb2.PoolingParameter
NEG_FLT_MAX = np.float32(-np.finfo(np.float32).max)  # Caffe's initial maximum, float32 so compares stay float32


# Kernels.  The 2x2 / stride 2 unpadded case (LeNet's, VGG's pools) has straight-line
# fast paths whose inner loop runs over one output row and vectorises; elsewhere MAX
# and AVE forward loop over each window clipped to the image, and AVE backward runs
# row by row: for one output row, each window tap (i, j) is one pass over the outputs
# whose tap lands inside the image (output_range), at stride sw in the input row.
# Slices keep the indices non-negative loop counters, which is what lets LLVM
# vectorise.  Windows are read in row-major order, so MAX's first maximum and AVE's
# summation order are Caffe's.

@njit(cache=True, nogil=True)
def _tap_ranges(Wo, sw, pw, kw, W):
    """(lo[j], hi[j]): the outputs ow whose column tap j falls inside the image."""
    lo = np.empty(kw, np.int64)
    hi = np.empty(kw, np.int64)
    for j in range(kw):
        lo[j], hi[j] = output_range(Wo, sw, j - pw, W)
    return lo, hi


@njit(cache=True, nogil=True)
def _window_columns(Wo, sw, pw, kw, W):
    """[ws[ow], we[ow]): the columns of window ow clipped to the image."""
    ws = np.empty(Wo, np.int64)
    we = np.empty(Wo, np.int64)
    for ow in range(Wo):
        ws[ow] = max(ow * sw - pw, 0)
        we[ow] = min(ow * sw - pw + kw, W)
    return ws, we


@njit(cache=True, nogil=True)
def _max_pool_2x2(x, planes, H, W, Ho, Wo, y, mask):
    """MAX 2x2 / stride 2 without padding on even H, W: each window is (a b / c d)."""
    for pl in range(planes):
        for oh in range(Ho):
            top = x[pl * H * W + 2 * oh * W:]
            bot = top[W:]
            o = (pl * Ho + oh) * Wo
            yr = y[o:o + Wo]
            mr = mask[o:o + Wo]
            first = 2 * oh * W
            for ow in range(Wo):
                a, b, c, d = top[2 * ow], top[2 * ow + 1], bot[2 * ow], bot[2 * ow + 1]
                k = first + 2 * ow
                up = a > NEG_FLT_MAX                # first max of the top pair (or none) ...
                m1 = a if up else NEG_FLT_MAX
                i1 = k if up else -1
                up = b > m1
                m1 = b if up else m1
                i1 = k + 1 if up else i1
                up = c > NEG_FLT_MAX                # ... of the bottom pair ...
                m2 = c if up else NEG_FLT_MAX
                i2 = k + W if up else -1
                up = d > m2
                m2 = d if up else m2
                i2 = k + W + 1 if up else i2
                up = m2 > m1                        # ... and the bottom wins only if larger
                yr[ow] = m2 if up else m1
                mr[ow] = i2 if up else i1


@njit(cache=True, nogil=True)
def max_pool_forward(x, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, mask):
    """y = max over the window clipped to the image; mask = flat index (h * W + w) of the first max."""
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and H == 2 * Ho and W == 2 * Wo:
        _max_pool_2x2(x, planes, H, W, Ho, Wo, y, mask)
        return
    ws, we = _window_columns(Wo, sw, pw, kw, W)
    for pl in range(planes):
        src = pl * H * W
        dst = pl * Ho * Wo
        for oh in range(Ho):
            hs = oh * sh - ph
            he = min(hs + kh, H)
            hs = max(hs, 0)
            for ow in range(Wo):
                best = NEG_FLT_MAX
                arg = -1
                for h in range(hs, he):
                    row = h * W
                    for w in range(ws[ow], we[ow]):
                        v = x[src + row + w]
                        better = v > best           # strict: the first maximum wins ties
                        best = v if better else best
                        arg = row + w if better else arg
                y[dst + oh * Wo + ow] = best
                mask[dst + oh * Wo + ow] = arg


@njit(cache=True)
def max_pool_backward(dy, mask, planes, HW, HoWo, dx):
    """dx = 0, then dx[argmax] += dy for every window."""
    for pl in range(planes):
        src = pl * HoWo
        dst = pl * HW
        for k in range(HW):
            dx[dst + k] = 0.0
        for k in range(HoWo):
            a = mask[src + k]
            if a >= 0:
                dx[dst + a] += dy[src + k]


@njit(cache=True, nogil=True)
def _ave_divisors(Wo, sw, pw, kw, W):
    """Column factor of each output's AVE divisor: its window clipped to the padded image."""
    div = np.empty(Wo, np.int64)
    for ow in range(Wo):
        start = ow * sw - pw
        div[ow] = min(start + kw, W + pw) - start
    return div


@njit(cache=True, nogil=True)
def _ave_pool_2x2(x, planes, H, W, Ho, Wo, y):
    """AVE 2x2 / stride 2 without padding on even H, W: ((a + b) + c) + d over 4, Caffe's order."""
    for pl in range(planes):
        for oh in range(Ho):
            top = x[pl * H * W + 2 * oh * W:]
            bot = top[W:]
            o = (pl * Ho + oh) * Wo
            yr = y[o:o + Wo]
            for ow in range(Wo):
                s = np.float32(0.0) + top[2 * ow]
                yr[ow] = (((s + top[2 * ow + 1]) + bot[2 * ow]) + bot[2 * ow + 1]) / np.float32(4.0)


@njit(cache=True, nogil=True)
def ave_pool_forward(x, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y):
    """y = sum over the window clipped to the image / window size clipped to the padded image."""
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and H == 2 * Ho and W == 2 * Wo:
        _ave_pool_2x2(x, planes, H, W, Ho, Wo, y)
        return
    ws, we = _window_columns(Wo, sw, pw, kw, W)
    wdiv = _ave_divisors(Wo, sw, pw, kw, W)
    for pl in range(planes):
        src = pl * H * W
        dst = pl * Ho * Wo
        for oh in range(Ho):
            hs = oh * sh - ph
            hsize = min(hs + kh, H + ph) - hs
            he = min(hs + kh, H)
            hs = max(hs, 0)
            for ow in range(Wo):
                s = np.float32(0.0)
                for h in range(hs, he):
                    for w in range(ws[ow], we[ow]):
                        s += x[src + h * W + w]
                y[dst + oh * Wo + ow] = s / np.float32(hsize * wdiv[ow])


@njit(cache=True, nogil=True)
def ave_pool_backward(dy, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, dx):
    """dx = sum over the windows holding each input of dy / window size."""
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and H == 2 * Ho and W == 2 * Wo:
        for pl in range(planes):          # windows tile the image: every input gets one dy / 4
            for oh in range(Ho):
                top = dx[pl * H * W + 2 * oh * W:]
                bot = top[W:]
                o = (pl * Ho + oh) * Wo
                gr = dy[o:o + Wo]
                for ow in range(Wo):
                    g = gr[ow] / np.float32(4.0)
                    top[2 * ow] = g
                    top[2 * ow + 1] = g
                    bot[2 * ow] = g
                    bot[2 * ow + 1] = g
        return
    lo, hi = _tap_ranges(Wo, sw, pw, kw, W)
    wdiv = _ave_divisors(Wo, sw, pw, kw, W)
    g = np.empty(Wo, np.float32)
    dx[:planes * H * W] = 0.0
    for pl in range(planes):
        dp = dx[pl * H * W:(pl + 1) * H * W]
        for oh in range(Ho):
            o = (pl * Ho + oh) * Wo
            hs = oh * sh - ph
            hsize = min(hs + kh, H + ph) - hs
            for ow in range(Wo):
                g[ow] = dy[o + ow] / np.float32(hsize * wdiv[ow])
            for i in range(kh):
                h = hs + i
                if h < 0 or h >= H:
                    continue
                for j in range(kw):
                    a, b = lo[j], hi[j]
                    dst = dp[h * W + a * sw + j - pw:]
                    gg = g[a:b]
                    for t in range(b - a):
                        dst[t * sw] += gg[t]


# -- parallel twins: each thread runs the plain kernel on its share of the planes (layers/parallel.py),
#    so the numbers are bitwise the plain kernel's (masks are plane-relative indices).

@njit(cache=True, parallel=True)
def max_pool_forward_parallel(x, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, mask, shares):
    for t in prange(shares):
        lo, hi = share(planes, t, shares)
        max_pool_forward(x[lo * H * W:hi * H * W], hi - lo, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo,
                         y[lo * Ho * Wo:hi * Ho * Wo], mask[lo * Ho * Wo:hi * Ho * Wo])


@njit(cache=True, parallel=True)
def max_pool_backward_parallel(dy, mask, planes, HW, HoWo, dx, shares):
    for t in prange(shares):
        lo, hi = share(planes, t, shares)
        max_pool_backward(dy[lo * HoWo:hi * HoWo], mask[lo * HoWo:hi * HoWo], hi - lo, HW, HoWo,
                          dx[lo * HW:hi * HW])


@njit(cache=True, parallel=True)
def ave_pool_forward_parallel(x, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, y, shares):
    for t in prange(shares):
        lo, hi = share(planes, t, shares)
        ave_pool_forward(x[lo * H * W:hi * H * W], hi - lo, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo,
                         y[lo * Ho * Wo:hi * Ho * Wo])


@njit(cache=True, parallel=True)
def ave_pool_backward_parallel(dy, planes, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, dx, shares):
    for t in prange(shares):
        lo, hi = share(planes, t, shares)
        ave_pool_backward(dy[lo * Ho * Wo:hi * Ho * Wo], hi - lo, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo,
                          dx[lo * H * W:hi * H * W])


@njit(inline="always")
def _window_sums(x, src, W, hs, he, ws, we):
    """(sum x, sum x^2) over rows [hs, he) and columns [ws, we) of the plane at x[src:]."""
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    for h in range(hs, he):
        for w in range(ws, we):
            v = x[src + h * W + w]
            s1 += v
            s2 += v * v
    return s1, s2


@njit(cache=True)
def stochastic_pool_train(x, planes, H, W, kh, kw, sh, sw, Ho, Wo, u, y, mask):
    """Sample one element per window with probability x / sum(x), using the uniform draws u."""
    for pl in range(planes):
        src = pl * H * W
        dst = pl * Ho * Wo
        for oh in range(Ho):
            hs = oh * sh
            he = min(hs + kh, H)
            for ow in range(Wo):
                ws = ow * sw
                we = min(ws + kw, W)
                total = _window_sums(x, src, W, hs, he, ws, we)[0]
                thres = u[dst + oh * Wo + ow] * total
                cum = np.float32(0.0)
                arg = (he - 1) * W + we - 1
                found = False
                for h in range(hs, he):
                    for w in range(ws, we):
                        cum += x[src + h * W + w]
                        if cum >= thres:
                            arg = h * W + w
                            found = True
                            break
                    if found:
                        break
                y[dst + oh * Wo + ow] = x[src + arg]
                mask[dst + oh * Wo + ow] = arg


@njit(cache=True)
def stochastic_pool_test(x, planes, H, W, kh, kw, sh, sw, Ho, Wo, y):
    """y = sum x^2 / sum x over the window (0 when the sum is not positive)."""
    for pl in range(planes):
        src = pl * H * W
        dst = pl * Ho * Wo
        for oh in range(Ho):
            hs = oh * sh
            he = min(hs + kh, H)
            for ow in range(Wo):
                ws = ow * sw
                we = min(ws + kw, W)
                s1, s2 = _window_sums(x, src, W, hs, he, ws, we)
                y[dst + oh * Wo + ow] = s2 / s1 if s1 > 0 else 0.0


@njit(cache=True)
def stochastic_pool_test_backward(x, y, dy, planes, H, W, kh, kw, sh, sw, Ho, Wo, dx):
    """d(sum x^2 / sum x)/dx_i = (2 x_i - y) / sum x."""
    for k in range(planes * H * W):
        dx[k] = 0.0
    for pl in range(planes):
        src = pl * H * W
        dst = pl * Ho * Wo
        for oh in range(Ho):
            hs = oh * sh
            he = min(hs + kh, H)
            for ow in range(Wo):
                ws = ow * sw
                we = min(ws + kw, W)
                s1 = _window_sums(x, src, W, hs, he, ws, we)[0]
                if s1 <= 0:
                    continue
                o = dst + oh * Wo + ow
                for h in range(hs, he):
                    for w in range(ws, we):
                        dx[src + h * W + w] += dy[o] * (2 * x[src + h * W + w] - y[o]) / s1


@register("Pooling")
class PoolingLayer(Layer):
    """MAX / AVE / STOCHASTIC pooling over (N, C, H, W); optional second top = MAX's argmax mask."""

    exact_num_bottom = 1
    min_num_top = 1
    max_num_top = 2

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.pooling_param
        where = self.describe()
        self.method = p.pool
        self.global_pooling = p.global_pooling
        kernel, (self.sh, self.sw), (self.ph, self.pw) = pool_window(self, p)
        if kernel is not None:
            self.kh, self.kw = kernel
        if self.ph or self.pw:
            if self.method not in (PP.MAX, PP.AVE):
                raise ConfigError(f"{where}: padding is implemented only for MAX and AVE pooling")
            if not self.global_pooling and (self.ph >= self.kh or self.pw >= self.kw):
                raise ConfigError(f"{where}: pad ({self.ph}, {self.pw}) must be smaller than the kernel "
                                  f"({self.kh}, {self.kw})")
        if len(top) > 1 and self.method != PP.MAX:
            raise ConfigError(f"{where}: only MAX pooling has a second (mask) top")
        self.ceil_mode = p.round_mode == PP.CEIL
        if self.method == PP.STOCHASTIC:
            self.random  # create the generator now, so get_state() carries it from the start
        self.mask = np.zeros(0, dtype=np.int32)

    def Reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.shape_error(f"input must have 4 axes (num, channels, height, width), got {b.shape}")
        N, C, H, W = b.shape
        if self.global_pooling:
            self.kh, self.kw = H, W
        padded = bool(self.ph or self.pw)
        self.Ho = pooled_size(H, self.kh, self.sh, self.ph, self.ceil_mode, padded)
        self.Wo = pooled_size(W, self.kw, self.sw, self.pw, self.ceil_mode, padded)
        if self.Ho <= 0 or self.Wo <= 0:
            raise self.shape_error(f"a {self.kh}x{self.kw} window does not fit input {H}x{W} "
                                   f"(pad {self.ph}x{self.pw})")
        top[0].reshape((N, C, self.Ho, self.Wo))
        if len(top) > 1:
            top[1].reshape((N, C, self.Ho, self.Wo))
        if self.mask.size < top[0].count:
            self.mask = np.zeros(top[0].count, dtype=np.int32)

    def _geometry(self, b):
        N, C, H, W = b.shape
        return N * C, H, W

    def Forward_cpu(self, bottom, top):
        planes, H, W = self._geometry(bottom[0])
        x, y = bottom[0].flat_data, top[0].flat_data
        mask = self.mask[:top[0].count]
        window = (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.Ho, self.Wo)
        shares = min(parts(x.size), planes)
        if self.method == PP.MAX:
            if shares > 1:
                max_pool_forward_parallel(x, planes, H, W, *window, y, mask, shares)
            else:
                max_pool_forward(x, planes, H, W, *window, y, mask)
            if len(top) > 1:
                top[1].flat_data[...] = mask
        elif self.method == PP.AVE:
            if shares > 1:
                ave_pool_forward_parallel(x, planes, H, W, *window, y, shares)
            else:
                ave_pool_forward(x, planes, H, W, *window, y)
        elif self.phase == caffe_pb2.TRAIN:
            u = self.random.random(top[0].count, dtype=np.float32)
            stochastic_pool_train(x, planes, H, W, self.kh, self.kw, self.sh, self.sw, self.Ho, self.Wo,
                                  u, y, mask)
        else:
            stochastic_pool_test(x, planes, H, W, self.kh, self.kw, self.sh, self.sw, self.Ho, self.Wo, y)

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        planes, H, W = self._geometry(bottom[0])
        dy, dx = top[0].flat_diff, bottom[0].flat_diff
        mask = self.mask[:top[0].count]
        shares = min(parts(dx.size), planes)
        if self.method == PP.MAX or (self.method == PP.STOCHASTIC and self.phase == caffe_pb2.TRAIN):
            if len(top) > 1:
                mask[...] = top[1].flat_data  # Caffe routes by the mask top's values
            if shares > 1:
                max_pool_backward_parallel(dy, mask, planes, H * W, self.Ho * self.Wo, dx, shares)
            else:
                max_pool_backward(dy, mask, planes, H * W, self.Ho * self.Wo, dx)
        elif self.method == PP.AVE:
            window = (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.Ho, self.Wo)
            if shares > 1:
                ave_pool_backward_parallel(dy, planes, H, W, *window, dx, shares)
            else:
                ave_pool_backward(dy, planes, H, W, *window, dx)
        else:
            stochastic_pool_test_backward(bottom[0].flat_data, top[0].flat_data, dy, planes, H, W,
                                          self.kh, self.kw, self.sh, self.sw, self.Ho, self.Wo, dx)


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins; the levels are flattened and joined.

    Level l uses kernel ``ceil(H / 2^l)``, stride = kernel and pad
    ``(kernel * 2^l - H + 1) // 2`` (likewise for W), as Caffe's SPP builds its
    Pooling layers.  With pyramid_height 1 the top is that one Pooling's 4-D
    output; otherwise ``(N, C * sum_l bins_l)`` in level order.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.spp_param
        if p.pyramid_height < 1:
            raise ConfigError(f"{self.describe()}: pyramid_height must be at least 1")
        self.height = p.pyramid_height
        self.pool = p.pool
        self._key = None
        self._acc = np.zeros(0, dtype=np.float32)

    def _pooling_param(self, level, H, W):
        bins = 2 ** level
        lp = caffe_pb2.LayerParameter(name=f"{self.name}/level{level}", type="Pooling",
                                      phase=self.phase)
        pp = lp.pooling_param
        kh, kw = math.ceil(H / bins), math.ceil(W / bins)
        pp.pad_h, pp.pad_w = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        pp.kernel_h, pp.kernel_w = kh, kw
        pp.stride_h, pp.stride_w = kh, kw
        pp.pool = self.pool
        return lp

    def Reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.shape_error(f"input must have 4 axes (num, channels, height, width), got {b.shape}")
        N, C, H, W = b.shape
        if H <= 0 or W <= 0:
            raise self.shape_error(f"input dimensions cannot be zero, got {b.shape}")
        if self._key != b.shape:
            self._key = b.shape
            self.levels = []
            for level in range(self.height):
                layer = PoolingLayer(self._pooling_param(level, H, W))
                layer.rng = self.random
                out = top[0] if self.height == 1 else Blob()
                try:
                    layer.SetUp([b], [out])
                except ConfigError as e:
                    raise self.shape_error(f"input {H}x{W} is too small for pyramid level {level} "
                                           f"({e})") from None
                self.levels.append((layer, out))
        for layer, out in self.levels:
            layer.Reshape([b], [out])
        if self.height > 1:
            top[0].reshape((N, sum(out.count_range(1) for _, out in self.levels)))
            if self._acc.size < b.count:
                self._acc = np.zeros(b.count, dtype=np.float32)

    def Forward_cpu(self, bottom, top):
        if self.height == 1:
            self.levels[0][0].Forward_cpu(bottom, top)
            return
        y = top[0].data
        col = 0
        for layer, out in self.levels:
            layer.Forward_cpu(bottom, [out])
            width = out.count_range(1)
            y[:, col:col + width] = out.data.reshape(out.shape[0], width)
            col += width

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.height == 1:
            self.levels[0][0].Backward_cpu(top, propagate_down, bottom)
            return
        dy = top[0].diff
        dx = bottom[0].flat_diff
        acc = self._acc[:dx.size]
        col = 0
        for i, (layer, out) in enumerate(self.levels):
            width = out.count_range(1)
            out.diff[...] = dy[:, col:col + width].reshape(out.shape)
            col += width
            layer.Backward_cpu([out], propagate_down, bottom)
            if i == 0:
                acc[...] = dx
            else:
                acc += dx
        dx[...] = acc
