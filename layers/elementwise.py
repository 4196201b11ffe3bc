"""Elementwise and broadcast arithmetic: Eltwise, Scale, Bias, and Maxout.

* Eltwise combines bottoms of one shape: PROD (y = prod_i x_i), SUM
  (y = sum_i c_i x_i) or MAX (y = max_i x_i, the winner remembered per element);
  coefficients are refused with PROD and ignored by MAX, as in Caffe.
* Scale and Bias multiply / add a blob ``s`` of shape bottom.shape[axis:axis+k]
  broadcast over the other axes.  View the bottom as (outer, dim, inner) with
  dim = s.count:  y[o, d, i] = x[o, d, i] * s[d]  (Scale, optionally + b[d])  or
  x[o, d, i] + b[d]  (Bias).  ``s`` is a learned parameter (one bottom) or the
  second bottom.
* Maxout (numcaffe extension, ``maxout_param { num_pieces: k }``): the
  channels of an N x C x ... input fall into C/k groups of k consecutive
  channels; output channel c is the max over input channels c*k .. c*k+k-1, and
  the gradient goes to the winner.
"""
import numpy as np
from numba import njit, prange

from numcaffe.layers.base import Layer, register
from numcaffe.layers.parallel import parts, share
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.filler import fill
from numcaffe.net.proto import caffe_pb2

PROD = caffe_pb2.EltwiseParameter.PROD
SUM = caffe_pb2.EltwiseParameter.SUM
MAX = caffe_pb2.EltwiseParameter.MAX


# -- Eltwise kernels ------------------------------------------------------------
@njit(cache=True)
def mul_into(a, b, y):
    """y = a * b, elementwise (y may be a or b)."""
    for i in range(y.size):
        y[i] = a[i] * b[i]


@njit(cache=True)
def axpy(alpha, x, y):
    """y += alpha * x."""
    for i in range(y.size):
        y[i] += alpha * x[i]


@njit(cache=True)
def scale_into(alpha, x, y):
    """y = alpha * x (y may be x)."""
    for i in range(y.size):
        y[i] = alpha * x[i]


@njit(cache=True)
def add_into(dst, src):
    """dst += src, elementwise."""
    for i in range(dst.size):
        dst[i] += src[i]


@njit(cache=True)
def weighted_sum2(ca, a, cb, b, y):
    """y = ca * a + cb * b in one pass (Eltwise SUM of two bottoms, Split's backward with two tops).

    Rounded as axpy twice onto zeros is: the first term to float32, then the sum; so the
    same numbers as the plain passes, with one write of y instead of three."""
    for i in range(y.size):
        first = np.float32(ca * a[i])
        y[i] = first + cb * b[i]


@njit(cache=True, parallel=True)
def weighted_sum2_parallel(ca, a, cb, b, y, shares):
    """weighted_sum2 on ``shares`` equal shares of y, one per thread (layers/parallel.py): bitwise the same."""
    for t in prange(shares):
        lo, hi = share(y.size, t, shares)
        weighted_sum2(ca, a[lo:hi], cb, b[lo:hi], y[lo:hi])


@njit(cache=True, parallel=True)
def axpy_parallel(alpha, x, y, shares):
    """axpy on ``shares`` equal shares of y: bitwise the same."""
    for t in prange(shares):
        lo, hi = share(y.size, t, shares)
        axpy(alpha, x[lo:hi], y[lo:hi])


@njit(cache=True, parallel=True)
def scale_into_parallel(alpha, x, y, shares):
    """scale_into on ``shares`` equal shares of y: bitwise the same."""
    for t in prange(shares):
        lo, hi = share(y.size, t, shares)
        scale_into(alpha, x[lo:hi], y[lo:hi])


@njit(cache=True)
def div_mul(y, x, dy, dx):
    """dx = y / x * dy  (the product of the other bottoms, recovered by division)."""
    for i in range(dx.size):
        dx[i] = y[i] / x[i] * dy[i]


@njit(cache=True)
def max_first_two(a, b, y, mask):
    """y = max(a, b); mask = 0 where a wins strictly, else 1 (ties go to b, as in Caffe)."""
    for i in range(y.size):
        if a[i] > b[i]:
            y[i] = a[i]
            mask[i] = 0
        else:
            y[i] = b[i]
            mask[i] = 1


@njit(cache=True)
def max_update(x, k, y, mask):
    """y = max(y, x); mask = k where x wins strictly."""
    for i in range(y.size):
        if x[i] > y[i]:
            y[i] = x[i]
            mask[i] = k


