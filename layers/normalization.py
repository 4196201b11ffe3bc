"""Normalization: BatchNorm and MVN (mean-variance normalization).

BatchNorm normalizes each channel c of an N x C x ... input over the batch and
spatial axes (m = count / C values per channel)::

    y = (x - mean_c) / sqrt(var_c + eps)
    dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var_c + eps)   (batch statistics)
    dx = dy / sqrt(var_c + eps)                                   (global statistics)

With ``use_global_stats`` (default: true in TEST, false in TRAIN) mean and var
come from the stored running averages, else from the batch, and then every
forward updates the three stored blobs exactly as Caffe does::

    blobs[2] = f * blobs[2] + 1                  (f = moving_average_fraction)
    blobs[0] = f * blobs[0] + mean
    blobs[1] = f * blobs[1] + m / (m - 1) * var  (unbiased; factor 1 when m == 1)

so the running mean is blobs[0] / blobs[2] (0 while blobs[2] is 0), and
likewise the variance.  These blobs are statistics, not parameters: like Caffe,
the layer appends ``param { lr_mult: 0 }`` for each of them to its
LayerParameter (a non-zero lr_mult there is a config error) and sets
``param_propagate_down`` to False, so no solver ever updates them and Backward
never writes their diffs.

MVN normalizes each row of the input, a row being one (n, c) slice (or one
sample n with ``across_channels``)::

    y = x - mean                                       (normalize_variance: false)
    y = (x - mean) / (sqrt(var) + eps)                 (normalize_variance: true)

with Caffe's backward: dx = dy - mean(dy), resp.
dx = (dy - mean(dy) - mean(dy * y) * y) / (sqrt(var) + eps); the latter is the
exact derivative for eps = 0 and off by a relative eps / sqrt(var) otherwise (as
in Caffe; eps defaults to 1e-9).
"""
import math

import numpy as np
from numba import njit, prange

from numcaffe.layers.base import Layer, register
from numcaffe.layers.parallel import parts, share
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2


# -- BatchNorm kernels ------------------------------------------------------------------
@njit(inline="always")
def _channel_mean_var(x, num, channels, spatial, c, mean, var):
    m = num * spatial
    acc = 0.0
    for n in range(num):
        base = (n * channels + c) * spatial
        for i in range(spatial):
            acc += x[base + i]
    mu = acc / m
    acc = 0.0
    for n in range(num):
        base = (n * channels + c) * spatial
        for i in range(spatial):
            d = x[base + i] - mu
            acc += d * d
    mean[c] = mu
    var[c] = acc / m


@njit(cache=True)
def channel_mean_var(x, num, channels, spatial, mean, var):
    """Per-channel mean and biased variance E((x - mean)^2) over batch and spatial axes."""
    for c in range(channels):
        _channel_mean_var(x, num, channels, spatial, c, mean, var)


@njit(cache=True, parallel=True)
def channel_mean_var_parallel(x, num, channels, spatial, mean, var):
    """channel_mean_var with the channels shared among the threads (layers/parallel.py): bitwise the same."""
    for c in prange(channels):
        _channel_mean_var(x, num, channels, spatial, c, mean, var)


@njit(cache=True)
def update_running_stats(mean, var, fraction, correction, run_mean, run_var, factor):
    """Caffe's moving averages: factor = f*factor + 1, run = f*run + stat (var bias-corrected)."""
    factor[0] = factor[0] * fraction + 1.0
    for c in range(mean.size):
        run_mean[c] = mean[c] + fraction * run_mean[c]
        run_var[c] = correction * var[c] + fraction * run_var[c]


# Each kernel works on one array in place: the layer copies x into the top (dy into the bottom diff)
# first when it does not run in place.  A numba loop handed one array as both input and output
# falls back to scalar code (layers/neuron.py), and one in-place kernel serves both cases.
# The parallel twins share the (image, channel) planes, or the channels, among the threads.

