"""Convolution, Deconvolution and Im2col: Caffe's im2col + GEMM convolution.

Notation: a convolution maps an "image" blob of ``C`` channels and spatial
shape ``S`` to a "column" matrix of ``K = C * prod(kernel)`` rows and one column
per output position.  Column ``(n, o)`` of row ``(c, k)`` holds the input pixel
``i_d = o_d * stride_d - pad_d + k_d * dilation_d`` of image ``n``, channel
``c`` (zero outside the image).  Caffe's orders are kept: rows are channel-major
then kernel offsets, columns are output positions in C order.

Convolution (weights ``(M, C/g, *kernel)``, g groups)::

    col = im2col(x);  y[g] = W[g] @ col[g] + b          (per group g)
    dW[g] += dy[g] @ col[g].T;  db += sum(dy);  dx = col2im(W[g].T @ dy[g])

Deconvolution is the same pair run backwards (weights ``(C, M/g, *kernel)``)::

    y = col2im(W[g].T @ x[g]) + b;  dx[g] = W[g] @ im2col(dy)[g];  dW[g] += x[g] @ im2col(dy)[g].T

Output sizes are Caffe's: convolution ``(in + 2 pad - ext) / stride + 1`` with
C's truncating division, deconvolution ``stride (in - 1) + ext - 2 pad``, where
``ext = dilation (kernel - 1) + 1``.

How the work is laid out (measured on LeNet, see bench/bench_conv.py):

* Two spatial axes (the common case): im2col_2d / col2im_2d copy one run of
  pixels per (channel, tap, output row) -- contiguous for stride 1 -- with the
  padding clipped off the run's ends.  Other numbers of axes, and
  ``force_nd_im2col``, gather through a table ``(kernel tap, output position)
  -> input pixel`` built once per geometry (same result, slower).
* The kernels index with unsigned integers: numba wraps negative signed
  indices, a branch per access that kept LLVM from vectorising the short copies
  (a plain run-by-run copy measured 5-17x slower with signed indices; LeNet's
  conv2 im2col: 1.6 ms through the table, 0.64 ms by runs, 0.25 ms NHWC).
* Images with many output positions (``P >= PER_IMAGE_MIN_P``) get one GEMM
  each, as in Caffe, but through numpy's stacked matmul (one call for the
  batch) writing straight into the NCHW top.  Images with few positions are
  batched into one column matrix and one GEMM per chunk.  With one group and
  two axes (LeNet's conv2) the columns are ``(N * P, K)`` rows of NHWC pixels
  ordered (kernel row, kernel column, channel), so each kernel row is one run
  of ``kw * C`` pixels, and the three GEMMs take the forms OpenBLAS runs
  fastest here (``col @ W.T``, ``dy.T @ col``, ``dy @ W``: 4.0 against 4.6 ms
  for the ``(K, N * P)`` layout); jitted transposes to and from NCHW.
  Otherwise ``(K, N * P)`` columns.  Groups are one stacked matmul, never a loop.
* Columns and other scratch arrays live in one workspace per thread, shared
  by all convolution layers (grown, never freed); batches whose columns exceed
  ``COL_LIMIT`` elements run in chunks of images.  When one chunk holds the
  whole batch and no other layer has used the column buffer since, backward
  reuses forward's columns for the weight gradient (in a chain of convolutions,
  the last one).  (Smaller, cache-sized chunks were measured on LeNet:
  no gain that stood out of the noise.)
* Depthwise convolution (``group == channels``, 2-D) skips im2col: the direct
  kernels of layers/depthwise.py, channel multiplier allowed.
* The kernels are serial: on two cores, numba's threads and OpenBLAS's threads
  took the cores from each other (measured 2x slower); the GEMMs use OpenBLAS's.
  Running half the images of the per-image path on a helper thread made conv1
  alone 1.5x faster but LeNet training no faster (10.1 against 10.2-10.4 ms).
"""
import threading

import numpy as np
from numba import njit

from numcaffe.layers.base import Layer, register
from numcaffe.layers.depthwise import (depthwise_backward, depthwise_backward_s1, depthwise_forward,
                                       depthwise_forward_s1)
from numcaffe.layers.depthwise import output_range as _valid_range
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.filler import fill

#: Largest column buffer (in float32 elements) a layer keeps; bigger batches run in chunks.
COL_LIMIT = 1 << 22
#: Output positions per image from which each image gets its own GEMM (else one GEMM per chunk).
PER_IMAGE_MIN_P = 256
#: Elements of the stacked per-image weight-gradient products summed at once.
DW_BATCH_LIMIT = 1 << 20

#: Kernels index with unsigned integers: numba wraps negative signed indices, a branch per
#: access that kept LLVM from vectorising the short copies (im2col measured 5-17x slower).
_u = np.uint64


# ---------------------------------------------------------------------------
# Kernels.  Images are flat NC(spatial) arrays; a column matrix is a flat array
# where element (row, n, o) sits at row * rs + n * ns + o (rs, ns: its strides),
# so one kernel serves both the batched (K, N*P) layout and Im2col's (N, K, P).
# ---------------------------------------------------------------------------

