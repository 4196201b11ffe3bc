"""pycaffe's ``caffe.io``: proto <-> array conversion, image loading and the input Transformer.

``import numcaffe.net.pycaffe as caffe`` exposes this module as ``caffe.io``, with
pycaffe's names, argument orders and order of operations.  Differences, all deliberate:

* Images are read and resized with Pillow (pycaffe uses scikit-image): ``load_image``
  gives the same [0, 1] float32 values; ``resize_image`` interpolates each channel
  in Pillow's float mode, which agrees with scikit-image where the image is
  enlarged, but near the borders and when shrinking (both smooth, with different
  filters) values differ slightly.
* Arrays read from protos are float32 (the precision they are stored in), not float64.
* ``Transformer.preprocess`` never writes into the caller's array, and ``deprocess``
  drops only leading axes of size 1, so one-channel inputs come back as H x W x 1
  (pycaffe's ``squeeze`` made them fail).
* Bad input raises numcaffe's errors (:mod:`numcaffe.net.errors`) with a message that
  says what was expected, not a bare ``Exception``.
"""
import numpy as np

from numcaffe.net.blob import proto_array
from numcaffe.net.data.db import DataError, array_datum, datum_array, need
from numcaffe.net.data.transform import open_image
from numcaffe.net.errors import ConfigError, ShapeError
from numcaffe.net.proto import caffe_pb2

__all__ = ["blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "arraylist_to_blobprotovecor_str", "blobprotovector_str_to_arraylist", "array_to_datum",
           "datum_to_array", "Transformer", "load_image", "resize_image", "oversample"]


# ---------------------------------------------------------------- proto / datum / ndarray


def blobproto_to_array(blob, return_diff=False):
    """The data (or, with ``return_diff``, the diff) of a BlobProto as an array of its shape.

    The legacy num/channels/height/width fields give the shape when any is set, else ``shape``;
    a BlobProto with neither is a scalar (Caffe's empty shape), so it must hold exactly one value.
    A shape that does not fit the values is a :class:`ShapeError`, which is a ValueError as in pycaffe.
    """
    field = "diff" if return_diff else "data"
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
        count = len(getattr(blob, field)) or len(getattr(blob, "double_" + field))
        if not shape and count != 1:
            raise ShapeError(f"blobproto_to_array: the BlobProto holds {count} values but no shape (neither "
                             f"'shape' nor num/channels/height/width); without one it is a scalar")
    return proto_array(blob, shape, field=field)


