"""Neuron layers: one bottom, one top of the same shape, computed element by element.

This module holds what all of them share (``ElementwiseLayer``) and the
piecewise-linear ones; layers/activation.py has the smooth activations (ELU,
SELU, Sigmoid, TanH, BNLL, Swish), layers/power.py Power, Exp and Log.
Forward and backward follow Caffe's ``src/caffe/layers/*_layer.cpp`` (``x`` is
the bottom, ``y`` the top, ``dy``/``dx`` their diffs)::

    ReLU       y = max(x, 0) + s * min(x, 0)           dx = dy * (x > 0 ? 1 : s)
    PReLU      y = max(x, 0) + a_c * min(x, 0)         dx = dy * (x > 0 ? 1 : a_c)
                                                       da_c += sum over channel c of dy * x * (x <= 0)
    AbsVal     y = |x|                                 dx = dy * sign(x)       (sign(0) = 0)
    Threshold  y = x > t ? 1 : 0                       no gradient (Caffe has no backward)
    Clip       y = max(min, min(x, max))               dx = dy * (min <= x <= max)
    Dropout    TRAIN: y = x * m * scale,  m ~ Bernoulli(1 - p),  scale = 1 / (1 - p);  dx = dy * m * scale
               TEST:  y = x;                                                        dx = dy
               (with ``scale_train: false``, scale is 1 in TRAIN and TEST multiplies by 1 - p)

Every neuron layer may run in place (top[0] is bottom[0]).  Backward never
reads the top's data, because a later in-place layer may have overwritten it
(Caffe's Sigmoid, TanH, ELU and Swish read it, and then take a wrong gradient
under an in-place Dropout, say): it reads the input ``x`` -- the bottom's data,
or, when the layer ran in place, a copy taken before forward overwrote it
(Caffe's PReLU does the same), kept in a buffer reused from one iteration to
the next.  ReLU keeps a byte mask of ``x > 0`` instead of a copy, and Dropout
its mask.

Functions that Caffe differentiates through ``y`` recompute ``y`` from ``x``
in backward.

A numba loop handed one array as both its input and its output falls back to
scalar code (LLVM cannot prove the two apart): ReLU on 800,000 elements took
0.66 ms in place against 0.12 ms.  So in place, forward reads the input copy,
and ReLU's kernels work on one array (out of place the layer copies first).
Dropout, PReLU and the other layers' backward kernels still get dy and dx as
one array when in place.

The kernels compute in double precision and store float32.
"""
import numpy as np
from numba import njit, prange

from numcaffe.layers.base import NeuronLayer, register
from numcaffe.layers.elementwise import scale_into
from numcaffe.layers.parallel import parts, share
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.filler import fill
from numcaffe.net.proto import caffe_pb2


# -- kernels -------------------------------------------------------------------------
@njit(cache=True)
def relu_forward(y, positive, slope):
    """In place: positive = y > 0, then y = max(y, 0) + slope * min(y, 0)."""
    for i in range(y.size):
        v = y[i]
        positive[i] = v > 0.0
        y[i] = v if v > 0.0 else slope * v


@njit(cache=True)
def relu_backward(positive, d, slope):
    """In place (d: dy in, dx out): d = d * (x > 0 ? 1 : slope)."""
    for i in range(d.size):
        d[i] = d[i] if positive[i] else d[i] * slope


@njit(cache=True, parallel=True)
def relu_forward_parallel(y, positive, slope, shares):
    """relu_forward on ``shares`` equal shares of y, one per thread (layers/parallel.py): bitwise the same."""
    for t in prange(shares):
        lo, hi = share(y.size, t, shares)
        relu_forward(y[lo:hi], positive[lo:hi], slope)


@njit(cache=True, parallel=True)
def relu_backward_parallel(positive, d, slope, shares):
    """relu_backward on ``shares`` equal shares of d: bitwise the same."""
    for t in prange(shares):
        lo, hi = share(d.size, t, shares)
        relu_backward(positive[lo:hi], d[lo:hi], slope)


@njit(cache=True)
def prelu_forward(x, y, slope, num, channels, dim, shared):
    """y = max(x, 0) + a_c * min(x, 0), c the index along axis 1 (a_0 for all if shared)."""
    for n in range(num):
        for c in range(channels):
            a = slope[0] if shared else slope[c]
            base = (n * channels + c) * dim
            for k in range(dim):
                v = x[base + k]
                y[base + k] = v if v > 0.0 else a * v


