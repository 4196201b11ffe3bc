"""Sliding-window geometry shared by Convolution, Deconvolution, Im2col and Pooling.

The parameters, as Caffe's base_conv_layer.cpp and pooling_layer.cpp read them
(the CHECKs there are one-line ConfigErrors naming the layer here):

* kernel: ``kernel_size`` (convolution: repeated, given once for every spatial
  axis or once per axis; pooling: one value), or ``kernel_h`` and ``kernel_w``
  (two spatial axes only, never together with ``kernel_size``).  Required
  (pooling: unless ``global_pooling``, which forbids it); every size positive.
* stride (default 1) and pad (default 0): the same two forms.  Strides positive.
  Convolution takes ``pad_h`` without ``pad_w`` (the other is 0); pooling wants
  both of a pair.
* dilation (convolution only, default 1): once, or once per axis.

Output sizes, ``ext = dilation (kernel - 1) + 1``::

    convolution    (in + 2 pad - ext) / stride + 1      (C's truncating division)
    deconvolution  stride (in - 1) + ext - 2 pad
    pooling        ceil((in + 2 pad - kernel) / stride) + 1   (FLOOR rounding floors),
                   one less if padded and the last window starts past in + pad

``output_range`` is the one jitted piece: the outputs whose tap lands inside the
image, which every kernel that clips windows to the image (im2col, depthwise,
pooling) uses to keep bounds tests out of its inner loops.
"""
import math

from numba import njit

from numcaffe.net.errors import ConfigError


@njit(cache=True)
def output_range(n_out, stride, offset, size):
    """The outputs o in [lo, hi) whose input o * stride + offset lies in [0, size)."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = 0
    if size - offset > 0:
        hi = (size - offset + stride - 1) // stride
    hi = min(hi, n_out)
    return min(lo, hi), hi


# ---------------------------------------------------------------------------
# Parameters.
# ---------------------------------------------------------------------------

def _per_axis(where, p, name, values, num_spatial, default, pair=None, need_both=False):
    """One parameter per spatial axis: ``name`` (``values``: once, or once per axis; ``default``
    when absent), or the ``pair`` of fields (``kernel_h``, ``kernel_w``) that spells it for 2-D."""
    if pair and (p.HasField(pair[0]) or p.HasField(pair[1])):
        h, w = pair
        if num_spatial != 2:
            raise ConfigError(f"{where}: {h} and {w} can only be used for 2-D convolution "
                              f"(this input has {num_spatial} spatial axes)")
        if len(values):
            raise ConfigError(f"{where}: give either {name} or {h}/{w}, not both")
        if need_both and not (p.HasField(h) and p.HasField(w)):
            what = "a non-square kernel" if name == "kernel_size" else f"a per-axis {name}"
            raise ConfigError(f"{where}: {what} needs both {h} and {w}")
        return [int(getattr(p, h)), int(getattr(p, w))]
    n = len(values)
    if n == 0 and default is not None:
        return [default] * num_spatial
    if n not in (1, num_spatial):
        raise ConfigError(f"{where}: {name} must be given once, or once per spatial axis "
                          f"({name} given {n} times; {num_spatial} spatial axes)")
    return [int(values[0 if n == 1 else i]) for i in range(num_spatial)]


def _check_positive(where, **lists):
    for name, values in lists.items():
        if any(v <= 0 for v in values):
            raise ConfigError(f"{where}: {name.replace('_', ' ')} must be positive, got {values}")


KERNEL, STRIDE, PAD = ("kernel_h", "kernel_w"), ("stride_h", "stride_w"), ("pad_h", "pad_w")


def conv_window(layer, p, num_spatial):
    """(kernel, stride, pad, dilation) lists, one entry per spatial axis, from a ConvolutionParameter."""
    where = layer.describe()
    if num_spatial == 0:
        return [], [], [], []
    if not p.HasField("kernel_h") and not p.HasField("kernel_w") and not len(p.kernel_size):
        raise ConfigError(f"{where}: kernel_size (or kernel_h and kernel_w) is required")
    kernel = _per_axis(where, p, "kernel_size", p.kernel_size, num_spatial, None, KERNEL, need_both=True)
    stride = _per_axis(where, p, "stride", p.stride, num_spatial, 1, STRIDE)
    pad = _per_axis(where, p, "pad", p.pad, num_spatial, 0, PAD)
    dilation = _per_axis(where, p, "dilation", p.dilation, num_spatial, 1)
    _check_positive(where, kernel_size=kernel, stride=stride, dilation=dilation)
    return kernel, stride, pad, dilation


def pool_window(layer, p):
    """(kernel, stride, pad) as [h, w] lists from a PoolingParameter; kernel None with global_pooling."""
    where = layer.describe()
    single = lambda name: [getattr(p, name)] if p.HasField(name) else []  # noqa: E731
    any_kernel = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
    if p.global_pooling:
        if any_kernel:
            raise ConfigError(f"{where}: with global_pooling the kernel size cannot be given")
        kernel = None
    elif not any_kernel:
        raise ConfigError(f"{where}: kernel_size (or kernel_h and kernel_w) is required")
    else:
        # Caffe's pooling reads kernel_size over a lone kernel_h or kernel_w (no error).
        lone = p.HasField("kernel_size") and p.HasField("kernel_h") != p.HasField("kernel_w")
        kernel = _per_axis(where, p, "kernel_size", single("kernel_size"), 2, None, None if lone else KERNEL,
                           need_both=True)
        _check_positive(where, kernel_size=kernel)
    stride = _per_axis(where, p, "stride", single("stride"), 2, int(p.stride), STRIDE, need_both=True)
    pad = _per_axis(where, p, "pad", single("pad"), 2, int(p.pad), PAD, need_both=True)
    _check_positive(where, stride=stride)
    if p.global_pooling and (any(pad) or stride != [1, 1]):
        raise ConfigError(f"{where}: with global_pooling only pad 0 and stride 1 are allowed")
    return kernel, stride, pad


# ---------------------------------------------------------------------------
# Output sizes.
# ---------------------------------------------------------------------------

def c_div(a, b):
    """Integer division truncating toward zero, as C's ``/``."""
    q = abs(a) // b
    return q if a >= 0 else -q


def conv_output_shape(in_shape, kernel, stride, pad, dilation, reverse=False):
    """Spatial output shape of a convolution (``reverse``: of a deconvolution)."""
    out = []
    for n, k, s, p, d in zip(in_shape, kernel, stride, pad, dilation):
        ext = d * (k - 1) + 1
        out.append(s * (n - 1) + ext - 2 * p if reverse else c_div(n + 2 * p - ext, s) + 1)
    return out


def pooled_size(n, k, s, p, ceil_mode=True, padded=None):
    """Caffe's pooled output size along one axis.

    When the layer is ``padded`` (either axis has a pad; default: this axis does) the
    last window must start inside the padded image, else it is dropped -- Caffe checks
    this on both axes as soon as pad_h or pad_w is non-zero.
    """
    r = (n + 2 * p - k) / s
    out = (math.ceil(r) if ceil_mode else math.floor(r)) + 1
    if (p if padded is None else padded) and (out - 1) * s >= n + p:
        out -= 1
    return out
