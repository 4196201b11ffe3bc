"""Depthwise 2-D convolution kernels (group == channels, M = multiplier * C outputs): the
path layers/conv.py's ``choose_layout`` picks for them instead of im2col + GEMM::

    y[n, m, oh, ow] = b[m] + sum_ij w[m, i, j] x[n, m // (M/C), oh*sh - ph + i*dh, ow*sw - pw + j*dw]

Why the direct loops were slow: each tap ran over one output row (7..112 outputs), so
AVX-512 loops mostly ran their scalar remainders, and strided (sw > 1) rows did not
vectorise at all; the stride-1 version ran each tap over the whole plane, streaming a
50 KB accumulator through L2 nine times at 112x112.

Here every input plane is first copied, zero-padded, into ``sh * sw`` polyphase planes
of ``Hq x Wq`` (phase (a, b) holds padded pixel (r*sh + a, c*sw + b) at (r, c)).  Tap
(i, j) then reads phase ((i*dh) % sh, (j*dw) % sw) shifted by ((i*dh)//sh, (j*dw)//sw),
so with outputs laid out on rows of width Wq (columns ow >= Wo are scratch) a tap is
ONE contiguous multiply-add over the line of L = (Ho-1)*Wq + Wo outputs, at any stride,
padding or dilation, with no bounds tests.  Lines are cut into CHUNK-element pieces
that stay in L1 while all taps pass over them.  The ``_s1`` kernels are the same
loops with the stride fixed at 1 (MobileNet's common case), chosen by shape in conv.py.
"""
import numpy as np
from numba import njit

from numcaffe.layers.geometry import output_range

CHUNK = 2048  # output elements per piece: accumulator + one tap's input = 16 KB, inside L1


