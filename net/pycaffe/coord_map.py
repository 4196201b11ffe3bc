"""pycaffe's ``caffe.coord_map``: how positions in one NetSpec top line up with positions in another,
and :func:`crop`, the Crop layer that aligns an upsampled score map with its input (the FCN recipe).

A *coordinate map* is a triple ``(axis, a, b)``: along the spatial axes after ``axis``, position
``x`` of one blob sits at position ``a * x + b`` of the other (``a`` and ``b`` hold one value per
spatial axis, or a single value for all of them).  Each layer type that keeps spatial structure
has one, from its top back to its bottom read forward (bottom ``x`` -> top ``a * x + b``):

=============================  =====================  ===============================
layer                          a                      b
=============================  =====================  ===============================
Convolution, Pooling, Im2col   1 / stride             (pad - (k_eff - 1) / 2) / stride
Deconvolution                  stride                 (k_eff - 1) / 2 - pad
Crop                           1                      -offset
elementwise (ReLU, Scale, ..)  1                      0   (and no axis of its own)
=============================  =====================  ===============================

where ``k_eff = (kernel - 1) * dilation + 1`` is the dilated kernel's extent: a window's centre
moves by ``stride`` per output position and starts ``(k_eff - 1) / 2 - pad`` into the input.
Maps compose (``f after g`` is ``a_f a_g x + a_f b_g + b_f``) and invert (``x / a - b / a``).

:func:`coord_map_from_to` walks back from both tops through layers whose map is known until the
walks meet at a common ancestor, and returns the map from the first top to the second.  A
layer without a map (InnerProduct, global pooling, ...) ends the walk along that path; a Crop
layer is followed through its first bottom only (the second only gives the size).

Differences from pycaffe, deliberate: parameters are read from the layer's LayerParameter, so
``convolution_param=dict(...)`` and the ``kernel_h``/``stride_w``/``pad_h`` forms work too;
errors are numcaffe's (:class:`CoordMapError` is also a RuntimeError, :class:`CropError` also an
AssertionError, the types pycaffe raises) with a message naming the tops.
"""
from collections import deque

import numpy as np

from numcaffe.net.errors import ConfigError

__all__ = ["coord_map", "coord_map_from_to", "compose", "inverse", "crop", "CoordMapError", "CropError",
           "UndefinedMapException", "AxisMismatchException", "PASS_THROUGH_LAYERS"]

#: Layers that change no positions: every output element sits where its input element was.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Clip", "Dropout", "Eltwise", "ELU", "Exp",
                       "Log", "LRN", "MVN", "Power", "PReLU", "ReLU", "Scale", "SELU", "Sigmoid", "Split",
                       "Swish", "TanH", "Threshold"]

IDENTITY = (None, 1, 0)


class CoordMapError(ConfigError, RuntimeError):
    """No coordinate map can be made (tops not joined by spatial layers, axes that disagree)."""


class UndefinedMapException(CoordMapError):
    """A layer type whose outputs have no position-for-position relation to its inputs."""


class AxisMismatchException(CoordMapError):
    """Two maps along different axes cannot be composed."""


class CropError(ConfigError, AssertionError):
    """The map between two tops is not a crop (scaled, negative or fractional offset)."""


def _layer_param(fn):
    return fn._layer


def _spatial(values, default):
    return np.array(list(values) if len(values) else [default], dtype=float)


