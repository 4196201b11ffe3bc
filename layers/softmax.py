"""Softmax along one axis, and the kernels SoftmaxWithLoss and InfogainLoss reuse.

A blob of shape ``(d_0, ..., d_{a-1}, C, d_{a+1}, ...)`` with the softmax axis
``a`` is seen, as in Caffe, as ``outer x C x inner`` (``outer`` = the product of
the dimensions before the axis, ``inner`` = the product after it).  Each of the
``outer * inner`` columns of ``C`` values is normalised on its own::

    y_c = exp(x_c - max_k x_k) / sum_k exp(x_k - max_k x_k)

    dx_c = y_c * (dy_c - sum_k dy_k * y_k)

Subtracting the column's maximum keeps ``exp`` from overflowing and does not
change the result.  The kernels walk whole ``inner``-long rows at a time (one
class plane after another), so memory is read in order even for spatial
softmax over ``N x C x H x W``; per-column maxima and sums live in a caller's
float64 scratch row of length ``inner``.
"""
import numpy as np
from numba import njit

from numcaffe.layers.base import Layer, register
from numcaffe.net.errors import ShapeError


@njit(cache=True)
def softmax_forward(x, y, outer, channels, inner, scratch):
    """y = softmax(x) over the middle axis of (outer, channels, inner); y may be x."""
    dim = channels * inner
    for i in range(outer):
        base = i * dim
        for k in range(inner):                       # column maxima
            scratch[k] = x[base + k]
        for c in range(1, channels):
            row = base + c * inner
            for k in range(inner):
                if x[row + k] > scratch[k]:
                    scratch[k] = x[row + k]
        for c in range(channels):                    # y = exp(x - max)
            row = base + c * inner
            for k in range(inner):
                y[row + k] = np.exp(x[row + k] - scratch[k])
        for k in range(inner):                       # column sums (float64)
            scratch[k] = 0.0
        for c in range(channels):
            row = base + c * inner
            for k in range(inner):
                scratch[k] += y[row + k]
        for c in range(channels):                    # y /= sum
            row = base + c * inner
            for k in range(inner):
                y[row + k] = y[row + k] / scratch[k]


@njit(cache=True)
def softmax_backward(y, dy, dx, outer, channels, inner, scratch):
    """dx = y * (dy - sum_c dy_c * y_c), per column; dx may be dy."""
    dim = channels * inner
    for i in range(outer):
        base = i * dim
        for k in range(inner):
            scratch[k] = 0.0
        for c in range(channels):                    # scratch = <dy, y> per column
            row = base + c * inner
            for k in range(inner):
                scratch[k] += dy[row + k] * y[row + k]
        for c in range(channels):
            row = base + c * inner
            for k in range(inner):
                dx[row + k] = y[row + k] * (dy[row + k] - scratch[k])


class SoftmaxGeometry:
    """outer / channels / inner of a blob around a softmax axis, plus a scratch row.

    Shared by Softmax, SoftmaxWithLoss and InfogainLoss.  ``update`` is called
    from Reshape; the scratch row only grows.
    """

    def __init__(self):
        self.axis = 1
        self.outer = self.channels = self.inner = 0
        self.scratch = np.zeros(0, dtype=np.float64)

    def update(self, blob, axis, layer):
        """Recompute the geometry of ``blob`` around ``axis``; bad axes raise ``layer``'s ShapeError."""
        if blob.num_axes == 0:
            raise layer.shape_error("needs an input with at least one axis, got a scalar")
        try:
            self.axis = blob.canonical_axis(axis)
        except ShapeError as e:
            raise layer.shape_error(str(e)) from None
        self.outer = blob.count_range(0, self.axis)
        self.channels = blob.shape[self.axis]
        self.inner = blob.count_range(self.axis + 1)
        if self.scratch.size < self.inner:
            self.scratch = np.zeros(self.inner, dtype=np.float64)

    def forward(self, x, y):
        softmax_forward(x, y, self.outer, self.channels, self.inner, self.scratch)

    def backward(self, y, dy, dx):
        softmax_backward(y, dy, dx, self.outer, self.channels, self.inner, self.scratch)


@register("Softmax")
class SoftmaxLayer(Layer):
    """y = softmax(x) along ``softmax_param.axis`` (default 1, the channels).

    dx_c = y_c * (dy_c - sum_k dy_k y_k).  May run in place.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        self.geometry = SoftmaxGeometry()

    def Reshape(self, bottom, top):
        self.geometry.update(bottom[0], self.layer_param.softmax_param.axis, self)
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def Forward_cpu(self, bottom, top):
        self.geometry.forward(bottom[0].flat_data, top[0].flat_data)

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.geometry.backward(top[0].flat_data, top[0].flat_diff, bottom[0].flat_diff)