@njit(cache=True)
def prelu_backward(x, dy, dx, slope, num, channels, dim, shared):
    """dx = dy * (x > 0 ? 1 : a_c)."""
    for n in range(num):
        for c in range(channels):
            a = slope[0] if shared else slope[c]
            base = (n * channels + c) * dim
            for k in range(dim):
                i = base + k
                dx[i] = dy[i] if x[i] > 0.0 else dy[i] * a


@njit(cache=True)
def prelu_slope_backward(x, dy, dslope, num, channels, dim, shared):
    """da_c += sum over n and the spatial axes of dy * x * (x <= 0)."""
    for c in range(channels):
        acc = 0.0
        for n in range(num):
            base = (n * channels + c) * dim
            for k in range(dim):
                v = x[base + k]
                if v <= 0.0:
                    acc += dy[base + k] * v
        if shared:
            dslope[0] += acc
        else:
            dslope[c] += acc


@njit(cache=True)
def absval_forward(x, y):
    """y = |x|."""
    for i in range(x.size):
        y[i] = abs(x[i])


@njit(cache=True)
def absval_backward(x, dy, dx):
    """dx = dy * sign(x), sign(0) = 0."""
    for i in range(x.size):
        v = x[i]
        dx[i] = dy[i] if v > 0.0 else (-dy[i] if v < 0.0 else 0.0)


@njit(cache=True)
def threshold_forward(x, y, threshold):
    """y = x > threshold ? 1 : 0."""
    for i in range(x.size):
        y[i] = 1.0 if x[i] > threshold else 0.0


@njit(cache=True)
def clip_forward(x, y, lo, hi):
    """y = max(lo, min(x, hi))."""
    for i in range(x.size):
        y[i] = max(lo, min(x[i], hi))


@njit(cache=True)
def clip_backward(x, dy, dx, lo, hi):
    """dx = dy * (lo <= x <= hi)."""
    for i in range(x.size):
        v = x[i]
        dx[i] = dy[i] if lo <= v and v <= hi else 0.0


@njit(cache=True)
def clip_forward_inside(y, inside, lo, hi):
    """In place: inside = lo <= y <= hi, then y = max(lo, min(y, hi))  (clip_forward on one array)."""
    for i in range(y.size):
        v = y[i]
        inside[i] = lo <= v and v <= hi
        y[i] = max(lo, min(v, hi))


@njit(cache=True)
def clip_backward_inside(inside, d):
    """In place (d: dy in, dx out): d = d where the input was inside the bounds, else 0."""
    for i in range(d.size):
        d[i] = d[i] if inside[i] else 0.0


@njit(cache=True)
def dropout_forward(x, y, mask, keep_prob, scale):
    """mask = u < keep_prob (u: the uniform numbers mask holds on entry);  y = x * mask * scale."""
    for i in range(x.size):
        keep = mask[i] < keep_prob
        mask[i] = 1.0 if keep else 0.0
        y[i] = x[i] * scale if keep else 0.0


@njit(cache=True)
def dropout_backward(mask, dy, dx, scale):
    """dx = dy * mask * scale."""
    for i in range(dy.size):
        dx[i] = dy[i] * scale if mask[i] != 0.0 else 0.0


# -- helpers ------------------------------------------------------------------------
class Scratch:
    """A flat work buffer that grows but never shrinks, reused across iterations."""

    def __init__(self, dtype=np.float32):
        self.buf = np.zeros(0, dtype=dtype)

    def get(self, n):
        if self.buf.size < n:
            self.buf = np.zeros(n, dtype=self.buf.dtype)
        return self.buf[:n]


def same_array(a, b):
    """Whether two flat views are one array: a kernel must then not be handed both (see the module doc)."""
    return a.ctypes.data == b.ctypes.data and a.size == b.size


def runs_in_place(bottom, top):
    """Whether the top overwrites the bottom's data (same blob, or blobs sharing data)."""
    return top[0] is bottom[0] or top[0].shares_data_with(bottom[0])