def array_to_blobproto(arr, diff=None):
    """A BlobProto holding ``arr`` (any number of axes) and, if given, ``diff`` of the same shape."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(np.float32).ravel().tolist())
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise ShapeError(f"array_to_blobproto: diff has shape {diff.shape} but the data has {arr.shape}")
        blob.diff.extend(diff.astype(np.float32).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A list of arrays as a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vec.SerializeToString()


#: pycaffe's own (misspelt) name for the same function.
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(str):  # noqa: A002  (pycaffe's parameter name)
    """The arrays of a serialized BlobProtoVector."""
    from google.protobuf import message as pb_message
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(str)
    except pb_message.DecodeError as e:
        raise DataError(f"not a serialized BlobProtoVector ({e})") from None
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum of a (channels, height, width) array: raw bytes for uint8, float_data otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ShapeError(f"array_to_datum needs a (channels, height, width) array, got shape {arr.shape}")
    return array_datum(arr, label)


def datum_to_array(datum):
    """The (channels, height, width) array of a Datum (uint8 from ``data``, else float32); not the label."""
    return datum_array(datum)


# ---------------------------------------------------------------- pre-processing


def _broadcasts_to(shape, target):
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


class Transformer:
    """Turns H x W x K images into a net's K x H x W input, as pycaffe's ``caffe.io.Transformer``.

    ``Transformer({name: shape})`` with the input blob's (N, C, H, W) shape, e.g.
    ``Transformer({"data": net.blobs["data"].data.shape})``.  ``preprocess`` applies, in
    this order: conversion to float32, resizing to (H, W), ``set_transpose``,
    ``set_channel_swap``, ``set_raw_scale``, ``set_mean`` (subtracted) and
    ``set_input_scale``; ``deprocess`` undoes them in reverse.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise ConfigError(f"Transformer: {in_!r} is not one of the inputs it was made for "
                              f"({', '.join(map(repr, self.inputs))})")

    def preprocess(self, in_, data):
        """An H' x W' x K image as the K x H x W float32 array the input ``in_`` takes."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)   # a copy: the caller's array is never changed
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        transpose = self.transpose.get(in_)
        if transpose is not None:
            if caffe_in.ndim != len(transpose):
                raise ShapeError(f"Transformer: input {in_!r} was given an array of shape {caffe_in.shape}; "
                                 f"the transpose {tuple(transpose)} needs {len(transpose)} axes")
            caffe_in = caffe_in.transpose(transpose)
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            caffe_in *= raw_scale
        mean = self.mean.get(in_)
        if mean is not None:
            if not _broadcasts_to(mean.shape, caffe_in.shape):
                raise ShapeError(f"Transformer: the mean for {in_!r} has shape {mean.shape}, which does not fit "
                                 f"the array of shape {caffe_in.shape} it is subtracted from (the mean is "
                                 f"(C, H, W): set_transpose to channels first, e.g. (2, 0, 1))")
            caffe_in -= mean
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """Undo :meth:`preprocess`: a K x H x W input (leading axes of size 1 allowed) as H x W x K."""
        self._check_input(in_)
        decaf_in = np.array(data, dtype=np.float32)
        while decaf_in.ndim > len(self.inputs[in_]) - 1 and decaf_in.shape[0] == 1:
            decaf_in = decaf_in[0]
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        mean = self.mean.get(in_)
        if mean is not None:
            decaf_in += mean
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            decaf_in /= raw_scale
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """The axis order that turns the given image into the input's, e.g. (2, 0, 1) for H x W x K -> K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ShapeError(f"Transformer: the transpose order for {in_!r} needs "
                             f"{len(self.inputs[in_]) - 1} axes (the input is {self.inputs[in_]}), "
                             f"got {tuple(order)}")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """The order to take the channels in, after the transpose; (2, 1, 0) turns RGB into BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ShapeError(f"Transformer: the channel swap for {in_!r} needs one entry per channel "
                             f"({self.inputs[in_][1]}), got {tuple(order)}")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the image by ``scale`` before the mean is subtracted (255 for [0, 1] images
        and ImageNet models)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: one value per channel (shape (C,)) or a whole (C, H, W) or (H, W) image."""
        self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        given, shape = mean.shape, self.inputs[in_]
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise ShapeError(f"Transformer: the mean for {in_!r} has {mean.shape[0]} channels; "
                                 f"the input has {shape[1]} (input shape {shape})")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            ms = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(ms) != 3:
                raise ShapeError(f"Transformer: a mean for {in_!r} is (C,), (H, W) or (C, H, W); "
                                 f"got shape {mean.shape}")
            mean = mean.reshape(ms)
            if ms != shape[1:]:
                raise ShapeError(f"Transformer: the mean for {in_!r} has shape {given}; the input "
                                 f"needs (C, H, W) = {shape[1:]} (resize the mean image, or take its "
                                 f"per-channel mean with mean.mean(1).mean(1))")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply by ``scale`` after the mean is subtracted (raw_scale acts before it)."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# ---------------------------------------------------------------- images