@njit(cache=True)
def batch_norm_forward(y, mean, std, num, channels, spatial, x_norm, keep):
    """y = (y - mean_c) / std_c, also into x_norm when ``keep`` (backward with batch statistics reads it)."""
    for n in range(num):
        for c in range(channels):
            base = (n * channels + c) * spatial
            mu = mean[c]
            s = std[c]
            for i in range(spatial):
                v = (y[base + i] - mu) / s
                y[base + i] = v
                if keep:
                    x_norm[base + i] = v


@njit(cache=True, parallel=True)
def batch_norm_forward_parallel(y, mean, std, num, channels, spatial, x_norm, keep, shares):
    """batch_norm_forward on ``shares`` shares of the images, one per thread: bitwise the same.  (By
    (image, channel) plane under prange it measured 3x slower than serial on ResNet's BatchNorms.)"""
    size = channels * spatial
    for t in prange(shares):
        lo, hi = share(num, t, shares)
        batch_norm_forward(y[lo * size:hi * size], mean, std, hi - lo, channels, spatial,
                           x_norm[lo * size:hi * size] if keep else x_norm, keep)


@njit(inline="always")
def _channel_sums(d, x_norm, num, channels, spatial, c, sum_dy, sum_dy_y):
    a = 0.0
    b = 0.0
    for n in range(num):
        base = (n * channels + c) * spatial
        for i in range(spatial):
            a += d[base + i]
            b += d[base + i] * x_norm[base + i]
    sum_dy[c] = a
    sum_dy_y[c] = b


@njit(inline="always")
def _batch_norm_backward_images(d, x_norm, std, n0, n1, channels, spatial, m, sum_dy, sum_dy_y):
    for n in range(n0, n1):
        for c in range(channels):
            base = (n * channels + c) * spatial
            mdy = sum_dy[c] / m
            mdyy = sum_dy_y[c] / m
            s = std[c]
            for i in range(spatial):
                d[base + i] = (d[base + i] - mdy - mdyy * x_norm[base + i]) / s


@njit(cache=True)
def batch_norm_backward(d, x_norm, std, num, channels, spatial, sum_dy, sum_dy_y):
    """d = (d - mean(d) - mean(d * y) * y) / std over each channel (d: dy in, dx out)."""
    for c in range(channels):
        _channel_sums(d, x_norm, num, channels, spatial, c, sum_dy, sum_dy_y)
    _batch_norm_backward_images(d, x_norm, std, 0, num, channels, spatial, num * spatial, sum_dy, sum_dy_y)


@njit(cache=True, parallel=True)
def batch_norm_backward_parallel(d, x_norm, std, num, channels, spatial, sum_dy, sum_dy_y, shares):
    """batch_norm_backward, the channels' sums and then ``shares`` shares of the images shared among
    the threads: bitwise the same."""
    for c in prange(channels):
        _channel_sums(d, x_norm, num, channels, spatial, c, sum_dy, sum_dy_y)
    for t in prange(shares):
        lo, hi = share(num, t, shares)
        _batch_norm_backward_images(d, x_norm, std, lo, hi, channels, spatial, num * spatial, sum_dy, sum_dy_y)


@njit(cache=True)
def batch_norm_global_backward(d, std, num, channels, spatial):
    """d = d / std_c (global statistics are constants)."""
    for n in range(num):
        for c in range(channels):
            base = (n * channels + c) * spatial
            s = std[c]
            for i in range(spatial):
                d[base + i] = d[base + i] / s