@njit(cache=True)
def max_backward(dy, mask, k, dx):
    """dx = dy where bottom k won, else 0."""
    for i in range(dx.size):
        dx[i] = dy[i] if mask[i] == k else 0.0


@register("Eltwise")
class EltwiseLayer(Layer):
    """y = prod_i x_i | sum_i c_i x_i | max_i x_i (see module doc).

    dx_k = dy * prod_{i != k} x_i  (stable_prod_grad) or dy * y / x_k;
    dx_k = c_k dy;  dx_k = dy where x_k was the max, else 0.
    """

    min_num_bottom = 2
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.op = p.operation
        if len(p.coeff) not in (0, len(bottom)):
            raise ConfigError(f"{self.describe()}: eltwise_param.coeff must be given once per bottom "
                              f"({len(bottom)} bottoms, {len(p.coeff)} coefficients)")
        if self.op == PROD and len(p.coeff):
            # As Caffe: coefficients are refused for PROD, accepted (and unused) for MAX.
            raise ConfigError(f"{self.describe()}: eltwise_param.coeff is not allowed with operation PROD "
                              f"(coefficients apply to SUM only)")
        self.coeffs = [float(c) for c in p.coeff] if len(p.coeff) else [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.mask = np.zeros(0, dtype=np.int32)

    def Reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.shape_error(f"all bottoms must have one shape; bottom 0 is {bottom[0].shape}, "
                                       f"bottom {i} is {b.shape}")
        if any(top[0] is b for b in bottom):
            raise self.shape_error("an Eltwise layer cannot run in place")
        top[0].reshape(bottom[0].shape)
        if self.op == MAX and self.mask.size < top[0].count:
            self.mask = np.zeros(top[0].count, dtype=np.int32)

    def Forward_cpu(self, bottom, top):
        y = top[0].flat_data
        if self.op == PROD:
            mul_into(bottom[0].flat_data, bottom[1].flat_data, y)
            for b in bottom[2:]:
                mul_into(y, b.flat_data, y)
        elif self.op == SUM and len(bottom) == 2:
            k = parts(y.size)
            if k > 1:
                weighted_sum2_parallel(self.coeffs[0], bottom[0].flat_data, self.coeffs[1], bottom[1].flat_data,
                                       y, k)
            else:
                weighted_sum2(self.coeffs[0], bottom[0].flat_data, self.coeffs[1], bottom[1].flat_data, y)
        elif self.op == SUM:
            y[...] = 0.0
            for c, b in zip(self.coeffs, bottom):
                axpy(c, b.flat_data, y)
        else:
            mask = self.mask[: y.size]
            max_first_two(bottom[0].flat_data, bottom[1].flat_data, y, mask)
            for k, b in enumerate(bottom[2:], 2):
                max_update(b.flat_data, k, y, mask)

    def Backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].flat_diff
        for k, b in enumerate(bottom):
            if not propagate_down[k]:
                continue
            dx = b.flat_diff
            if self.op == PROD:
                if self.stable_prod_grad:
                    others = [o for i, o in enumerate(bottom) if i != k]
                    mul_into(others[0].flat_data, dy, dx)
                    for o in others[1:]:
                        mul_into(dx, o.flat_data, dx)
                else:
                    div_mul(top[0].flat_data, b.flat_data, dy, dx)
            elif self.op == SUM:
                shares = parts(dx.size)
                if shares > 1:
                    scale_into_parallel(self.coeffs[k], dy, dx, shares)
                else:
                    scale_into(self.coeffs[k], dy, dx)
            else:
                max_backward(dy, self.mask[: dy.size], k, dx)


# -- Scale / Bias kernels ------------------------------------------------------------
@njit(cache=True)
def broadcast_scale_bias(x, s, b, outer, dim, inner, y):
    """y[o, d, i] = x[o, d, i] * s[d] + b[d]  (Scale with its bias, in one pass)."""
    for o in range(outer):
        for d in range(dim):
            base = (o * dim + d) * inner
            f = s[d]
            g = b[d]
            for i in range(inner):
                y[base + i] = x[base + i] * f + g


@njit(cache=True, parallel=True)
def broadcast_scale_bias_parallel(x, s, b, outer, dim, inner, y, shares):
    """broadcast_scale_bias on ``shares`` shares of the outer axis, one per thread: bitwise the same.
    (By (o, d) plane under prange it measured 1.7x slower than serial on ResNet's Scales.)"""
    size = dim * inner
    for t in prange(shares):
        lo, hi = share(outer, t, shares)
        broadcast_scale_bias(x[lo * size:hi * size], s, b, hi - lo, dim, inner, y[lo * size:hi * size])


