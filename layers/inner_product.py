"""Dense layers: InnerProduct (fully connected) and Embed (a lookup table).

InnerProduct flattens the axes from ``axis`` on into vectors of length K and
maps each of the M = count(0, axis) vectors to num_output = N values::

    Y (M x N) = X (M x K) . W^T + 1 b^T        W: (N, K), or (K, N) with transpose
    dW += dY^T . X      (transpose: dW += X^T . dY)
    db += 1^T . dY
    dX  = dY . W        (transpose: dX  = dY . W^T)

The products go through numpy's BLAS (``np.matmul(..., out=)``).  BLAS (as
numpy calls it) cannot add into its output, so the weight gradient is computed
into a scratch buffer and then added (parameter diffs accumulate) -- except for
small batches (M <= ``RANK_UPDATE_MAX_M``), where ``rank_update`` adds the M
outer products straight into dW, one pass over it: on AlexNet's fc6 at batch 1
(a 151 MB weight) 9.6 ms against 52 ms for the outer-product GEMM plus the add,
even at M = 4; from M = 8 on the GEMM wins.

Embed treats every element of its bottom as an integer index i in
[0, input_dim) and outputs row i of its (input_dim, num_output) weight matrix
(plus the bias), so the top has the bottom's shape with num_output appended.
Its weight gradient scatter-adds dY's rows into the indexed rows; the indices
themselves get no gradient.
"""
import numpy as np
from numba import njit

from numcaffe.layers.base import Layer, register
from numcaffe.layers.elementwise import add_into
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, NumcaffeError
from numcaffe.net.filler import fill


#: Largest batch whose weight gradient is added by rank_update rather than a GEMM (measured above).
RANK_UPDATE_MAX_M = 4


@njit(cache=True, nogil=True)
def rank_update(a, b, M, R, C, out):
    """out[r, c] += sum over m of a[m, r] * b[m, c]   (a: M x R, b: M x C, out: R x C, all flat).

    Row by row, so each row of ``out`` is read and written once while the M
    products for it run from cache.
    """
    for r in range(R):
        base = r * C
        for m in range(M):
            s = a[m * R + r]
            bo = m * C
            for c in range(C):
                out[base + c] += s * b[bo + c]


@njit(cache=True)
def add_row_bias(y, bias, rows, cols):
    """y[m, n] += bias[n] for every row m of the (rows x cols) matrix y."""
    for m in range(rows):
        base = m * cols
        for n in range(cols):
            y[base + n] += bias[n]


@njit(cache=True)
def sum_rows_into(dy, rows, cols, db):
    """db[n] += sum_m dy[m, n]."""
    for m in range(rows):
        base = m * cols
        for n in range(cols):
            db[n] += dy[base + n]


@njit(cache=True)
def first_bad_index(idx, vocab):
    """Position of the first value that is not an integer in [0, vocab), or -1."""
    for n in range(idx.size):
        v = idx[n]
        if not (v >= 0 and v < vocab) or v != np.floor(v):
            return n
    return -1


@njit(cache=True)
def embed_forward(idx, weight, dim, y):
    """y[n, :] = weight[idx[n], :]  (rows of length dim)."""
    for n in range(idx.size):
        row = int(idx[n]) * dim
        base = n * dim
        for d in range(dim):
            y[base + d] = weight[row + d]


@njit(cache=True)
def embed_weight_backward(idx, dy, dim, dweight):
    """dweight[idx[n], :] += dy[n, :]  (repeated indices add up)."""
    for n in range(idx.size):
        row = int(idx[n]) * dim
        base = n * dim
        for d in range(dim):
            dweight[row + d] += dy[base + d]


def _positive(value, what, layer):
    if value <= 0:
        raise ConfigError(f"{layer.describe()}: {what} must be positive (got {value})")
    return int(value)