@njit(cache=True, parallel=True)
def batch_norm_global_backward_parallel(d, std, num, channels, spatial, shares):
    """batch_norm_global_backward on ``shares`` shares of the images: bitwise the same."""
    size = channels * spatial
    for t in prange(shares):
        lo, hi = share(num, t, shares)
        batch_norm_global_backward(d[lo * size:hi * size], std, hi - lo, channels, spatial)


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Per-channel normalization with batch or running statistics (see module doc)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.fraction = float(p.moving_average_fraction)
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else self.phase == caffe_pb2.TEST)
        self.eps = float(p.eps)
        self.channels = bottom[0].shape[1] if bottom[0].num_axes > 1 else 1
        if not self.blobs:
            self.blobs = [Blob((self.channels,)), Blob((self.channels,)), Blob((1,))]
        if len(self.blobs) != 3 or [b.count for b in self.blobs] != [self.channels, self.channels, 1]:
            raise ConfigError(f"{self.describe()}: expected 3 blobs (mean, variance, scale factor) of "
                              f"{self.channels}, {self.channels} and 1 values, got "
                              f"{[b.shape for b in self.blobs]}")
        # Mask the statistics from the solver, as Caffe does: lr_mult 0 for each.
        for i in range(len(self.blobs)):
            if len(self.layer_param.param) == i:
                self.layer_param.param.add().lr_mult = 0.0
            elif self.layer_param.param[i].lr_mult != 0.0:
                raise ConfigError(f"{self.describe()}: cannot configure batch normalization statistics "
                                  f"as layer parameters (param {i} has lr_mult "
                                  f"{self.layer_param.param[i].lr_mult}; it must be 0 or unset)")
        self.param_propagate_down = [False] * len(self.blobs)
        self.mean = np.zeros(self.channels, dtype=np.float32)
        self.var = np.zeros(self.channels, dtype=np.float32)
        self.std = np.zeros(self.channels, dtype=np.float32)
        self.sum_dy = np.zeros(self.channels, dtype=np.float32)
        self.sum_dy_y = np.zeros(self.channels, dtype=np.float32)
        self.x_norm = np.zeros(1, dtype=np.float32)   # grown by Reshape when batch statistics need it

    def Reshape(self, bottom, top):
        shape = bottom[0].shape
        channels = shape[1] if len(shape) > 1 else 1
        if len(shape) < 1 or channels != self.channels:
            raise self.shape_error(f"input of shape {shape} has {channels} channels (axis 1); "
                                   f"the layer was set up for {self.channels}")
        self.num = shape[0]
        self.spatial = bottom[0].count // (self.num * self.channels) if self.num * self.channels else 0
        if top[0] is not bottom[0]:
            top[0].reshape(shape)
        if not self.use_global_stats and self.x_norm.size < bottom[0].count:
            self.x_norm = np.zeros(bottom[0].count, dtype=np.float32)

    def Forward_cpu(self, bottom, top):
        x = bottom[0].flat_data
        if self.use_global_stats:
            factor = float(self.blobs[2].flat_data[0])
            scale = 0.0 if factor == 0 else 1.0 / factor
            np.multiply(self.blobs[0].flat_data, np.float32(scale), out=self.mean)
            np.multiply(self.blobs[1].flat_data, np.float32(scale), out=self.var)
        else:
            mean_var = channel_mean_var_parallel if parts(x.size) > 1 else channel_mean_var
            mean_var(x, self.num, self.channels, self.spatial, self.mean, self.var)
            m = x.size // self.channels
            correction = m / (m - 1.0) if m > 1 else 1.0
            update_running_stats(self.mean, self.var, self.fraction, correction, self.blobs[0].flat_data,
                                 self.blobs[1].flat_data, self.blobs[2].flat_data)
        np.add(self.var, np.float32(self.eps), out=self.std)
        np.sqrt(self.std, out=self.std)
        # With global statistics backward needs no x_norm: not writing it saves a third of the traffic.
        keep = not self.use_global_stats
        x_norm = self.x_norm[: x.size] if keep else self.x_norm[:1]
        y = top[0].flat_data
        if top[0] is not bottom[0]:
            np.copyto(y, x)
        shares = min(parts(y.size), self.num)
        if shares > 1:
            batch_norm_forward_parallel(y, self.mean, self.std, self.num, self.channels, self.spatial, x_norm,
                                        keep, shares)
        else:
            batch_norm_forward(y, self.mean, self.std, self.num, self.channels, self.spatial, x_norm, keep)

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].flat_diff
        if top[0] is not bottom[0]:
            np.copyto(dx, top[0].flat_diff)
        wide = parts(dx.size) > 1
        shares = min(parts(dx.size), self.num)
        if self.use_global_stats and shares > 1:
            batch_norm_global_backward_parallel(dx, self.std, self.num, self.channels, self.spatial, shares)
        elif self.use_global_stats:
            batch_norm_global_backward(dx, self.std, self.num, self.channels, self.spatial)
        elif wide:
            batch_norm_backward_parallel(dx, self.x_norm[: dx.size], self.std, self.num, self.channels,
                                         self.spatial, self.sum_dy, self.sum_dy_y, max(shares, 1))
        else:
            batch_norm_backward(dx, self.x_norm[: dx.size], self.std, self.num, self.channels, self.spatial,
                                self.sum_dy, self.sum_dy_y)