class ElementwiseLayer(NeuronLayer):
    """A neuron layer whose backward reads its input x (see the module docstring).

    Subclasses implement ``forward(x, y)`` and ``backward(x, dy, dx)`` on flat
    arrays.  When the layer runs in place and ``keeps_input`` is set, the input
    is copied before ``forward`` overwrites it and ``backward`` gets the copy.
    """

    keeps_input = True

    def __init__(self, param):
        super().__init__(param)
        self._input_copy = Scratch()

    def Forward_cpu(self, bottom, top):
        x = bottom[0].flat_data
        if self.keeps_input and runs_in_place(bottom, top):
            saved = self._input_copy.get(x.size)
            saved[...] = x
            x = saved   # the copy, not the top it aliases: the kernel's loop then vectorises
        self.forward(x, top[0].flat_data)

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].flat_data
        if self.keeps_input and runs_in_place(bottom, top):
            x = self._input_copy.get(x.size)
        self.backward(x, top[0].flat_diff, bottom[0].flat_diff)

    def forward(self, x, y):
        raise NotImplementedError

    def backward(self, x, dy, dx):
        raise NotImplementedError


# -- layers ---------------------------------------------------------------------------
@register("ReLU")
class ReLULayer(ElementwiseLayer):
    """y = max(x, 0) + negative_slope * min(x, 0);  dx = dy * (x > 0 ? 1 : negative_slope)."""

    keeps_input = False  # the mask x > 0 is all backward needs

    def LayerSetUp(self, bottom, top):
        self.negative_slope = float(self.layer_param.relu_param.negative_slope)
        self._positive = Scratch(np.bool_)

    def forward(self, x, y):
        if not same_array(x, y):
            np.copyto(y, x)
        k = parts(y.size)
        if k > 1:
            relu_forward_parallel(y, self._positive.get(y.size), self.negative_slope, k)
        else:
            relu_forward(y, self._positive.get(y.size), self.negative_slope)

    def backward(self, x, dy, dx):
        if not same_array(dy, dx):
            np.copyto(dx, dy)
        k = parts(dx.size)
        if k > 1:
            relu_backward_parallel(self._positive.get(dx.size), dx, self.negative_slope, k)
        else:
            relu_backward(self._positive.get(dx.size), dx, self.negative_slope)


@register("PReLU")
class PReLULayer(ElementwiseLayer):
    """ReLU with a learnable negative slope per channel (axis 1), or one shared slope.

    y = max(x, 0) + a_c * min(x, 0);  dx = dy * (x > 0 ? 1 : a_c);
    da_c += sum of dy * x over the channel's elements with x <= 0.
    The slope blob has shape (C,), or () with ``channel_shared`` (as in Caffe);
    it is filled by ``prelu_param.filler``, by default the constant 0.25.
    """

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2:
            raise self.shape_error(f"the bottom needs at least 2 axes (N, C, ...); got shape {bottom[0].shape}")
        channels = bottom[0].shape[1]
        self.channel_shared = bool(p.channel_shared)
        if not self.blobs:
            slope = Blob(() if self.channel_shared else (channels,))
            if p.HasField("filler"):
                filler = p.filler
            else:
                filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
            fill(slope, filler, self.random)
            self.blobs = [slope]
        expected = 1 if self.channel_shared else channels
        if self.blobs[0].count != expected:
            what = "1 (channel_shared)" if self.channel_shared else f"{channels} (one per channel)"
            raise ConfigError(f"{self.describe()}: the slope blob holds {self.blobs[0].count} value(s); "
                              f"expected {what}")

    def Reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise self.shape_error(f"the bottom needs at least 2 axes (N, C, ...); got shape {bottom[0].shape}")
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.shape_error(f"the bottom has {bottom[0].shape[1]} channels (axis 1) but the layer "
                                   f"has {self.blobs[0].count} slopes")
        super().Reshape(bottom, top)
        self._dims = (bottom[0].shape[0], bottom[0].shape[1], bottom[0].count_range(2))

    def forward(self, x, y):
        num, channels, dim = self._dims
        prelu_forward(x, y, self.blobs[0].flat_data, num, channels, dim, self.channel_shared)

    def Backward_cpu(self, top, propagate_down, bottom):
        num, channels, dim = self._dims
        x = bottom[0].flat_data
        if runs_in_place(bottom, top):
            x = self._input_copy.get(x.size)
        dy = top[0].flat_diff
        # The slope gradient first: in place, writing dx overwrites dy.
        if self.param_propagate_down[0]:
            prelu_slope_backward(x, dy, self.blobs[0].flat_diff, num, channels, dim, self.channel_shared)
        if propagate_down[0]:
            prelu_backward(x, dy, bottom[0].flat_diff, self.blobs[0].flat_data, num, channels, dim,
                           self.channel_shared)