@njit(cache=True)
def build_table(ishape, oshape, kernel, stride, pad, dilation, table):
    """table[k, o] = flat input index read by kernel tap k at output position o, or -1 in the padding.

    Any number of spatial axes; taps and positions are numbered in C order.
    """
    D = ishape.size
    P = 1
    KK = 1
    for d in range(D):
        P *= oshape[d]
        KK *= kernel[d]
    koff = np.empty(D, np.int64)
    for k in range(KK):
        rem = k
        for d in range(D - 1, -1, -1):
            koff[d] = rem % kernel[d]
            rem //= kernel[d]
        for o in range(P):
            rem = o
            idx = 0
            mult = 1
            for d in range(D - 1, -1, -1):
                od = rem % oshape[d]
                rem //= oshape[d]
                i = od * stride[d] - pad[d] + koff[d] * dilation[d]
                if i < 0 or i >= ishape[d]:
                    idx = -1
                    break
                idx += i * mult
                mult *= ishape[d]
            table[k * P + o] = idx


@njit(inline="always")
def _copy(dst, d, src, s, n, step):
    """dst[d + q] = src[s + q * step] for q < n."""
    d, s = _u(d), _u(s)
    if step == 1:
        for q in range(_u(n)):
            dst[d + q] = src[s + q]
    else:
        st = _u(step)
        for q in range(_u(n)):
            dst[d + q] = src[s + q * st]


@njit(inline="always")
def _add_to(dst, d, step, src, s, n):
    """dst[d + q * step] += src[s + q] for q < n."""
    d, s = _u(d), _u(s)
    if step == 1:
        for q in range(_u(n)):
            dst[d + q] += src[s + q]
    else:
        st = _u(step)
        for q in range(_u(n)):
            dst[d + q * st] += src[s + q]


@njit(inline="always")
def _zero(dst, d, n):
    d = _u(d)
    for q in range(_u(n)):
        dst[d + q] = 0.0


@njit(cache=True, nogil=True)
def im2col(img, N, C, isize, KK, P, table, padded, col, rs, ns):
    """col[(c, k), n, o] = img[n, c, table[k, o]] (0 where the table says padding)."""
    for n in range(N):
        for c in range(C):
            src = (n * C + c) * isize
            for k in range(KK):
                t0 = _u(k * P)
                dst = _u((c * KK + k) * rs + n * ns)
                if padded:
                    for o in range(_u(P)):
                        i = table[t0 + o]
                        col[dst + o] = img[_u(src + i)] if i >= 0 else 0.0
                else:
                    for o in range(_u(P)):
                        col[dst + o] = img[_u(src + table[t0 + o])]


@njit(cache=True, nogil=True)
def col2im(col, rs, ns, N, C, isize, KK, P, table, img):
    """img[n, c] = sum over taps and positions of the column entries im2col copied from each pixel."""
    for n in range(N):
        for c in range(C):
            dst = (n * C + c) * isize
            _zero(img, dst, isize)
            for k in range(KK):
                t0 = _u(k * P)
                src = _u((c * KK + k) * rs + n * ns)
                for o in range(_u(P)):
                    i = table[t0 + o]
                    if i >= 0:
                        img[_u(dst + i)] += col[src + o]


@njit(cache=True, nogil=True)
def im2col_2d(img, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, rs, ns):
    """im2col for two spatial axes: each (channel, tap, output row) is one run of input pixels
    (contiguous for stride 1), the padding clipped off each run's ends with _valid_range."""
    for n in range(N):
        for c in range(C):
            src0 = (n * C + c) * H * W
            for i in range(kh):
                hoff = i * dh - ph
                hlo, hhi = _valid_range(Ho, sh, hoff, H)
                for j in range(kw):
                    woff = j * dw - pw
                    wlo, whi = _valid_range(Wo, sw, woff, W)
                    dst0 = ((c * kh + i) * kw + j) * rs + n * ns
                    _zero(col, dst0, hlo * Wo)
                    _zero(col, dst0 + hhi * Wo, (Ho - hhi) * Wo)
                    s0 = src0 + hoff * W + woff + wlo * sw
                    if wlo == 0 and whi == Wo:
                        for oh in range(hlo, hhi):
                            _copy(col, dst0 + oh * Wo, img, s0 + oh * sh * W, Wo, sw)
                    else:
                        for oh in range(hlo, hhi):
                            d = dst0 + oh * Wo
                            _zero(col, d, wlo)
                            _copy(col, d + wlo, img, s0 + oh * sh * W, whi - wlo, sw)
                            _zero(col, d + whi, Wo - whi)


