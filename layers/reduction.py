"""Layers that reduce a blob: ArgMax and Reduction, as Caffe's argmax_layer.cpp and
reduction_layer.cpp define them.

ArgMax (no gradient): the indices (and optionally values) of the ``top_k``
largest entries, either per instance over everything after axis 0, or along
``axis``.  Ties go to the larger index, as Caffe's sort by (value, index) does.

Reduction: every axis from ``axis`` (default 0) on is reduced, for each of the
``num = count(0, axis)`` leading positions ``i``::

    SUM    y_i = c * sum_j x_ij        dx_ij = c * dy_i
    ASUM   y_i = c * sum_j |x_ij|      dx_ij = c * dy_i * sign(x_ij)     (sign(0) = 0)
    SUMSQ  y_i = c * sum_j x_ij^2      dx_ij = 2 c * dy_i * x_ij
    MEAN   as SUM with c = coeff / dim
"""
from numba import njit

from numcaffe.layers.base import Layer, register
from numcaffe.layers.shape import canonical
from numcaffe.net.errors import ConfigError, NumcaffeError
from numcaffe.net.proto import caffe_pb2

_OPS = caffe_pb2.ReductionParameter
SUM, ASUM, SUMSQ, MEAN = _OPS.SUM, _OPS.ASUM, _OPS.SUMSQ, _OPS.MEAN
assert (ASUM, SUMSQ) == (2, 3), "the reduction kernels spell these codes as literals"


@njit(cache=True)
def argmax_forward(x, y, num, dim, stride, top_k, out_max_val, has_axis):
    """For each of ``num`` rows of ``dim`` values ``stride`` apart, write the top_k ranks.

    Row i starts at ``(i // stride) * dim * stride + i % stride``.  Rank r is the
    largest (value, index) pair below rank r-1's pair, so ties rank the larger
    index first.  Output layout as Caffe's: along the axis when ``has_axis`` (or
    without out_max_val), else ``[indices..., values...]`` per row.
    """
    for i in range(num):
        base = (i // stride) * dim * stride + i % stride
        prev_v = 0.0
        prev_j = -1
        for r in range(top_k):
            best_v = 0.0
            best_j = -1
            for j in range(dim):
                v = x[base + j * stride]
                if r > 0 and not (v < prev_v or (v == prev_v and j < prev_j)):
                    continue  # ranked already
                if best_j < 0 or v > best_v or (v == best_v and j > best_j):
                    best_v = v
                    best_j = j
            prev_v = best_v
            prev_j = best_j
            if out_max_val and not has_axis:
                y[2 * i * top_k + r] = best_j
                y[2 * i * top_k + top_k + r] = best_v
            else:
                out = ((i // stride) * top_k + r) * stride + i % stride
                y[out] = best_v if out_max_val else best_j


@njit(cache=True)
def reduction_forward(x, y, num, dim, op, coeff):
    """y[i] = coeff * (sum | sum of abs | sum of squares) of x[i*dim : (i+1)*dim]."""
    for i in range(num):
        s = 0.0
        for j in range(i * dim, (i + 1) * dim):
            if op == 2:      # ASUM
                s += abs(x[j])
            elif op == 3:    # SUMSQ
                s += x[j] * x[j]
            else:            # SUM, MEAN
                s += x[j]
        y[i] = coeff * s


@njit(cache=True)
def reduction_backward(x, dy, dx, num, dim, op, coeff):
    """dx[i*dim + j] = coeff * dy[i] * (1 | sign(x) | 2x)."""
    for i in range(num):
        g = coeff * dy[i]
        for j in range(i * dim, (i + 1) * dim):
            if op == 2:      # ASUM: d|x| = sign(x), 0 at 0
                dx[j] = g if x[j] > 0 else (-g if x[j] < 0 else 0.0)
            elif op == 3:    # SUMSQ
                dx[j] = 2.0 * g * x[j]
            else:            # SUM, MEAN
                dx[j] = g


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (``out_max_val``: and values) of the ``top_k`` largest entries; no gradient.

    Without ``axis``: over all of each instance (axes 1..), top shape
    (N, 1 or 2, top_k, 1, ...) with at least 3 axes.  With ``axis``: along that
    axis, top shape = bottom shape with ``axis`` set to top_k, holding the values
    when ``out_max_val`` else the indices.
    """

    exact_num_bottom = 1
    exact_num_top = 1
    force_backward_bottoms = False

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.argmax_param
        if p.top_k < 1:
            raise ConfigError(f"{self.describe()}: argmax_param.top_k must be at least 1; got {p.top_k}")
        self.top_k = int(p.top_k)
        self.out_max_val = bool(p.out_max_val)
        self.has_axis = p.HasField("axis")

    def Reshape(self, bottom, top):
        x = bottom[0]
        if top[0] is x:
            raise self.shape_error("an ArgMax layer cannot run in place")
        if self.has_axis:
            self.axis = canonical(self, x, self.layer_param.argmax_param.axis, "argmax axis")
            self.dim = x.shape[self.axis]
            if self.top_k > self.dim:
                raise self.shape_error(f"top_k {self.top_k} is larger than axis {self.axis} of size {self.dim} "
                                       f"(bottom shape {x.shape})")
            self.stride = x.count_range(self.axis + 1)
            shape = list(x.shape)
            shape[self.axis] = self.top_k
        else:
            self.dim = x.count_range(1)
            if self.top_k > self.dim:
                raise self.shape_error(f"top_k {self.top_k} is larger than the {self.dim} values of each "
                                       f"instance (bottom shape {x.shape})")
            self.stride = 1
            shape = [1] * max(x.num_axes, 3)
            shape[0] = x.shape[0]
            shape[2] = self.top_k
            if self.out_max_val:
                shape[1] = 2
        top[0].reshape(shape)

    def Forward_cpu(self, bottom, top):
        num = bottom[0].count // self.dim if self.dim else 0
        argmax_forward(bottom[0].flat_data, top[0].flat_data, num, self.dim, self.stride,
                       self.top_k, self.out_max_val, self.has_axis)

    def Backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise NumcaffeError(f"{self.describe()} has no gradient; it cannot be part of a backward pass")


@register("Reduction")
class ReductionLayer(Layer):
    """SUM / ASUM / SUMSQ / MEAN over all axes from ``axis`` on, times ``coeff`` (see the module doc)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        self.op = int(self.layer_param.reduction_param.operation)
        if self.op not in (SUM, ASUM, SUMSQ, MEAN):
            raise ConfigError(f"{self.describe()}: unknown reduction operation {self.op}")

    def Reshape(self, bottom, top):
        x = bottom[0]
        if top[0] is x:
            raise self.shape_error("a Reduction layer cannot run in place")
        p = self.layer_param.reduction_param
        axis = canonical(self, x, p.axis, "reduction axis")
        self.num = x.count_range(0, axis)
        self.dim = x.count_range(axis)
        # As Caffe: the coefficient is re-derived at every reshape; MEAN divides by this dim.
        self.coeff = float(p.coeff)
        if self.op == MEAN and self.dim:
            self.coeff /= self.dim
        top[0].reshape(x.shape[:axis])

    def Forward_cpu(self, bottom, top):
        reduction_forward(bottom[0].flat_data, top[0].flat_data, self.num, self.dim, self.op, self.coeff)

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            reduction_backward(bottom[0].flat_data, top[0].flat_diff, bottom[0].flat_diff,
                               self.num, self.dim, self.op, self.coeff)