#: scikit-image's rgb2gray weights, which pycaffe's load_image(color=False) applies to colour images.
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def load_image(filename, color=True):
    """An image file as float32 in [0, 1]: H x W x 3 RGB, or H x W x 1 grey with ``color=False``.

    A grey image with ``color=True`` is repeated over 3 channels; alpha is dropped; a colour
    image with ``color=False`` becomes its luminance (0.2125 R + 0.7154 G + 0.0721 B, as pycaffe).
    """
    need("PIL", "caffe.io.load_image")
    img = open_image(filename, filename)
    if img.mode in _GREY_MODES:
        if img.mode == "F":
            a = np.asarray(img, dtype=np.float32)
        elif img.mode.startswith("I"):
            a = np.asarray(img, dtype=np.float32) / 65535.0     # 16-bit grey, as scikit-image scales it
        else:
            a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        a = a[:, :, np.newaxis]
        if color:
            a = np.tile(a, (1, 1, 3))
    else:
        a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        if not color:
            a = (a @ _GREY_WEIGHTS)[:, :, np.newaxis]
    return np.ascontiguousarray(a, dtype=np.float32)


def _resample(interp_order):
    from PIL import Image
    filters = {0: Image.NEAREST, 1: Image.BILINEAR, 2: Image.BICUBIC, 3: Image.BICUBIC}
    try:
        return filters[int(interp_order)]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"resize_image: interp_order is 0 (nearest), 1 (linear) or 2/3 (cubic); "
                          f"got {interp_order!r}") from None


def resize_image(im, new_dims, interp_order=1):
    """An H x W x K array resized to ``new_dims`` = (height, width), float32, each channel on its own.

    Uses Pillow's float mode (interp_order 0 nearest, 1 bilinear, 2 or 3 bicubic); cubic
    results are clipped to the input's range, as scikit-image clips them.
    """
    im = np.asarray(im)
    if im.ndim != 3:
        raise ShapeError(f"resize_image needs an H x W x K array, got shape {im.shape}")
    h, w = (int(d) for d in new_dims)
    if h < 1 or w < 1:
        raise ShapeError(f"resize_image: new_dims must be positive, got {tuple(new_dims)}")
    lo, hi = float(im.min()), float(im.max())
    if lo == hi:
        return np.full((h, w, im.shape[-1]), lo, dtype=np.float32)   # a constant image stays constant
    need("PIL", "caffe.io.resize_image")
    from PIL import Image
    resample = _resample(interp_order)
    out = np.empty((h, w, im.shape[-1]), dtype=np.float32)
    for k in range(im.shape[-1]):
        channel = Image.fromarray(np.ascontiguousarray(im[:, :, k], dtype=np.float32), "F")
        out[:, :, k] = np.asarray(channel.resize((w, h), resample), dtype=np.float32)
    if resample == Image.BICUBIC:
        np.clip(out, lo, hi, out=out)
    return out


def _centre_start(size, crop):
    """pycaffe's centre crop start: int(size / 2 - crop / 2)."""
    return (int(size) - int(crop)) // 2


def oversample(images, crop_dims):
    """The 4 corner crops, the centre crop and the 5 mirrored (left-right) of each H x W x K image.

    Gives a (10 * N, crop_h, crop_w, K) float32 array: per image, top-left, top-right,
    bottom-left, bottom-right, centre, then the same five mirrored.
    """
    if len(images) == 0:
        raise ShapeError("oversample needs at least one image")
    shape = np.shape(images[0])
    if len(shape) != 3:
        raise ShapeError(f"oversample needs H x W x K images, got shape {shape}")
    ch, cw = (int(d) for d in crop_dims)
    h, w = shape[:2]
    if not (0 < ch <= h and 0 < cw <= w):
        raise ShapeError(f"oversample: crop {(ch, cw)} does not fit in images of {(h, w)}")
    boxes = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (_centre_start(h, ch), _centre_start(w, cw))]
    crops = np.empty((10 * len(images), ch, cw, shape[-1]), dtype=np.float32)
    for n, im in enumerate(images):
        if np.shape(im) != shape:
            raise ShapeError(f"oversample: image {n} has shape {np.shape(im)}, image 0 has {shape}")
        for i, (y, x) in enumerate(boxes):
            crops[10 * n + i] = im[y:y + ch, x:x + cw, :]
            crops[10 * n + 5 + i] = im[y:y + ch, x:x + cw, :][:, ::-1, :]
    return crops