def _window_params(fn):
    """``(axis, stride, effective kernel, pad)`` of a Convolution/Deconvolution/Im2col/Pooling function."""
    layer = _layer_param(fn)
    if fn.type_name == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            raise UndefinedMapException(f"{fn.type_name} with global_pooling maps every position to one")
        if p.HasField("kernel_h") or p.HasField("kernel_w"):
            kernel = np.array([p.kernel_h, p.kernel_w], dtype=float)
        else:
            kernel = np.array([p.kernel_size], dtype=float)
        if p.HasField("stride_h") or p.HasField("stride_w"):
            stride = np.array([p.stride_h or 1, p.stride_w or 1], dtype=float)
        else:
            stride = np.array([p.stride], dtype=float)
        if p.HasField("pad_h") or p.HasField("pad_w"):
            pad = np.array([p.pad_h, p.pad_w], dtype=float)
        else:
            pad = np.array([p.pad], dtype=float)
        return 1, stride, kernel, pad
    p = layer.convolution_param
    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = np.array([p.kernel_h, p.kernel_w], dtype=float)
    else:
        kernel = _spatial(p.kernel_size, 1)
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = np.array([p.stride_h or 1, p.stride_w or 1], dtype=float)
    else:
        stride = _spatial(p.stride, 1)
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = np.array([p.pad_h, p.pad_w], dtype=float)
    else:
        pad = _spatial(p.pad, 0)
    dilation = _spatial(p.dilation, 1)
    return p.axis, stride, (kernel - 1) * dilation + 1, pad


def coord_map(fn):
    """The map ``(axis, a, b)`` of one layer function: its bottom's position ``x`` is its top's ``a x + b``."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = _window_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = _window_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return IDENTITY
    if fn.type_name == "Crop":
        p = _layer_param(fn).crop_param
        offset = _spatial(p.offset, 0)
        return p.axis - 1, 1, -offset      # the map's axis is the last one before the cropped ones
    raise UndefinedMapException(f"a {fn.type_name} layer has no coordinate map")


def compose(base_map, next_map):
    """``base_map`` after ``next_map``: positions mapped by ``next_map``, then by ``base_map``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"cannot compose a coordinate map along axis {ax1} with one along axis {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back: position ``y = a x + b`` goes to ``x = y / a - b / a``."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mapped_bottoms(fn):
    return fn.inputs[:1] if fn.type_name == "Crop" else fn.inputs


def _walk_back(top):
    """{ancestor top: map of its positions into ``top``'s}, nearest first, through mappable layers."""
    maps = {top: IDENTITY}
    queue = deque([top])
    while queue:
        t = queue.popleft()
        try:
            layer_map = coord_map(t.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(t.fn):
            if bottom not in maps:
                maps[bottom] = compose(maps[t], layer_map)
                queue.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map ``(axis, a, b)`` taking positions of ``top_from`` to positions of ``top_to``.

    Raises :class:`CoordMapError` (a RuntimeError, as pycaffe) when no chain of layers with
    known maps joins the two tops.
    """
    from_maps = _walk_back(top_from)
    to_maps = _walk_back(top_to)
    for common, to_map in to_maps.items():          # nearest to top_to first
        if common in from_maps:
            return compose(to_map, inverse(from_maps[common]))
    raise CoordMapError(f"coord_map: no chain of spatial layers joins {top_from!r} to {top_to!r} "
                        f"(layers with a known map: Convolution, Pooling, Im2col, Deconvolution, Crop, "
                        f"{', '.join(PASS_THROUGH_LAYERS)})")


def crop(top_from, top_to):
    """A Crop layer (NetSpec top) cutting ``top_from`` to the positions of ``top_to``.

    The axis and offsets come from :func:`coord_map_from_to`; it needs the two tops at the same
    scale and ``top_from`` to cover ``top_to`` at a whole-number offset, otherwise
    :class:`CropError` (an AssertionError, as pycaffe) says which condition failed.
    """
    from numcaffe.net.pycaffe.net_spec import layers as L
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (a == 1).all():
        raise CropError(f"crop: {top_from!r} is at scale {a} of {top_to!r}; a crop needs scale 1")
    if not (b <= 0).all():
        raise CropError(f"crop: {top_from!r} would need a negative crop offset ({-b}) to match {top_to!r}; "
                        f"it is smaller than the reference")
    if not (np.round(b) == b).all():
        raise CropError(f"crop: the offset {-b} between {top_from!r} and {top_to!r} is not a whole number")
    axis = 1 if ax is None else ax      # positions unchanged: crop the spatial axes, Crop's default
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=[int(v) for v in -np.round(b)]))