@njit(cache=True)
def broadcast_scale(y, s, outer, dim, inner):
    """y[o, d, i] *= s[d], in place: one array, so the loop vectorises (layers/neuron.py)."""
    for o in range(outer):
        for d in range(dim):
            base = (o * dim + d) * inner
            f = s[d]
            for i in range(inner):
                y[base + i] = y[base + i] * f


@njit(cache=True, parallel=True)
def broadcast_scale_parallel(y, s, outer, dim, inner, shares):
    """broadcast_scale on ``shares`` shares of the outer axis: bitwise the same."""
    size = dim * inner
    for t in prange(shares):
        lo, hi = share(outer, t, shares)
        broadcast_scale(y[lo * size:hi * size], s, hi - lo, dim, inner)


@njit(cache=True)
def broadcast_add(y, b, outer, dim, inner):
    """y[o, d, i] += b[d], in place."""
    for o in range(outer):
        for d in range(dim):
            base = (o * dim + d) * inner
            f = b[d]
            for i in range(inner):
                y[base + i] = y[base + i] + f


@njit(cache=True)
def reduce_product(dy, x, outer, dim, inner, ds, accumulate):
    """ds[d] (+)= sum_{o,i} dy[o, d, i] * x[o, d, i]  (the scale gradient)."""
    for d in range(dim):
        acc = 0.0
        for o in range(outer):
            base = (o * dim + d) * inner
            for i in range(inner):
                acc += dy[base + i] * x[base + i]
        if accumulate:
            ds[d] += acc
        else:
            ds[d] = acc


@njit(cache=True)
def reduce_sum(dy, outer, dim, inner, db, accumulate):
    """db[d] (+)= sum_{o,i} dy[o, d, i]  (the bias gradient)."""
    for d in range(dim):
        acc = 0.0
        for o in range(outer):
            base = (o * dim + d) * inner
            for i in range(inner):
                acc += dy[base + i]
        if accumulate:
            db[d] += acc
        else:
            db[d] = acc


#: Partial sums per channel in reduce_product_and_sum: independent chains the loop runs side by side.
LANES = 8


@njit(inline="always")
def _product_and_sum(dy, x, outer, dim, inner, d, ps, pb, ds, db):
    body = inner - inner % LANES
    ps[:] = 0.0
    pb[:] = 0.0
    for o in range(outer):
        base = (o * dim + d) * inner
        for i in range(base, base + body, LANES):
            for k in range(LANES):
                g = dy[i + k]
                ps[k] += g * x[i + k]
                pb[k] += g
        for i in range(base + body, base + inner):
            ps[0] += dy[i] * x[i]
            pb[0] += dy[i]
    ds[d] = ps.sum()
    db[d] = pb.sum()


@njit(cache=True)
def reduce_product_and_sum(dy, x, outer, dim, inner, ds, db):
    """ds[d] = sum_{o,i} dy * x and db[d] = sum_{o,i} dy, in one pass over dy and x.

    reduce_product and reduce_sum with LANES partial sums per channel: one running
    sum is a chain of dependent adds (one element per add latency); LANES of them
    vectorise.  The same sums in another order: equal to float tolerance.
    """
    ps = np.zeros(LANES)
    pb = np.zeros(LANES)
    for d in range(dim):
        _product_and_sum(dy, x, outer, dim, inner, d, ps, pb, ds, db)


@njit(cache=True, parallel=True)
def reduce_product_and_sum_parallel(dy, x, outer, dim, inner, ds, db):
    """reduce_product_and_sum with the channels shared among the threads, each its own partial
    sums: bitwise the same."""
    for d in prange(dim):
        ps = np.zeros(LANES)
        pb = np.zeros(LANES)
        _product_and_sum(dy, x, outer, dim, inner, d, ps, pb, ds, db)


def _broadcast_shape(layer, x_shape, axis, num_axes, what):
    """The shape of a learned scale/bias: x_shape[axis : axis+num_axes] (num_axes -1: to the end)."""
    if num_axes < -1:
        raise ConfigError(f"{layer.describe()}: {what}.num_axes must be non-negative, or -1 to extend "
                          f"to the end of bottom[0] (got {num_axes})")
    if num_axes >= 0 and len(x_shape) < axis + num_axes:
        raise layer.shape_error(f"the {what.split('_')[0]} blob's shape extends past bottom[0]'s shape "
                                f"{x_shape} when applied from axis {axis} over {num_axes} axes")
    return tuple(x_shape[axis:]) if num_axes == -1 else tuple(x_shape[axis:axis + num_axes])