@njit(cache=True, nogil=True)
def col2im_2d(col, rs, ns, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    """col2im for two spatial axes: the runs im2col_2d copied, added back."""
    for n in range(N):
        for c in range(C):
            dst0 = (n * C + c) * H * W
            _zero(img, dst0, H * W)
            for i in range(kh):
                hoff = i * dh - ph
                hlo, hhi = _valid_range(Ho, sh, hoff, H)
                for j in range(kw):
                    woff = j * dw - pw
                    wlo, whi = _valid_range(Wo, sw, woff, W)
                    src0 = ((c * kh + i) * kw + j) * rs + n * ns + wlo
                    d0 = dst0 + hoff * W + woff + wlo * sw
                    for oh in range(hlo, hhi):
                        _add_to(img, d0 + oh * sh * W, sw, col, src0 + oh * Wo, whi - wlo)


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def to_rows(src, N, R, Q, dst, bias_diff, with_bias):
    """dst[r, n*Q + q] = src[n, r, q];  bias_diff[r] += sum over n, q (if with_bias)."""
    for r in range(R):
        s = np.float32(0.0)
        for n in range(N):
            a = _u(n * R + r) * _u(Q)
            b = _u(r * N + n) * _u(Q)
            for q in range(_u(Q)):
                v = src[a + q]
                dst[b + q] = v
                s += v
        if with_bias:
            bias_diff[r] += s


@njit(cache=True, nogil=True)
def from_rows(src, N, R, Q, bias, with_bias, dst):
    """dst[n, r, q] = src[r, n*Q + q] (+ bias[r] if with_bias)."""
    for n in range(N):
        for r in range(R):
            a = _u(r * N + n) * _u(Q)
            b = _u(n * R + r) * _u(Q)
            off = bias[r] if with_bias else np.float32(0.0)
            for q in range(_u(Q)):
                dst[b + q] = src[a + q] + off


@njit(cache=True, nogil=True)
def add_bias(y, N, R, Q, bias):
    """y[n, r, q] += bias[r]."""
    for n in range(N):
        for r in range(R):
            b = bias[r]
            a = _u(n * R + r) * _u(Q)
            for q in range(_u(Q)):
                y[a + q] += b


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def bias_grad(dy, N, R, Q, bias_diff):
    """bias_diff[r] += sum over n, q of dy[n, r, q]."""
    for r in range(R):
        s = np.float32(0.0)
        for n in range(N):
            a = _u(n * R + r) * _u(Q)
            for q in range(_u(Q)):
                s += dy[a + q]
        bias_diff[r] += s


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def to_cols(src, N, R, Q, dst, bias_diff, with_bias):
    """dst[n, q, r] = src[n, r, q] (NCHW -> NHWC);  bias_diff[r] += sum over n, q (if with_bias)."""
    for n in range(N):
        base = _u(n * R * Q)
        for r in range(R):
            a = base + _u(r * Q)
            b = base + _u(r)
            s = np.float32(0.0)
            for q in range(_u(Q)):
                v = src[a + q]
                dst[b + q * _u(R)] = v
                s += v
            if with_bias:
                bias_diff[r] += s


@njit(cache=True, nogil=True)
def from_cols(src, N, R, Q, bias, with_bias, dst):
    """dst[n, r, q] = src[n, q, r] (NHWC -> NCHW) (+ bias[r] if with_bias)."""
    for n in range(N):
        base = _u(n * R * Q)
        for r in range(R):
            a = base + _u(r)
            b = base + _u(r * Q)
            off = bias[r] if with_bias else np.float32(0.0)
            for q in range(_u(Q)):
                dst[b + q] = src[a + q * _u(R)] + off


@njit(cache=True, nogil=True)
def im2col_nhwc(img, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col):
    """col[n, oh, ow, i, j, c] = img[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c] of an NHWC image
    (0 outside): one column row per output position, taps outer and channels inner, so for
    dilation 1 each kernel row is one run of kw * C pixels."""
    K = kh * kw * C
    for n in range(N):
        for oh in range(Ho):
            for ow in range(Wo):
                d0 = ((n * Ho + oh) * Wo + ow) * K
                w0 = ow * sw - pw
                jlo, jhi = _valid_range(kw, dw, w0, W)
                for i in range(kh):
                    h = oh * sh - ph + i * dh
                    d = d0 + i * kw * C
                    if h < 0 or h >= H:
                        _zero(col, d, kw * C)
                        continue
                    s = ((n * H + h) * W + w0) * C
                    _zero(col, d, jlo * C)
                    if dw == 1:
                        _copy(col, d + jlo * C, img, s + jlo * C, (jhi - jlo) * C, 1)
                    else:
                        for j in range(jlo, jhi):
                            _copy(col, d + j * C, img, s + j * dw * C, C, 1)
                    _zero(col, d + jhi * C, (kw - jhi) * C)


@njit(cache=True, nogil=True)
def col2im_nhwc(col, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    """The NHWC image (overwritten) = sum of the column entries im2col_nhwc copied from each pixel."""
    K = kh * kw * C
    _zero(img, 0, N * H * W * C)
    for n in range(N):
        for oh in range(Ho):
            for ow in range(Wo):
                s0 = ((n * Ho + oh) * Wo + ow) * K
                w0 = ow * sw - pw
                jlo, jhi = _valid_range(kw, dw, w0, W)
                for i in range(kh):
                    h = oh * sh - ph + i * dh
                    if h < 0 or h >= H:
                        continue
                    d = ((n * H + h) * W + w0) * C
                    s = s0 + i * kw * C
                    if dw == 1:
                        _add_to(img, d + jlo * C, 1, col, s + jlo * C, (jhi - jlo) * C)
                    else:
                        for j in range(jlo, jhi):
                            _add_to(img, d + j * dw * C, 1, col, s + j * C, C)


# ---------------------------------------------------------------------------
# Parameters.
# ---------------------------------------------------------------------------

def _c_div(a, b):
    """Integer division truncating toward zero, as C's ``/``."""
    q = abs(a) // b
    return q if a >= 0 else -q


def spatial_params(layer, p, num_spatial):
    """(kernel, stride, pad, dilation) lists from a ConvolutionParameter, Caffe's rules."""
    where = layer.describe()

    def per_axis(name, values, default):
        n = len(values)
        if n == 0 and default is not None:
            return [default] * num_spatial
        if n not in (1, num_spatial):
            raise ConfigError(f"{where}: {name} must be given once, or once per spatial axis "
                              f"({name} given {n} times; {num_spatial} spatial axes)")
        return [int(values[0 if n == 1 else i]) for i in range(num_spatial)]

    def legacy(name, h, w, values, default):
        if p.HasField(h) or p.HasField(w):
            if num_spatial != 2:
                raise ConfigError(f"{where}: {h} and {w} can only be used for 2-D convolution "
                                  f"(this input has {num_spatial} spatial axes)")
            if len(values):
                raise ConfigError(f"{where}: give either {name} or {h}/{w}, not both")
            if name == "kernel_size" and not (p.HasField(h) and p.HasField(w)):
                raise ConfigError(f"{where}: a non-square kernel needs both kernel_h and kernel_w")
            return [int(getattr(p, h)), int(getattr(p, w))]
        return per_axis(name, values, default)

    if num_spatial == 0:
        return [], [], [], []
    if not p.HasField("kernel_h") and not p.HasField("kernel_w") and not len(p.kernel_size):
        raise ConfigError(f"{where}: kernel_size (or kernel_h and kernel_w) is required")
    kernel = legacy("kernel_size", "kernel_h", "kernel_w", p.kernel_size, None)
    stride = legacy("stride", "stride_h", "stride_w", p.stride, 1)
    pad = legacy("pad", "pad_h", "pad_w", p.pad, 0)
    dilation = per_axis("dilation", p.dilation, 1)
    for name, vals in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in vals):
            raise ConfigError(f"{where}: {name} must be positive, got {vals}")
    return kernel, stride, pad, dilation


class _Workspace(threading.local):
    """Named float32 scratch arrays shared by every convolution layer that runs on one thread.

    Layers of a thread run one at a time, so one column buffer serves them all
    (Caffe gives each layer its own, which for a deep net -- or LeNet's TRAIN
    and TEST nets -- multiplies the biggest scratch array by the number of
    layers).  Arrays grow to the largest request and are kept; ``COL_LIMIT``
    bounds the biggest.  Each name remembers which layer took it last, so a
    layer knows whether what it wrote there (forward's columns) is still there.
    """

    def __init__(self):
        self.arrays = {}
        self.owners = {}

    def get(self, owner, name, size):
        a = self.arrays.get(name)
        if a is None or a.size < size:
            a = np.zeros(max(int(size), 1), dtype=np.float32)
            self.arrays[name] = a
        self.owners[name] = owner
        return a[:size]


_WORKSPACE = _Workspace()


class _Scratch:
    """One layer's handle on its thread's shared workspace."""

    def __init__(self):
        self.token = object()  # names the layer in the workspace without keeping it alive

    def get(self, name, size):
        return _WORKSPACE.get(self.token, name, size)

    def holds(self, name):
        """Whether no other layer has taken ``name`` since this one did."""
        return _WORKSPACE.owners.get(name) is self.token


class _Im2col:
    """The im2col / col2im pair for one geometry: image (C, *ishape) <-> columns over oshape.

    Two spatial axes (the common case) run im2col_2d / col2im_2d, which copy runs of
    pixels.  Any other number of axes, or ``nd=True`` (``force_nd_im2col``), tabulates the
    map (kernel tap, output position) -> input pixel once and gathers / scatters through it.
    """

    def __init__(self, C, ishape, oshape, kernel, stride, pad, dilation, nd=False):
        as64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        self.C = C
        self.KK = int(np.prod(kernel, dtype=np.int64))
        self.P = int(np.prod(oshape, dtype=np.int64))
        self.isize = int(np.prod(ishape, dtype=np.int64))
        self.rows = C * self.KK
        self.image_size = C * self.isize
        # 1x1, stride 1, no pad: im2col is a plain transpose.
        self.identity = all(k == 1 and s == 1 and q == 0 for k, s, q in zip(kernel, stride, pad))
        self.two_d = len(ishape) == 2 and not nd
        if self.two_d:
            # (H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
            self.args_2d = tuple(int(v) for v in (*ishape, *kernel, *stride, *pad, *dilation, *oshape))
        else:
            self.table = np.empty(self.KK * self.P, dtype=np.int32)
            build_table(as64(ishape), as64(oshape), as64(kernel), as64(stride), as64(pad), as64(dilation),
                        self.table)
            self.padded = bool((self.table < 0).any())

    def im2col(self, img, N, col, rs, ns):
        """Images img[:N] into col, element (row, n, o) at row * rs + n * ns + o."""
        if self.two_d:
            im2col_2d(img, N, self.C, *self.args_2d, col, rs, ns)
        else:
            im2col(img, N, self.C, self.isize, self.KK, self.P, self.table, self.padded, col, rs, ns)

    def col2im(self, col, rs, ns, N, img):
        if self.two_d:
            col2im_2d(col, rs, ns, N, self.C, *self.args_2d, img)
        else:
            col2im(col, rs, ns, N, self.C, self.isize, self.KK, self.P, self.table, img)

    def to_columns(self, img, N, col):
        """The batched layout (rows, N * P) of images img[:N]."""
        if self.identity:
            to_rows(img, N, self.rows, self.P, col, _NO_BIAS, False)
        else:
            self.im2col(img, N, col, N * self.P, self.P)

    def from_columns(self, col, N, img):
        """img[:N] = col2im of the batched layout."""
        if self.identity:
            from_rows(col, N, self.rows, self.P, _NO_BIAS, False, img)
        else:
            self.col2im(col, N * self.P, self.P, N, img)


_NO_BIAS = np.zeros(1, dtype=np.float32)


def _gemm(a, b, out):
    """out[g] = a[g] @ b[g] for stacked matrices; a plain 2-D GEMM when there is one group."""
    if a.shape[0] == 1:
        np.matmul(a[0], b[0], out=out[0])
    else:
        np.matmul(a, b, out=out)


class BaseConvolutionLayer(Layer):
    """What Convolution and Deconvolution share: parameters, weights, shapes, buffers."""

    min_num_bottom = 1
    min_num_top = 1
    equal_num_bottom_top = True
    #: Deconvolution: the weights map outputs to inputs.
    reverse = False

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.convolution_param
        self.channel_axis = bottom[0].canonical_axis(p.axis)
        self.num_spatial = bottom[0].num_axes - self.channel_axis - 1
        self.kernel, self.stride, self.pad, self.dilation = spatial_params(self, p, self.num_spatial)
        self.force_nd = p.force_nd_im2col
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = p.num_output
        self.group = p.group
        if self.num_output <= 0:
            raise ConfigError(f"{self.describe()}: num_output must be positive")
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise ConfigError(f"{self.describe()}: group {self.group} must divide both the input "
                              f"channels ({self.channels}) and num_output ({self.num_output})")
        out_ch, in_ch = ((self.channels, self.num_output) if self.reverse
                         else (self.num_output, self.channels))
        weight_shape = (out_ch, in_ch // self.group, *self.kernel)
        self.bias_term = p.bias_term
        if self.blobs:
            if len(self.blobs) != 1 + self.bias_term:
                raise ConfigError(f"{self.describe()}: expected {1 + self.bias_term} parameter blobs "
                                  f"(weights{' and bias' if self.bias_term else ''}), got {len(self.blobs)}")
            if self.blobs[0].shape != weight_shape:
                raise ConfigError(f"{self.describe()}: weight shape must be {weight_shape}, "
                                  f"got {self.blobs[0].shape}")
            if self.bias_term and self.blobs[1].shape != (self.num_output,):
                raise ConfigError(f"{self.describe()}: bias shape must be ({self.num_output},), "
                                  f"got {self.blobs[1].shape}")
        else:
            self.blobs = [Blob(weight_shape)]
            fill(self.blobs[0], p.weight_filler, self.random)
            if self.bias_term:
                self.blobs.append(Blob((self.num_output,)))
                fill(self.blobs[1], p.bias_filler, self.random)
        self.buffers = _Scratch()
        self._geometry_key = None

    def output_spatial(self, in_shape):
        out = []
        for i, n in enumerate(in_shape):
            ext = self.dilation[i] * (self.kernel[i] - 1) + 1
            if self.reverse:
                out.append(self.stride[i] * (n - 1) + ext - 2 * self.pad[i])
            else:
                out.append(_c_div(n + 2 * self.pad[i] - ext, self.stride[i]) + 1)
        return out

    def Reshape(self, bottom, top):
        b0 = bottom[0]
        ax = self.channel_axis
        if b0.num_axes != ax + 1 + self.num_spatial:
            raise self.shape_error(f"the input must keep {ax + 1 + self.num_spatial} axes, got shape {b0.shape}")
        if b0.shape[ax] != self.channels:
            raise self.shape_error(f"the input has {b0.shape[ax]} channels; the weights were made "
                                   f"for {self.channels}")
        for b in bottom[1:]:
            if b.shape != b0.shape:
                raise self.shape_error(f"all inputs must have the same shape; got {b0.shape} and {b.shape}")
        in_spatial = list(b0.shape[ax + 1:])
        out_spatial = self.output_spatial(in_spatial)
        if any(o <= 0 for o in out_spatial):
            raise self.shape_error(f"input of spatial shape {tuple(in_spatial)} gives output "
                                   f"{tuple(out_spatial)} with kernel {self.kernel}, stride "
                                   f"{self.stride}, pad {self.pad}, dilation {self.dilation}")
        top_shape = (*b0.shape[:ax], self.num_output, *out_spatial)
        for t in top:
            if any(t is b for b in bottom):
                raise self.shape_error("cannot run in place")
            t.reshape(top_shape)
        self.num = b0.count_range(0, ax)
        key = (self.num, tuple(in_spatial))
        if key != self._geometry_key:
            self._geometry_key = key
            self.setup_geometry(in_spatial, out_spatial)

    def setup_geometry(self, in_spatial, out_spatial):
        # The convolution's "image" side and "column" side; Deconvolution swaps them.
        if self.reverse:
            img_ch, img_sp, col_sp = self.num_output, out_spatial, in_spatial
        else:
            img_ch, img_sp, col_sp = self.channels, in_spatial, out_spatial
        self.in_spatial, self.out_spatial = in_spatial, out_spatial
        self.depthwise = (not self.reverse and self.num_spatial == 2
                          and self.group == self.channels and self.group > 1)
        if self.depthwise:
            return
        self.geo = _Im2col(img_ch, img_sp, col_sp, self.kernel, self.stride, self.pad, self.dilation,
                           nd=self.force_nd)
        per_image = self.geo.rows * self.geo.P
        self.chunk = max(1, min(self.num, COL_LIMIT // max(per_image, 1)))

    def _chunks(self):
        N, chunk = self.num, self.chunk
        return [(n0, min(chunk, N - n0)) for n0 in range(0, N, chunk)]

    def _depthwise_args_s1(self):
        return (*self.in_spatial, self.blobs[0].flat_data, self.num_output, *self.kernel, *self.pad,
                *self.dilation, *self.out_spatial)

    def _depthwise_args(self):
        return (*self.in_spatial, self.blobs[0].flat_data, self.num_output, *self.kernel, *self.stride,
                *self.pad, *self.dilation, *self.out_spatial)


@register("Convolution")
class ConvolutionLayer(BaseConvolutionLayer):
    """y[n, m] = b[m] + sum over c in m's group and kernel taps of W[m, c, k] x[n, c, o*s - p + k*d]."""

    def setup_geometry(self, in_spatial, out_spatial):
        super().setup_geometry(in_spatial, out_spatial)
        self.per_image = self.nhwc = False
        if not self.depthwise:
            # Many output positions per image: one GEMM per image (numpy's stacked matmul) straight
            # into NCHW.  Few: one GEMM for the whole chunk in the (rows, N*P) layout.
            self.per_image = self.geo.P >= PER_IMAGE_MIN_P
            # Few positions, two axes, one group: NHWC columns, one (N*P, K) matrix, whose three
            # GEMMs OpenBLAS runs faster and whose im2col copies runs of kw * C pixels.
            self.nhwc = not self.per_image and self.geo.two_d and self.group == 1
        self._cached = False

    def _nhwc_columns(self, x, n0, n):
        """The (n * P, K) columns of images n0 .. n0+n, rows (oh, ow), columns (i, j, c)."""
        geo = self.geo
        xh = self.buffers.get("nhwc", n * geo.image_size)
        to_cols(x[n0 * geo.image_size:(n0 + n) * geo.image_size], n, geo.C, geo.isize, xh, _NO_BIAS, False)
        col = self.buffers.get("col", geo.rows * self.chunk * geo.P)[:geo.rows * n * geo.P]
        im2col_nhwc(xh, n, geo.C, *geo.args_2d, col)
        return col.reshape(n * geo.P, geo.rows)

    def _nhwc_weights(self):
        """The weights (M, C, taps) reordered to the NHWC columns' (M, taps, C)."""
        M, C = self.num_output, self.channels
        Wp = self.buffers.get("w_nhwc", self.blobs[0].count).reshape(M, -1, C)
        np.copyto(Wp, self.blobs[0].data.reshape(M, C, -1).transpose(0, 2, 1))
        return Wp.reshape(M, -1)

    def _columns(self, x, n0, n, col):
        """The columns of images n0 .. n0+n: (n, K, P) per image, or (K, n*P) batched."""
        geo = self.geo
        xs = x[n0 * geo.image_size:(n0 + n) * geo.image_size]
        if self.per_image:
            if geo.identity:
                return xs
            geo.im2col(xs, n, col, geo.P, geo.rows * geo.P)
        else:
            geo.to_columns(xs, n, col)
        return col

    def Forward_cpu(self, bottom, top):
        bias = self.blobs[1].flat_data if self.bias_term else _NO_BIAS
        if self.depthwise:
            for b, t in zip(bottom, top):
                if self.stride == [1, 1]:
                    depthwise_forward_s1(b.flat_data, self.num, self.channels, *self._depthwise_args_s1(),
                                         bias, self.bias_term, t.flat_data)
                else:
                    depthwise_forward(b.flat_data, self.num, self.channels, *self._depthwise_args(),
                                      bias, self.bias_term, t.flat_data)
            return
        geo = self.geo
        G, M, K, P = self.group, self.num_output, geo.rows, geo.P
        if self.nhwc:
            Wp = self._nhwc_weights()
            for b, t in zip(bottom, top):
                for n0, n in self._chunks():
                    out = self.buffers.get("rows", n * P * M).reshape(n * P, M)
                    np.matmul(self._nhwc_columns(b.flat_data, n0, n), Wp.T, out=out)
                    from_cols(out.reshape(-1), n, M, P, bias, self.bias_term, t.flat_data[n0 * M * P:(n0 + n) * M * P])
            self._cached = len(bottom) == 1 and self.chunk >= self.num
            return
        Mg, Kg = M // G, K // G
        Wg = self.blobs[0].flat_data.reshape(G, Mg, Kg)
        col_buf = self.buffers.get("col", K * self.chunk * P)
        for b, t in zip(bottom, top):
            x, y = b.flat_data, t.flat_data
            for n0, n in self._chunks():
                col = self._columns(x, n0, n, col_buf[:K * n * P])
                ys = y[n0 * M * P:(n0 + n) * M * P]
                if self.per_image:
                    if G == 1:
                        np.matmul(Wg[0], col.reshape(n, K, P), out=ys.reshape(n, M, P))
                    else:
                        np.matmul(Wg, col.reshape(n, G, Kg, P), out=ys.reshape(n, G, Mg, P))
                    if self.bias_term:
                        add_bias(ys, n, M, P, bias)
                else:
                    out = self.buffers.get("rows", M * n * P)
                    _gemm(Wg, col.reshape(G, Kg, n * P), out.reshape(G, Mg, n * P))
                    from_rows(out, n, M, P, bias, self.bias_term, ys)
        # One chunk holds every image: backward reuses these columns for the weight gradient.
        self._cached = len(bottom) == 1 and self.chunk >= self.num

    def Backward_cpu(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        db = self.blobs[1].flat_diff if self.bias_term else _NO_BIAS
        if self.depthwise:
            for i, (b, t) in enumerate(zip(bottom, top)):
                if want_b:
                    bias_grad(t.flat_diff, self.num, self.num_output, t.count // (self.num * self.num_output), db)
                if not (want_w or propagate_down[i]):
                    continue
                if self.stride == [1, 1]:
                    depthwise_backward_s1(b.flat_data, t.flat_diff, self.num, self.channels,
                                          *self._depthwise_args_s1(), self.blobs[0].flat_diff, want_w,
                                          b.flat_diff, propagate_down[i])
                else:
                    depthwise_backward(b.flat_data, t.flat_diff, self.num, self.channels, *self._depthwise_args(),
                                       self.blobs[0].flat_diff, want_w, b.flat_diff, propagate_down[i])
            return
        geo = self.geo
        G, M, K, P = self.group, self.num_output, geo.rows, geo.P
        if self.nhwc:
            return self._backward_nhwc(top, propagate_down, bottom, want_w, want_b, db)
        Mg, Kg = M // G, K // G
        WgT = self.blobs[0].flat_data.reshape(G, Mg, Kg).transpose(0, 2, 1)
        dW = self.blobs[0].flat_diff
        self._cached = self._cached and self.buffers.holds("col")
        col_buf = self.buffers.get("col", K * self.chunk * P)
        dW_tmp = self.buffers.get("dW", M * Kg).reshape(G, Mg, Kg)
        dWT_tmp = self.buffers.get("dW", M * Kg).reshape(G, Kg, Mg)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy, x, dx = t.flat_diff, b.flat_data, b.flat_diff
            if want_b and (self.per_image or not (want_w or propagate_down[i])):
                bias_grad(dy, self.num, M, P, db)
            if not (want_w or propagate_down[i]):
                continue
            for n0, n in self._chunks():
                dys = dy[n0 * M * P:(n0 + n) * M * P]
                dxs = dx[n0 * geo.image_size:(n0 + n) * geo.image_size]
                col = col_buf[:K * n * P]
                if self.per_image:
                    dy4 = dys.reshape(n, G, Mg, P)
                    if want_w:
                        if not self._cached or geo.identity:
                            col = self._columns(x, n0, n, col)
                        self._weight_grad_per_image(dy4, col.reshape(n, G, Kg, P), dW_tmp)
                        dW += dW_tmp.reshape(-1)
                    if propagate_down[i]:
                        if geo.identity:
                            np.matmul(WgT, dy4, out=dxs.reshape(n, G, Kg, P))
                        else:
                            np.matmul(WgT, dy4, out=col.reshape(n, G, Kg, P))
                            self._cached = False
                            geo.col2im(col, P, K * P, n, dxs)
                else:
                    rows = self.buffers.get("rows", M * n * P)
                    to_rows(dys, n, M, P, rows, db, want_b)
                    rows_g = rows.reshape(G, Mg, n * P)
                    if want_w:
                        if not self._cached:
                            col = self._columns(x, n0, n, col)
                        # dW.T = col @ rows.T: OpenBLAS runs this form faster than rows @ col.T
                        # (conv2 of LeNet: 1.4 against 2.1 ms).
                        _gemm(col.reshape(G, Kg, n * P), rows_g.transpose(0, 2, 1), dWT_tmp)
                        dW.reshape(G, Mg, Kg)[...] += dWT_tmp.transpose(0, 2, 1)
                    if propagate_down[i]:
                        _gemm(WgT, rows_g, col.reshape(G, Kg, n * P))
                        self._cached = False
                        geo.from_columns(col, n, dxs)
            self._cached = False

    def _backward_nhwc(self, top, propagate_down, bottom, want_w, want_b, db):
        geo = self.geo
        M, K, P, C = self.num_output, geo.rows, geo.P, geo.C
        self._cached = self._cached and self.buffers.holds("col")
        Wp = self._nhwc_weights()
        dW = self.blobs[0].diff.reshape(M, C, -1)
        dWp = self.buffers.get("dW", M * K).reshape(M, K)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy, x, dx = t.flat_diff, b.flat_data, b.flat_diff
            if not (want_w or propagate_down[i]):
                if want_b:
                    bias_grad(dy, self.num, M, P, db)
                continue
            for n0, n in self._chunks():
                dyT = self.buffers.get("rows", n * P * M)
                to_cols(dy[n0 * M * P:(n0 + n) * M * P], n, M, P, dyT, db, want_b)
                dyT = dyT.reshape(n * P, M)
                col = self.buffers.get("col", K * self.chunk * P)[:K * n * P].reshape(n * P, K)
                if want_w:
                    if not self._cached:
                        col = self._nhwc_columns(x, n0, n)
                    np.matmul(dyT.T, col, out=dWp)
                    dW += dWp.reshape(M, -1, C).transpose(0, 2, 1)
                if propagate_down[i]:
                    np.matmul(dyT, Wp, out=col)
                    self._cached = False
                    xh = self.buffers.get("nhwc", n * geo.image_size)
                    col2im_nhwc(col.reshape(-1), n, C, *geo.args_2d, xh)
                    from_cols(xh, n, C, geo.isize, _NO_BIAS, False, dx[n0 * geo.image_size:(n0 + n) * geo.image_size])
            self._cached = False

    def _weight_grad_per_image(self, dy4, col4, out):
        """out = sum over images n of dy[n] @ col[n].T (per group), a few images per stacked GEMM."""
        n, G, Mg, P = dy4.shape
        Kg = col4.shape[2]
        step = max(1, min(n, DW_BATCH_LIMIT // max(G * Mg * Kg, 1)))
        tmp = self.buffers.get("dWstack", step * G * Mg * Kg)
        part = self.buffers.get("dWpart", G * Mg * Kg).reshape(G, Mg, Kg)
        out[...] = 0.0
        for s in range(0, n, step):
            k = min(step, n - s)
            t4 = tmp[:k * G * Mg * Kg].reshape(k, G, Mg, Kg)
            np.matmul(dy4[s:s + k], col4[s:s + k].transpose(0, 1, 3, 2), out=t4)
            np.sum(t4, axis=0, out=part)
            out += part


@register("Deconvolution")
class DeconvolutionLayer(BaseConvolutionLayer):
    """The transpose of Convolution: y = col2im(W.T @ x) + b, weights (C_in, num_output/g, *kernel)."""

    reverse = True

    def Forward_cpu(self, bottom, top):
        geo = self.geo
        G, C, K, P = self.group, self.channels, geo.rows, geo.P  # P: input positions; K: outputs x taps
        Cg, Kg = C // G, K // G
        Wt = self.blobs[0].flat_data.reshape(G, Cg, Kg).transpose(0, 2, 1)
        xrows_buf = self.buffers.get("xrows", C * self.chunk * P)
        col_buf = self.buffers.get("col", K * self.chunk * P)
        for b, t in zip(bottom, top):
            x, y = b.flat_data, t.flat_data
            for n0, n in self._chunks():
                xrows, col = xrows_buf[:C * n * P], col_buf[:K * n * P]
                to_rows(x[n0 * C * P:(n0 + n) * C * P], n, C, P, xrows, _NO_BIAS, False)
                _gemm(Wt, xrows.reshape(G, Cg, n * P), col.reshape(G, Kg, n * P))
                geo.from_columns(col, n, y[n0 * geo.image_size:(n0 + n) * geo.image_size])
            if self.bias_term:
                add_bias(y, self.num, self.num_output, geo.isize, self.blobs[1].flat_data)

    def Backward_cpu(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        geo = self.geo
        G, C, K, P = self.group, self.channels, geo.rows, geo.P
        Cg, Kg = C // G, K // G
        Wg = self.blobs[0].flat_data.reshape(G, Cg, Kg)
        dW = self.blobs[0].flat_diff
        xrows_buf = self.buffers.get("xrows", C * self.chunk * P)
        col_buf = self.buffers.get("col", K * self.chunk * P)
        dW_tmp = self.buffers.get("dW", C * Kg).reshape(G, Cg, Kg)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.flat_diff
            if want_b:
                bias_grad(dy, self.num, self.num_output, geo.isize, self.blobs[1].flat_diff)
            if not (want_w or propagate_down[i]):
                continue
            x, dx = b.flat_data, b.flat_diff
            for n0, n in self._chunks():
                xrows, col = xrows_buf[:C * n * P], col_buf[:K * n * P]
                geo.to_columns(dy[n0 * geo.image_size:(n0 + n) * geo.image_size], n, col)
                col_g = col.reshape(G, Kg, n * P)
                if want_w:
                    to_rows(x[n0 * C * P:(n0 + n) * C * P], n, C, P, xrows, _NO_BIAS, False)
                    _gemm(xrows.reshape(G, Cg, n * P), col_g.transpose(0, 2, 1), dW_tmp)
                    dW += dW_tmp.reshape(-1)
                if propagate_down[i]:
                    _gemm(Wg, col_g, xrows.reshape(G, Cg, n * P))
                    from_rows(xrows, n, C, P, _NO_BIAS, False, dx[n0 * C * P:(n0 + n) * C * P])


@register("Im2col")
class Im2colLayer(Layer):
    """top[n, (c, k), o] = x[n, c, o*stride - pad + k*dilation] (0 outside): im2col as a layer."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.convolution_param
        self.channel_axis = bottom[0].canonical_axis(p.axis)
        self.num_spatial = bottom[0].num_axes - self.channel_axis - 1
        if self.num_spatial < 1:
            raise self.shape_error(f"needs at least one spatial axis after the channel axis; "
                                   f"got shape {bottom[0].shape}")
        self.kernel, self.stride, self.pad, self.dilation = spatial_params(self, p, self.num_spatial)
        self.force_nd = p.force_nd_im2col
        self._key = None

    def Reshape(self, bottom, top):
        b = bottom[0]
        ax = self.channel_axis
        if b.num_axes != ax + 1 + self.num_spatial:
            raise self.shape_error(f"the input must keep {ax + 1 + self.num_spatial} axes, got shape {b.shape}")
        if top[0] is b:
            raise self.shape_error("cannot run in place")
        ins = list(b.shape[ax + 1:])
        outs = []
        for i, n in enumerate(ins):
            ext = self.dilation[i] * (self.kernel[i] - 1) + 1
            outs.append(_c_div(n + 2 * self.pad[i] - ext, self.stride[i]) + 1)
        if any(o <= 0 for o in outs):
            raise self.shape_error(f"input of spatial shape {tuple(ins)} gives output {tuple(outs)}")
        C = b.shape[ax]
        top[0].reshape((*b.shape[:ax], C * int(np.prod(self.kernel)), *outs))
        self.num = b.count_range(0, ax)
        key = (C, tuple(ins))
        if key != self._key:
            self._key = key
            self.geo = _Im2col(C, ins, outs, self.kernel, self.stride, self.pad, self.dilation,
                               nd=self.force_nd)

    def Forward_cpu(self, bottom, top):
        g = self.geo
        g.im2col(bottom[0].flat_data, self.num, top[0].flat_data, g.P, g.rows * g.P)

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = self.geo
            g.col2im(top[0].flat_diff, g.P, g.rows * g.P, self.num, bottom[0].flat_diff)