@register("AbsVal")
class AbsValLayer(ElementwiseLayer):
    """y = |x|;  dx = dy * sign(x).  (Caffe refuses to run it in place; here it may.)"""

    def forward(self, x, y):
        absval_forward(x, y)

    def backward(self, x, dy, dx):
        absval_backward(x, dy, dx)


@register("Threshold")
class ThresholdLayer(ElementwiseLayer):
    """y = x > threshold ? 1 : 0.  A step has no useful gradient and Caffe defines no
    backward: force_backward never asks for one, and if a net does, dx is 0 (the
    derivative everywhere but at the threshold)."""

    keeps_input = False
    force_backward_bottoms = False

    def LayerSetUp(self, bottom, top):
        self.threshold = float(self.layer_param.threshold_param.threshold)

    def forward(self, x, y):
        threshold_forward(x, y, self.threshold)

    def backward(self, x, dy, dx):
        dx[...] = 0.0


@register("Clip")
class ClipLayer(ElementwiseLayer):
    """y = max(min, min(x, max));  dx = dy where min <= x <= max (bounds included), else 0.

    As ReLU, it keeps a byte mask of ``min <= x <= max`` rather than a copy of x, and its
    kernels work on one array (MobileNet v2's ReLU6s run in place: backward with dy and dx
    one array was 6x forward's time, as the module doc says)."""

    keeps_input = False  # the mask is all backward needs

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise ConfigError(f"{self.describe()}: clip_param needs both min and max")
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise ConfigError(f"{self.describe()}: clip_param.min ({self.lo:g}) is above max ({self.hi:g})")
        self._inside = Scratch(np.bool_)

    def forward(self, x, y):
        if not same_array(x, y):
            np.copyto(y, x)
        clip_forward_inside(y, self._inside.get(y.size), self.lo, self.hi)

    def backward(self, x, dy, dx):
        if not same_array(dy, dx):
            np.copyto(dx, dy)
        clip_backward_inside(self._inside.get(dx.size), dx)


@register("Dropout")
class DropoutLayer(ElementwiseLayer):
    """TRAIN: y = x * m * scale, m ~ Bernoulli(1 - dropout_ratio) drawn with the layer's
    generator, scale = 1 / (1 - dropout_ratio);  dx = dy * m * scale.  TEST: y = x, dx = dy.

    ``scale_train: false`` (numcaffe's field for the R-CNN fork's flag) moves the
    scaling to test time: TRAIN y = x * m, TEST y = x * (1 - dropout_ratio).
    """

    keeps_input = False  # backward needs only the mask

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.dropout_param
        self.ratio = float(p.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"{self.describe()}: dropout_ratio must be in [0, 1); got {self.ratio:g}")
        self.scale_train = bool(p.scale_train)
        self.scale = 1.0 / (1.0 - self.ratio)
        self.train_scale = self.scale if self.scale_train else 1.0
        self.test_scale = 1.0 if self.scale_train else 1.0 - self.ratio
        self._mask = Scratch()
        _ = self.random  # create the generator now, so that get_state() includes it

    def forward(self, x, y):
        if self.phase == caffe_pb2.TRAIN:
            mask = self._mask.get(x.size)
            self.random.random(dtype=np.float32, out=mask)
            dropout_forward(x, y, mask, 1.0 - self.ratio, self.train_scale)
        elif self.test_scale != 1.0 or not np.may_share_memory(x, y):
            scale_into(self.test_scale, x, y)

    def backward(self, x, dy, dx):
        if self.phase == caffe_pb2.TRAIN:
            dropout_backward(self._mask.get(dy.size), dy, dx, self.train_scale)
        elif self.test_scale != 1.0 or not np.may_share_memory(dx, dy):
            scale_into(self.test_scale, dy, dx)