def _broadcast_dims(layer, x, s, axis_param, what):
    """(outer, dim, inner) for applying blob s to x from axis_param on; checks the shapes."""
    axis = 0 if s.num_axes == 0 else x.canonical_axis(axis_param)
    if x.num_axes < axis + s.num_axes or x.shape[axis:axis + s.num_axes] != s.shape:
        raise layer.shape_error(f"the {what} of shape {s.shape} does not match bottom[0]'s shape {x.shape} "
                                f"from axis {axis} on")
    return x.count_range(0, axis), s.count, x.count_range(axis + s.num_axes)


@register("Scale")
class ScaleLayer(Layer):
    """y = x * s (+ b), s and b broadcast (see module doc).

    ds = sum over the broadcast axes of dy * x;  db = sum of dy;  dx = dy * s.
    """

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.scale_param
        self.bias_term = p.bias_term
        learned = len(bottom) == 1
        if learned and not self.blobs:
            axis = bottom[0].canonical_axis(p.axis)
            s = Blob(_broadcast_shape(self, bottom[0].shape, axis, p.num_axes, "scale_param"))
            if p.HasField("filler"):
                fill(s, p.filler, self.random)
            else:
                s.data[...] = 1.0   # identity by default
            self.blobs.append(s)
        if self.bias_term and len(self.blobs) == int(learned):
            # No bias preloaded: create it, shaped like the scale (as Caffe's inner Bias layer).
            if learned:
                shape = self.blobs[0].shape
            else:
                axis = 0 if bottom[1].num_axes == 0 else bottom[0].canonical_axis(p.axis)
                shape = _broadcast_shape(self, bottom[0].shape, axis, bottom[1].num_axes, "scale_param")
            b = Blob(shape)
            fill(b, p.bias_filler, self.random)
            self.blobs.append(b)
        expected = int(learned) + int(self.bias_term)
        if len(self.blobs) != expected:
            raise ConfigError(f"{self.describe()}: expected {expected} parameter blob(s) "
                              f"({'learned scale' if learned else 'scale from bottom[1]'}"
                              f"{', bias' if self.bias_term else ''}), got {len(self.blobs)}")
        self._x_copy = np.zeros(0, dtype=np.float32)
        self._sums = np.zeros(0)

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def Reshape(self, bottom, top):
        axis_param = self.layer_param.scale_param.axis
        self.outer, self.dim, self.inner = _broadcast_dims(self, bottom[0], self._scale(bottom), axis_param,
                                                           "scale")
        if self.bias_term:
            b = self.blobs[-1]
            if b.count != self.dim:
                raise self.shape_error(f"the bias of shape {b.shape} does not match the scale's "
                                       f"{self._scale(bottom).shape}")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def Forward_cpu(self, bottom, top):
        x = bottom[0].flat_data
        if top[0] is bottom[0] and self.backward_wanted:
            # In place: keep x for the scale gradient (inference has no use for it, nor the memory).
            if self._x_copy.size < x.size:
                self._x_copy = np.empty(x.size, dtype=np.float32)
            self._x_copy[: x.size] = x
            x = self._x_copy[: x.size]
        y = top[0].flat_data
        shares = min(parts(y.size), self.outer)
        if self.bias_term and shares > 1:
            broadcast_scale_bias_parallel(x, self._scale(bottom).flat_data, self.blobs[-1].flat_data, self.outer,
                                          self.dim, self.inner, y, shares)
        elif self.bias_term:
            broadcast_scale_bias(x, self._scale(bottom).flat_data, self.blobs[-1].flat_data, self.outer,
                                 self.dim, self.inner, y)
        else:
            if top[0] is not bottom[0]:
                np.copyto(y, x)
            self._broadcast_scale(y, self._scale(bottom).flat_data, shares)

    def Backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].flat_diff
        learned = len(bottom) == 1
        s = self._scale(bottom)
        want_b = self.bias_term and self.param_propagate_down[-1]
        want_s = (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1])
        x = self._x_copy[: bottom[0].count] if top[0] is bottom[0] else bottom[0].flat_data
        wide = parts(dy.size) > 1
        if want_b and want_s and self.inner >= LANES:     # both sums in one vectorised pass
            if self._sums.size != 2 * self.dim:
                self._sums = np.zeros(2 * self.dim)
            sums = self._sums
            reduce = reduce_product_and_sum_parallel if wide else reduce_product_and_sum
            reduce(dy, x, self.outer, self.dim, self.inner, sums[:self.dim], sums[self.dim:])
            self.blobs[-1].flat_diff[...] += sums[self.dim:]
            if learned:
                s.flat_diff[...] += sums[:self.dim]
            else:
                s.flat_diff[...] = sums[:self.dim]
        else:
            if want_b:
                reduce_sum(dy, self.outer, self.dim, self.inner, self.blobs[-1].flat_diff, True)
            if want_s:
                reduce_product(dy, x, self.outer, self.dim, self.inner, s.flat_diff, learned)
        if propagate_down[0]:
            dx = bottom[0].flat_diff
            if top[0] is not bottom[0]:
                np.copyto(dx, dy)
            self._broadcast_scale(dx, s.flat_data, min(parts(dx.size), self.outer))

    def _broadcast_scale(self, y, s, shares):
        if shares > 1:
            broadcast_scale_parallel(y, s, self.outer, self.dim, self.inner, shares)
        else:
            broadcast_scale(y, s, self.outer, self.dim, self.inner)


