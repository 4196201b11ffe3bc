"""Image <-> column copies (im2col / col2im) and the layouts convolution's GEMMs read, and the Im2col layer.

A convolution maps an "image" blob of ``C`` channels and spatial shape ``S``
to a "column" matrix of ``K = C * prod(kernel)`` rows and one column per
output position.  Column ``(n, o)`` of row ``(c, k)`` holds the input pixel
``i_d = o_d * stride_d - pad_d + k_d * dilation_d`` of image ``n``, channel
``c`` (zero outside the image).  Caffe's orders are kept: rows are
channel-major then kernel offsets, columns are output positions in C order.
im2col writes the columns of a batch; col2im adds columns back into images
(the transpose, used by backward and by Deconvolution's forward).

* Two spatial axes (the common case): im2col_2d / col2im_2d copy one run of
  pixels per (channel, tap, output row) -- contiguous for stride 1 -- with the
  padding clipped off the run's ends.  Other numbers of axes, and
  ``force_nd_im2col``, gather through a table ``(kernel tap, output position)
  -> input pixel`` built once per geometry (same result, slower).
* im2col_nhwc / col2im_nhwc write ``(N * P, K)`` rows of NHWC pixels ordered
  (kernel row, kernel column, channel), so each kernel row is one run of
  ``kw * C`` pixels; to_cols / from_cols transpose to and from NCHW, to_rows /
  from_rows to and from the ``(K, N * P)`` layout (see layers/conv.py for which
  layout a convolution takes).
* The kernels index with unsigned integers: numba wraps negative signed
  indices, a branch per access that kept LLVM from vectorising the short copies
  (a plain run-by-run copy measured 5-17x slower with signed indices; LeNet's
  conv2 im2col: 1.6 ms through the table, 0.64 ms by runs, 0.25 ms NHWC).

Parameters and output sizes are Caffe's (layers/geometry.py).
"""
import numpy as np
from numba import njit, prange

from numcaffe.layers.base import Layer, register
from numcaffe.layers.geometry import conv_output_shape, conv_window, output_range
from numcaffe.layers.parallel import pick, twin_of

#: The bias argument of the layout kernels when there is none.
NO_BIAS = np.zeros(1, dtype=np.float32)

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


@njit(inline="always")
def _im2col_plane(img, n, c, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, rs, ns):
    """The column rows of image n, channel c: one run of input pixels per (tap, output row)."""
    src0 = (n * C + c) * H * W
    for i in range(kh):
        hoff = i * dh - ph
        hlo, hhi = output_range(Ho, sh, hoff, H)
        for j in range(kw):
            woff = j * dw - pw
            wlo, whi = output_range(Wo, sw, woff, W)
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
def im2col_2d(img, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, rs, ns):
    """im2col for two spatial axes: each (channel, tap, output row) is one run of input pixels
    (contiguous for stride 1), the padding clipped off each run's ends with output_range."""
    for n in range(N):
        for c in range(C):
            _im2col_plane(img, n, c, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, rs, ns)