@register("InnerProduct")
class InnerProductLayer(Layer):
    """Fully connected: y = x . W^T + b over the axes from ``axis`` on (see module doc)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.N = _positive(p.num_output, "inner_product_param.num_output", self)
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        axis = bottom[0].canonical_axis(p.axis)
        self.K = bottom[0].count_range(axis)
        wshape = (self.K, self.N) if self.transpose else (self.N, self.K)
        if not self.blobs:
            self.blobs = [Blob(wshape)]
            fill(self.blobs[0], p.weight_filler, self.random)
            if self.bias_term:
                self.blobs.append(Blob((self.N,)))
                fill(self.blobs[1], p.bias_filler, self.random)
        expected = [wshape] + ([(self.N,)] if self.bias_term else [])
        if [b.count for b in self.blobs] != [int(np.prod(s)) for s in expected]:
            raise ConfigError(f"{self.describe()}: preloaded parameter shapes "
                              f"{[b.shape for b in self.blobs]} do not fit {expected}")
        for b, s in zip(self.blobs, expected):
            if b.shape != s:
                b.reshape(s)   # legacy 4-D weights (1, 1, N, K) keep their values
        self._dw = None   # the GEMM path's scratch for dW, made on first use

    def Reshape(self, bottom, top):
        axis = bottom[0].canonical_axis(self.layer_param.inner_product_param.axis)
        k = bottom[0].count_range(axis)
        if k != self.K:
            raise self.shape_error(f"input of shape {bottom[0].shape} flattens to {k} values from axis "
                                   f"{axis}, but the weights expect {self.K}")
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.N,))

    def _weight(self):
        w = self.blobs[0].flat_data.reshape(self.K, self.N) if self.transpose else \
            self.blobs[0].flat_data.reshape(self.N, self.K)
        return w

    def Forward_cpu(self, bottom, top):
        M, N, K = self.M, self.N, self.K
        x = bottom[0].flat_data.reshape(M, K)
        y = top[0].flat_data.reshape(M, N)
        w = self._weight()
        np.matmul(x, w if self.transpose else w.T, out=y)
        if self.bias_term:
            add_row_bias(top[0].flat_data, self.blobs[1].flat_data, M, N)

    def Backward_cpu(self, top, propagate_down, bottom):
        M, N, K = self.M, self.N, self.K
        dy = top[0].flat_diff.reshape(M, N)
        if self.param_propagate_down[0]:
            x = bottom[0].flat_data
            if M <= RANK_UPDATE_MAX_M:
                if self.transpose:
                    rank_update(x, top[0].flat_diff, M, K, N, self.blobs[0].flat_diff)
                else:
                    rank_update(top[0].flat_diff, x, M, N, K, self.blobs[0].flat_diff)
            else:
                if self._dw is None:
                    self._dw = np.empty(N * K, dtype=np.float32)
                x = x.reshape(M, K)
                if self.transpose:
                    np.matmul(x.T, dy, out=self._dw.reshape(K, N))
                else:
                    np.matmul(dy.T, x, out=self._dw.reshape(N, K))
                add_into(self.blobs[0].flat_diff, self._dw)
        if self.bias_term and self.param_propagate_down[1]:
            sum_rows_into(top[0].flat_diff, M, N, self.blobs[1].flat_diff)
        if propagate_down[0]:
            w = self._weight()
            np.matmul(dy, w.T if self.transpose else w, out=bottom[0].flat_diff.reshape(M, K))


@register("Embed")
class EmbedLayer(Layer):
    """y[..., :] = W[index, :] + b; dW[index, :] += dy (see module doc); no gradient to the indices."""

    exact_num_bottom = 1
    exact_num_top = 1
    force_backward_bottoms = False

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.embed_param
        self.N = _positive(p.num_output, "embed_param.num_output", self)
        self.K = _positive(p.input_dim, "embed_param.input_dim", self)
        self.bias_term = p.bias_term
        expected = [(self.K, self.N)] + ([(self.N,)] if self.bias_term else [])
        if not self.blobs:
            self.blobs = [Blob(expected[0])]
            fill(self.blobs[0], p.weight_filler, self.random)
            if self.bias_term:
                self.blobs.append(Blob(expected[1]))
                fill(self.blobs[1], p.bias_filler, self.random)
        if [b.count for b in self.blobs] != [int(np.prod(s)) for s in expected]:
            raise ConfigError(f"{self.describe()}: preloaded parameter shapes "
                              f"{[b.shape for b in self.blobs]} do not fit {expected}")
        for b, s in zip(self.blobs, expected):
            if b.shape != s:
                b.reshape(s)

    def Reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.N,))

    def _check_indices(self, idx):
        bad = first_bad_index(idx, self.K)
        if bad >= 0:
            raise NumcaffeError(f"{self.describe()}: input value {float(idx[bad])} at position {bad} is not an "
                                f"integer index in [0, {self.K}) (embed_param.input_dim = {self.K})")

    def Forward_cpu(self, bottom, top):
        idx = bottom[0].flat_data
        self._check_indices(idx)
        embed_forward(idx, self.blobs[0].flat_data, self.N, top[0].flat_data)
        if self.bias_term:
            add_row_bias(top[0].flat_data, self.blobs[1].flat_data, idx.size, self.N)

    def Backward_cpu(self, top, propagate_down, bottom):
        idx = bottom[0].flat_data
        if self.param_propagate_down[0]:
            embed_weight_backward(idx, top[0].flat_diff, self.N, self.blobs[0].flat_diff)
        if self.bias_term and self.param_propagate_down[1]:
            sum_rows_into(top[0].flat_diff, idx.size, self.N, self.blobs[1].flat_diff)
        if propagate_down[0]:
            # The output is piecewise constant in the indices: their gradient is zero.
            # (Caffe refuses with a CHECK; numcaffe answers with the true derivative.)
            bottom[0].flat_diff[...] = 0.0