@register("Bias")
class BiasLayer(Layer):
    """y = x + b, b broadcast (see module doc);  db = sum of dy over the broadcast axes;  dx = dy."""

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            axis = bottom[0].canonical_axis(p.axis)
            b = Blob(_broadcast_shape(self, bottom[0].shape, axis, p.num_axes, "bias_param"))
            fill(b, p.filler, self.random)   # the default filler is constant 0
            self.blobs.append(b)
        if len(bottom) == 1 and len(self.blobs) != 1:
            raise ConfigError(f"{self.describe()}: expected 1 parameter blob (the bias), got {len(self.blobs)}")

    def _bias(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def Reshape(self, bottom, top):
        self.outer, self.dim, self.inner = _broadcast_dims(self, bottom[0], self._bias(bottom),
                                                           self.layer_param.bias_param.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def Forward_cpu(self, bottom, top):
        b = self._bias(bottom).flat_data
        if top[0] is not bottom[0]:
            np.copyto(top[0].flat_data, bottom[0].flat_data)
        broadcast_add(top[0].flat_data, b, self.outer, self.dim, self.inner)

    def Backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].flat_diff
        learned = len(bottom) == 1
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            reduce_sum(dy, self.outer, self.dim, self.inner, self._bias(bottom).flat_diff, learned)
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].flat_diff[...] = dy   # in place, the diff already is dy


# -- Maxout ------------------------------------------------------------------------------
@njit(cache=True)
def maxout_forward(x, num, groups, k, inner, y, mask):
    """y[n, g, i] = max_{p<k} x[n, g*k + p, i]; mask = the winning p (first of equals)."""
    channels = groups * k
    for n in range(num):
        for g in range(groups):
            out = (n * groups + g) * inner
            first = (n * channels + g * k) * inner
            for i in range(inner):
                best = x[first + i]
                arg = 0
                for p in range(1, k):
                    v = x[first + p * inner + i]
                    if v > best:
                        best = v
                        arg = p
                y[out + i] = best
                mask[out + i] = arg


@njit(cache=True)
def maxout_backward(dy, mask, num, groups, k, inner, dx):
    """dx[n, g*k + p, i] = dy[n, g, i] if p won, else 0."""
    channels = groups * k
    for n in range(num):
        for g in range(groups):
            out = (n * groups + g) * inner
            first = (n * channels + g * k) * inner
            for p in range(k):
                base = first + p * inner
                for i in range(inner):
                    dx[base + i] = dy[out + i] if mask[out + i] == p else 0.0


@register("Maxout")
class MaxoutLayer(Layer):
    """y[:, c] = max over input channels c*k .. c*k+k-1 (k = num_pieces);  dx = dy at the winner, else 0."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        self.k = int(self.layer_param.maxout_param.num_pieces)
        if self.k < 1:
            raise ConfigError(f"{self.describe()}: maxout_param.num_pieces must be at least 1 (got {self.k})")
        self.mask = np.zeros(0, dtype=np.int32)

    def Reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.shape_error(f"Maxout needs an input with a channel axis (N x C x ...), got {shape}")
        if shape[1] % self.k:
            raise self.shape_error(f"the {shape[1]} input channels are not divisible by "
                                   f"maxout_param.num_pieces = {self.k}")
        if top[0] is bottom[0]:
            raise self.shape_error("a Maxout layer cannot run in place")
        self.num, self.groups, self.inner = shape[0], shape[1] // self.k, bottom[0].count_range(2)
        top[0].reshape((shape[0], self.groups) + shape[2:])
        if self.mask.size < top[0].count:
            self.mask = np.zeros(top[0].count, dtype=np.int32)

    def Forward_cpu(self, bottom, top):
        maxout_forward(bottom[0].flat_data, self.num, self.groups, self.k, self.inner, top[0].flat_data,
                       self.mask)

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            maxout_backward(top[0].flat_diff, self.mask, self.num, self.groups, self.k, self.inner,
                            bottom[0].flat_diff)