# -- MVN kernels ----------------------------------------------------------------------------
@njit(cache=True)
def mvn_forward(x, rows, dim, normalize_variance, eps, y, std):
    """Per row: y = x - mean, then (normalize_variance) y /= sqrt(E(y^2)) + eps."""
    for r in range(rows):
        base = r * dim
        acc = 0.0
        for i in range(dim):
            acc += x[base + i]
        mu = acc / dim
        for i in range(dim):
            y[base + i] = x[base + i] - mu
        if normalize_variance:
            acc = 0.0
            for i in range(dim):
                acc += y[base + i] * y[base + i]
            std[r] = math.sqrt(acc / dim) + eps
            s = std[r]
            for i in range(dim):
                y[base + i] = y[base + i] / s


@njit(cache=True)
def mvn_backward(dy, y, std, rows, dim, normalize_variance, dx):
    """Per row: dx = dy - mean(dy), or (dy - mean(dy) - mean(dy * y) * y) / std (dx may be dy)."""
    for r in range(rows):
        base = r * dim
        a = 0.0
        b = 0.0
        for i in range(dim):
            a += dy[base + i]
            b += dy[base + i] * y[base + i]
        mdy = a / dim
        if normalize_variance:
            mdyy = b / dim
            s = std[r]
            for i in range(dim):
                dx[base + i] = (dy[base + i] - mdy - mdyy * y[base + i]) / s
        else:
            for i in range(dim):
                dx[base + i] = dy[base + i] - mdy


@register("MVN")
class MVNLayer(Layer):
    """Mean (and variance) normalization per (n, c) slice or per sample (see module doc)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        self.std = np.zeros(0, dtype=np.float32)
        self.y = np.zeros(0, dtype=np.float32)

    def Reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 1:
            raise self.shape_error("MVN needs an input with at least a batch axis")
        channels = shape[1] if len(shape) > 1 else 1
        self.rows = shape[0] if self.across_channels else shape[0] * channels
        self.dim = bottom[0].count // self.rows if self.rows else 0
        if top[0] is not bottom[0]:
            top[0].reshape(shape)
        if self.std.size < self.rows:
            self.std = np.zeros(self.rows, dtype=np.float32)
        if self.normalize_variance and self.y.size < bottom[0].count:
            self.y = np.zeros(bottom[0].count, dtype=np.float32)

    def Forward_cpu(self, bottom, top):
        y = top[0].flat_data
        mvn_forward(bottom[0].flat_data, self.rows, self.dim, self.normalize_variance, self.eps, y, self.std)
        if self.normalize_variance:
            # Backward needs y; keep it in case a later in-place layer overwrites the top.
            self.y[: y.size] = y

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].flat_diff
        y = self.y[: dy.size] if self.normalize_variance else dy   # y unused without variance
        mvn_backward(dy, y, self.std, self.rows, self.dim, self.normalize_variance, bottom[0].flat_diff)