@njit(cache=True, nogil=True)
def _geometry(H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    """(Hq, Wq, L, tap offsets into the phase buffer)."""
    Hq = (H + 2 * ph + sh - 1) // sh
    Wq = (W + 2 * pw + sw - 1) // sw
    off = np.empty(kh * kw, np.int64)
    for i in range(kh):
        for j in range(kw):
            a, b = (i * dh) % sh, (j * dw) % sw
            off[i * kw + j] = (a * sw + b) * Hq * Wq + ((i * dh) // sh) * Wq + (j * dw) // sw
    return Hq, Wq, (Ho - 1) * Wq + Wo, off


@njit(cache=True, nogil=True)
def _to_phases(x, src, H, W, ph, pw, sh, sw, Hq, Wq, buf):
    """buf = the H x W plane at x[src:], zero-padded, split into sh * sw polyphase planes."""
    buf[:] = 0.0
    for a in range(sh):
        for r in range(Hq):
            h = r * sh + a - ph
            if h < 0 or h >= H:
                continue
            xr = x[src + h * W:src + (h + 1) * W]
            for b in range(sw):
                lo, hi = output_range(Wq, sw, b - pw, W)
                d = buf[(a * sw + b) * Hq * Wq + r * Wq + lo:]
                xs = xr[lo * sw + b - pw:]
                for c in range(hi - lo):
                    d[c] = xs[c * sw]


@njit(cache=True, nogil=True)
def _from_phases(buf, H, W, ph, pw, sh, sw, Hq, Wq, dx, dst):
    """dx[dst:] plane = the image part of the polyphase planes (inverse of _to_phases)."""
    for a in range(sh):
        for r in range(Hq):
            h = r * sh + a - ph
            if h < 0 or h >= H:
                continue
            xr = dx[dst + h * W:dst + (h + 1) * W]
            for b in range(sw):
                lo, hi = output_range(Wq, sw, b - pw, W)
                d = buf[(a * sw + b) * Hq * Wq + r * Wq + lo:]
                xs = xr[lo * sw + b - pw:]
                for c in range(hi - lo):
                    xs[c * sw] = d[c]


@njit(cache=True, nogil=True)
def depthwise_forward(x, N, C, H, W, w, M, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, bias, with_bias, y):
    """y[n, m, oh, ow] = b[m] + sum_ij w[m, i, j] x[n, m // (M/C), oh*sh - ph + i*dh, ow*sw - pw + j*dw]."""
    mult = M // C
    KK = kh * kw
    Hq, Wq, L, off = _geometry(H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    buf = np.empty(sh * sw * Hq * Wq, np.float32)
    line = np.empty(L, np.float32)
    for n in range(N):
        for c in range(C):
            _to_phases(x, (n * C + c) * H * W, H, W, ph, pw, sh, sw, Hq, Wq, buf)
            for m in range(c * mult, (c + 1) * mult):
                b = bias[m] if with_bias else np.float32(0.0)
                for q0 in range(0, L, CHUNK):
                    acc = line[q0:min(q0 + CHUNK, L)]
                    acc[:] = b
                    for t in range(KK):
                        wv = w[m * KK + t]
                        src = buf[off[t] + q0:]
                        for q in range(acc.size):
                            acc[q] += wv * src[q]
                dst = (n * M + m) * Ho * Wo
                for oh in range(Ho):
                    y[dst + oh * Wo:dst + (oh + 1) * Wo] = line[oh * Wq:oh * Wq + Wo]


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def depthwise_backward(x, dy, N, C, H, W, w, M, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo,
                       dw_acc, want_dw, dx, want_dx):
    """dw[m, i, j] += sum dy * x (at the tap);  dx = sum over taps of w * dy (overwritten)."""
    mult = M // C
    KK = kh * kw
    Hq, Wq, L, off = _geometry(H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    buf = np.empty(sh * sw * Hq * Wq, np.float32)
    dbuf = np.empty(sh * sw * Hq * Wq, np.float32)
    g = np.zeros(L, np.float32)  # dy on rows of width Wq; the scratch columns stay 0
    for n in range(N):
        for c in range(C):
            if want_dw:
                _to_phases(x, (n * C + c) * H * W, H, W, ph, pw, sh, sw, Hq, Wq, buf)
            if want_dx:
                dbuf[:] = 0.0
            for m in range(c * mult, (c + 1) * mult):
                src = (n * M + m) * Ho * Wo
                for oh in range(Ho):
                    g[oh * Wq:oh * Wq + Wo] = dy[src + oh * Wo:src + (oh + 1) * Wo]
                for q0 in range(0, L, CHUNK):
                    gc = g[q0:min(q0 + CHUNK, L)]
                    for t in range(KK):
                        if want_dw:
                            xs = buf[off[t] + q0:]
                            s = np.float32(0.0)
                            for q in range(gc.size):
                                s += gc[q] * xs[q]
                            dw_acc[m * KK + t] += s
                        if want_dx:
                            wv = w[m * KK + t]
                            ds = dbuf[off[t] + q0:]
                            for q in range(gc.size):
                                ds[q] += wv * gc[q]
            if want_dx:
                _from_phases(dbuf, H, W, ph, pw, sh, sw, Hq, Wq, dx, (n * C + c) * H * W)


@njit(cache=True, nogil=True)
def depthwise_forward_s1(x, N, C, H, W, w, M, kh, kw, ph, pw, dh, dw, Ho, Wo, bias, with_bias, y):
    """Stride-1 depthwise convolution (depthwise_forward with sh = sw = 1)."""
    depthwise_forward(x, N, C, H, W, w, M, kh, kw, 1, 1, ph, pw, dh, dw, Ho, Wo, bias, with_bias, y)


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def depthwise_backward_s1(x, dy, N, C, H, W, w, M, kh, kw, ph, pw, dh, dw, Ho, Wo,
                          dw_acc, want_dw, dx, want_dx):
    """Backward of depthwise_forward_s1."""
    depthwise_backward(x, dy, N, C, H, W, w, M, kh, kw, 1, 1, ph, pw, dh, dw, Ho, Wo,
                       dw_acc, want_dw, dx, want_dx)