@twin_of(im2col_2d)
@njit(cache=True, nogil=True, parallel=True)
def im2col_2d_parallel(img, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, rs, ns):
    """im2col_2d with the (image, channel) planes shared among the threads: bitwise the same."""
    for nc in prange(N * C):
        _im2col_plane(img, nc // C, nc % C, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col, rs, ns)


@njit(inline="always")
def _col2im_plane(col, rs, ns, n, c, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    """Image n, channel c (overwritten) = the sum of the column runs im2col copied from it."""
    dst0 = (n * C + c) * H * W
    _zero(img, dst0, H * W)
    for i in range(kh):
        hoff = i * dh - ph
        hlo, hhi = output_range(Ho, sh, hoff, H)
        for j in range(kw):
            woff = j * dw - pw
            wlo, whi = output_range(Wo, sw, woff, W)
            src0 = ((c * kh + i) * kw + j) * rs + n * ns + wlo
            d0 = dst0 + hoff * W + woff + wlo * sw
            for oh in range(hlo, hhi):
                _add_to(img, d0 + oh * sh * W, sw, col, src0 + oh * Wo, whi - wlo)


@njit(cache=True, nogil=True)
def col2im_2d(col, rs, ns, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    """col2im for two spatial axes: the runs im2col_2d copied, added back."""
    for n in range(N):
        for c in range(C):
            _col2im_plane(col, rs, ns, n, c, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img)


@twin_of(col2im_2d)
@njit(cache=True, nogil=True, parallel=True)
def col2im_2d_parallel(col, rs, ns, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    """col2im_2d with the (image, channel) planes shared among the threads (each writes only its
    own plane, in the same order): bitwise the same."""
    for nc in prange(N * C):
        _col2im_plane(col, rs, ns, nc // C, nc % C, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img)


@njit(inline="always")
def _to_row(src, N, R, Q, r, dst, bias_diff, with_bias):
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


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def to_rows(src, N, R, Q, dst, bias_diff, with_bias):
    """dst[r, n*Q + q] = src[n, r, q];  bias_diff[r] += sum over n, q (if with_bias)."""
    for r in range(R):
        _to_row(src, N, R, Q, r, dst, bias_diff, with_bias)


@twin_of(to_rows)
@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"}, parallel=True)
def to_rows_parallel(src, N, R, Q, dst, bias_diff, with_bias):
    """to_rows with the rows r shared among the threads: bitwise the same."""
    for r in prange(R):
        _to_row(src, N, R, Q, r, dst, bias_diff, with_bias)


@njit(inline="always")
def _from_row(src, N, R, Q, nr, bias, with_bias, dst):
    n, r = nr // R, nr % R
    a = _u(r * N + n) * _u(Q)
    b = _u(nr) * _u(Q)
    off = bias[r] if with_bias else np.float32(0.0)
    for q in range(_u(Q)):
        dst[b + q] = src[a + q] + off


@njit(cache=True, nogil=True)
def from_rows(src, N, R, Q, bias, with_bias, dst):
    """dst[n, r, q] = src[r, n*Q + q] (+ bias[r] if with_bias)."""
    for nr in range(N * R):
        _from_row(src, N, R, Q, nr, bias, with_bias, dst)


@twin_of(from_rows)
@njit(cache=True, nogil=True, parallel=True)
def from_rows_parallel(src, N, R, Q, bias, with_bias, dst):
    """from_rows with the (n, r) rows shared among the threads: bitwise the same."""
    for nr in prange(N * R):
        _from_row(src, N, R, Q, nr, bias, with_bias, dst)


@njit(inline="always")
def _add_bias_row(y, R, Q, nr, bias):
    b = bias[nr % R]
    a = _u(nr) * _u(Q)
    for q in range(_u(Q)):
        y[a + q] += b


@njit(cache=True, nogil=True)
def add_bias(y, N, R, Q, bias):
    """y[n, r, q] += bias[r]."""
    for nr in range(N * R):
        _add_bias_row(y, R, Q, nr, bias)


@twin_of(add_bias)
@njit(cache=True, nogil=True, parallel=True)
def add_bias_parallel(y, N, R, Q, bias):
    """add_bias with the (n, r) rows shared among the threads: bitwise the same."""
    for nr in prange(N * R):
        _add_bias_row(y, R, Q, nr, bias)


@njit(inline="always")
def _bias_grad_row(dy, N, R, Q, r, bias_diff):
    s = np.float32(0.0)
    for n in range(N):
        a = _u(n * R + r) * _u(Q)
        for q in range(_u(Q)):
            s += dy[a + q]
    bias_diff[r] += s


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def bias_grad(dy, N, R, Q, bias_diff):
    """bias_diff[r] += sum over n, q of dy[n, r, q]."""
    for r in range(R):
        _bias_grad_row(dy, N, R, Q, r, bias_diff)


@twin_of(bias_grad)
@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"}, parallel=True)
def bias_grad_parallel(dy, N, R, Q, bias_diff):
    """bias_grad with the rows r shared among the threads: bitwise the same."""
    for r in prange(R):
        _bias_grad_row(dy, N, R, Q, r, bias_diff)


@njit(inline="always")
def _to_col_row(src, R, Q, n, r, dst, bias_diff, with_bias):
    base = _u(n * R * Q)
    a = base + _u(r * Q)
    b = base + _u(r)
    s = np.float32(0.0)
    for q in range(_u(Q)):
        v = src[a + q]
        dst[b + q * _u(R)] = v
        s += v
    if with_bias:
        bias_diff[r] += s


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def to_cols(src, N, R, Q, dst, bias_diff, with_bias):
    """dst[n, q, r] = src[n, r, q] (NCHW -> NHWC);  bias_diff[r] += sum over n, q (if with_bias)."""
    for n in range(N):
        for r in range(R):
            _to_col_row(src, R, Q, n, r, dst, bias_diff, with_bias)


@twin_of(to_cols)
@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"}, parallel=True)
def to_cols_parallel(src, N, R, Q, dst, bias_diff, with_bias):
    """to_cols with the channels r shared among the threads (each adds its images in order):
    bitwise the same."""
    for r in prange(R):
        for n in range(N):
            _to_col_row(src, R, Q, n, r, dst, bias_diff, with_bias)


@njit(inline="always")
def _from_col_row(src, R, Q, nr, bias, with_bias, dst):
    n, r = nr // R, nr % R
    a = _u(n * R * Q) + _u(r)
    b = _u(nr) * _u(Q)
    off = bias[r] if with_bias else np.float32(0.0)
    for q in range(_u(Q)):
        dst[b + q] = src[a + q * _u(R)] + off


@njit(cache=True, nogil=True)
def from_cols(src, N, R, Q, bias, with_bias, dst):
    """dst[n, r, q] = src[n, q, r] (NHWC -> NCHW) (+ bias[r] if with_bias)."""
    for nr in range(N * R):
        _from_col_row(src, R, Q, nr, bias, with_bias, dst)


@twin_of(from_cols)
@njit(cache=True, nogil=True, parallel=True)
def from_cols_parallel(src, N, R, Q, bias, with_bias, dst):
    """from_cols with the (n, r) rows shared among the threads: bitwise the same."""
    for nr in prange(N * R):
        _from_col_row(src, R, Q, nr, bias, with_bias, dst)


@njit(inline="always")
def _im2col_nhwc_row(img, n, oh, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col):
    K = kh * kw * C
    for ow in range(Wo):
        d0 = ((n * Ho + oh) * Wo + ow) * K
        w0 = ow * sw - pw
        jlo, jhi = output_range(kw, dw, w0, W)
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
def im2col_nhwc(img, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col):
    """col[n, oh, ow, i, j, c] = img[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c] of an NHWC image
    (0 outside): one column row per output position, taps outer and channels inner, so for
    dilation 1 each kernel row is one run of kw * C pixels."""
    for n in range(N):
        for oh in range(Ho):
            _im2col_nhwc_row(img, n, oh, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col)


@twin_of(im2col_nhwc)
@njit(cache=True, nogil=True, parallel=True)
def im2col_nhwc_parallel(img, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col):
    """im2col_nhwc with the (image, output row) pairs shared among the threads: bitwise the same."""
    for noh in prange(N * Ho):
        _im2col_nhwc_row(img, noh // Ho, noh % Ho, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, col)


@njit(inline="always")
def _col2im_nhwc_image(col, n, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    K = kh * kw * C
    for oh in range(Ho):
        for ow in range(Wo):
            s0 = ((n * Ho + oh) * Wo + ow) * K
            w0 = ow * sw - pw
            jlo, jhi = output_range(kw, dw, w0, W)
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


@njit(cache=True, nogil=True)
def col2im_nhwc(col, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    """The NHWC image (overwritten) = sum of the column entries im2col_nhwc copied from each pixel."""
    _zero(img, 0, N * H * W * C)
    for n in range(N):
        _col2im_nhwc_image(col, n, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img)


@twin_of(col2im_nhwc)
@njit(cache=True, nogil=True, parallel=True)
def col2im_nhwc_parallel(col, N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img):
    """col2im_nhwc with the images shared among the threads (windows overlap within an image, not
    across images): bitwise the same."""
    for n in prange(N):
        _zero(img, n * H * W * C, H * W * C)
        _col2im_nhwc_image(col, n, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, img)


class Im2colGeometry:
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
            pick(im2col_2d, N * self.rows * self.P)(img, N, self.C, *self.args_2d, col, rs, ns)
        else:
            im2col(img, N, self.C, self.isize, self.KK, self.P, self.table, self.padded, col, rs, ns)

    def col2im(self, col, rs, ns, N, img):
        if self.two_d:
            pick(col2im_2d, N * self.rows * self.P)(col, rs, ns, N, self.C, *self.args_2d, img)
        else:
            col2im(col, rs, ns, N, self.C, self.isize, self.KK, self.P, self.table, img)

    def to_columns(self, img, N, col):
        """The batched layout (rows, N * P) of images img[:N]."""
        if self.identity:
            pick(to_rows, N * self.rows * self.P)(img, N, self.rows, self.P, col, NO_BIAS, False)
        else:
            self.im2col(img, N, col, N * self.P, self.P)

    def from_columns(self, col, N, img):
        """img[:N] = col2im of the batched layout."""
        if self.identity:
            pick(from_rows, N * self.rows * self.P)(col, N, self.rows, self.P, NO_BIAS, False, img)
        else:
            self.col2im(col, N * self.P, self.P, N, img)


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
        self.kernel, self.stride, self.pad, self.dilation = conv_window(self, p, self.num_spatial)
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
        outs = conv_output_shape(ins, self.kernel, self.stride, self.pad, self.dilation)
        if any(o <= 0 for o in outs):
            raise self.shape_error(f"input of spatial shape {tuple(ins)} gives output {tuple(outs)}")
        C = b.shape[ax]
        top[0].reshape((*b.shape[:ax], C * int(np.prod(self.kernel)), *outs))
        self.num = b.count_range(0, ax)
        key = (C, tuple(ins))
        if key != self._key:
            self._key = key
            self.geo = Im2colGeometry(C, ins, outs, self.kernel, self.stride, self.pad, self.dilation,
                               nd=self.force_nd)

    def Forward_cpu(self, bottom, top):
        g = self.geo
        g.im2col(bottom[0].flat_data, self.num, top[0].flat_data, g.P, g.rows * g.P)

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = self.geo
            g.col2im(top[0].flat_diff, g.P, g.rows * g.P, self.num, bottom[0].flat_diff)
