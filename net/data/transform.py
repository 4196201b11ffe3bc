"""DataTransformer: Caffe's preprocessing of data-layer input, a whole batch at a time.

For every item of a batch, with ``transform_param``::

    out[c, y, x] = (in[c, h_off + y, w_off + x'] - mean[c, h_off + y, w_off + x']) * scale
    x' = x, or (crop_w - 1 - x) when the item is mirrored

* ``crop_size``: a square crop at a random offset in TRAIN, the centre in TEST;
* ``mirror``: each item is flipped left-right with probability 1/2 (in both
  phases, as Caffe does; leave it out of TEST layers);
* ``mean_file`` (a .binaryproto BlobProto of the full, uncropped image, as
  ``numcaffe compute-mean`` writes) or ``mean_value`` (one value, or one per
  channel) is subtracted at the source position, then ``scale`` multiplies;
* ``force_color`` / ``force_gray`` decode encoded images as 3 or 1 channels.

Random draws come from the generator passed in (the layer's), mirror flags
first and then the crop offsets, for the whole batch at once, so a run is
reproducible from the solver's seed.  Images are in Caffe's channel order:
BGR, as OpenCV decodes them, so Caffe's published mean values apply unchanged.

The per-pixel work is one Numba kernel over the batch.
"""
import io

import numpy as np
from numba import njit

from numcaffe.net.errors import ConfigError, ModelFileError


@njit(cache=True, nogil=True)
def transform_batch(src, mirror, h_off, w_off, mean, scale, out):
    """out[i,c,y,x] = (src[i,c,h_off+y,w_off+x'] - mean[c,h_off+y,w_off+x']) * scale, x' mirrored or not."""
    n, channels, height, width = out.shape
    for i in range(n):
        flip = mirror[i] != 0
        for c in range(channels):
            for y in range(height):
                sy = h_off[i] + y
                for x in range(width):
                    sx = w_off[i] + (width - 1 - x if flip else x)
                    out[i, c, y, x] = (np.float32(src[i, c, sy, sx]) - mean[c, sy, sx]) * scale


def load_mean_file(path):
    """The (channels, height, width) float32 mean stored in a .binaryproto BlobProto."""
    from numcaffe.net.blob import proto_array, proto_shape
    from numcaffe.net.config import parse_binary, read_bytes
    from numcaffe.net.errors import ShapeError
    from numcaffe.net.proto import caffe_pb2

    bp = caffe_pb2.BlobProto()
    parse_binary(read_bytes(path, "mean file"), bp, path)
    shape = proto_shape(bp)
    try:
        mean = proto_array(bp, shape)
    except ShapeError as e:
        raise ModelFileError(f"{path}: {e}") from None
    if len(shape) < 3 or int(np.prod(shape[:-3], dtype=np.int64)) != 1 or mean.size == 0:
        raise ModelFileError(f"{path}: a mean file holds one (channels, height, width) image; "
                             f"this BlobProto has shape {tuple(shape)}")
    return np.ascontiguousarray(mean.reshape(shape[-3:]))


_BOMB_FILTER = False       # whether Pillow's DecompressionBombWarning is an error yet


def open_image(data, where="image"):
    """A decoded Pillow image of ``data`` (encoded bytes or a path); every failure a DataError naming ``where``.

    Pillow refuses images of more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
    (a "decompression bomb": a 40000x40000 1-bit PNG is 200 KB and decodes to 1.6
    GB, 4.8 GB as RGB) with an error that is not an OSError, and only warns between
    one and two times the limit.  numcaffe refuses both, in one line naming the
    file, its size and the limit (raise ``PIL.Image.MAX_IMAGE_PIXELS`` to read
    bigger images); for that the warning is an error in a numcaffe process.
    """
    import warnings

    from numcaffe.net.data.db import DataError, need
    need("PIL", "decoding images")
    from PIL import Image, UnidentifiedImageError

    global _BOMB_FILTER
    if not _BOMB_FILTER:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _BOMB_FILTER = True
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        img = Image.open(src)
        img.load()
    except FileNotFoundError:
        raise DataError(f"{where}: no such image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{where}: an image of {_bomb_size(src, e)}, more than the {Image.MAX_IMAGE_PIXELS} pixels "
                        f"numcaffe decodes (Pillow's decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{where}: cannot decode the image ({e})") from None
    except MemoryError:
        raise DataError(f"{where}: not enough memory to decode the image") from None
    return img


def _bomb_size(src, error):
    """"WxH = N pixels", read from the header without Pillow's size check; N alone if that fails."""
    import re

    from PIL import Image
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = found.group(1) if found else "too many"
    try:
        Image.init()
        fp = src if hasattr(src, "read") else open(src, "rb")
        try:
            fp.seek(0)
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                if accept is not None and not accept(prefix):
                    continue
                fp.seek(0)
                try:
                    w, h = factory(fp, getattr(fp, "name", "")).size
                except Exception:
                    continue
                return f"{w}x{h} = {w * h} pixels"
        finally:
            if fp is not src:
                fp.close()
    except Exception:
        pass
    return f"{pixels} pixels"


def decode_image(data, color=None, size=None, where="image"):
    """An image (encoded bytes or a path) as a (channels, height, width) uint8 array in BGR order.

    ``color``: True for 3 channels, False for 1, None to keep the image's own
    (grey images stay 1 channel).  ``size``: (height, width) to resize to with
    a bilinear filter (Pillow's, which smooths when shrinking, so pixels differ
    slightly from OpenCV's ``cv::resize``).
    """
    from PIL import Image

    img = open_image(data, where)
    gray_modes = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    if color is None:
        color = img.mode not in gray_modes
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F") and not color:
        # 16/32-bit grey: scale to 8 bits as OpenCV does for 8-bit decoding
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a / 256.0 if a.max() > 255 else a, 0, 255).astype(np.uint8), "L")
    img = img.convert("RGB" if color else "L")
    if size is not None and tuple(size) != (img.height, img.width):
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    if color:
        return np.ascontiguousarray(a[:, :, ::-1].transpose(2, 0, 1))  # RGB -> BGR, HWC -> CHW
    return a[None].copy()


def encode_image(array, fmt="png"):
    """Encode a (channels, height, width) uint8 BGR array (Caffe's order) as PNG/JPEG/... bytes."""
    from numcaffe.net.data.db import DataError, need
    need("PIL", "encoding images")
    from PIL import Image

    a = np.asarray(array, dtype=np.uint8)
    img = Image.fromarray(a[::-1].transpose(1, 2, 0), "RGB") if a.shape[0] == 3 else Image.fromarray(a[0], "L")
    fmt = fmt.lower().lstrip(".")
    fmt = {"jpg": "jpeg", "tif": "tiff"}.get(fmt, fmt)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt.upper())
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"cannot encode an image as {fmt!r}: {e}") from None
    return buf.getvalue()


class DataTransformer:
    """Applies a ``TransformationParameter`` to batches of (N, C, H, W) uint8 or float32 arrays."""

    def __init__(self, param, phase, base_dir=None, where="data layer", legacy=None):
        from numcaffe.net.proto import caffe_pb2
        p = caffe_pb2.TransformationParameter()
        p.CopyFrom(param)
        if legacy is not None:
            # The deprecated copies in data_param / image_data_param apply when transform_param is silent.
            for name in ("scale", "mirror", "crop_size", "mean_file"):
                if legacy.HasField(name) and not p.HasField(name):
                    setattr(p, name, getattr(legacy, name))
        self.where = where
        self.phase = phase
        self.train = phase == caffe_pb2.TRAIN
        self.scale = np.float32(p.scale)
        self.mirror = bool(p.mirror)
        self.crop_size = int(p.crop_size)
        self.force_color = bool(p.force_color)
        self.force_gray = bool(p.force_gray)
        if self.force_color and self.force_gray:
            raise ConfigError(f"{where}: transform_param cannot set both force_color and force_gray")
        self.mean_values = [float(v) for v in p.mean_value]
        self.mean_image = None
        if p.mean_file:
            if self.mean_values:
                raise ConfigError(f"{where}: transform_param cannot give both mean_file and mean_value")
            from numcaffe.net.io import resolve_path
            self.mean_image = load_mean_file(resolve_path(p.mean_file, base_dir, "mean_file"))
        self._means = {}

    # -- shapes ------------------------------------------------------------
    @property
    def decode_color(self):
        """How encoded images are decoded: True (3 channels), False (1) or None (as stored)."""
        return True if self.force_color else False if self.force_gray else None

    def output_shape(self, channels, height, width):
        """(channels, height, width) of one transformed item (Caffe's InferBlobShape)."""
        if channels <= 0 or height <= 0 or width <= 0:
            raise ConfigError(f"{self.where}: the data has an empty shape ({channels}, {height}, {width})")
        c = self.crop_size
        if c and (height < c or width < c):
            raise ConfigError(f"{self.where}: crop_size {c} is larger than the data ({height}x{width})")
        self.mean_for(channels, height, width)  # a mean that does not fit fails here, at setup
        return (channels, c or height, c or width)

    def mean_for(self, channels, height, width):
        """The (C, H, W) float32 mean to subtract for data of this shape."""
        key = (channels, height, width)
        mean = self._means.get(key)
        if mean is not None:
            return mean
        if self.mean_image is not None:
            if self.mean_image.shape != key:
                raise ConfigError(f"{self.where}: the mean file holds a {self.mean_image.shape} image but "
                                  f"the data is {key} (channels, height, width)")
            mean = self.mean_image
        elif self.mean_values:
            if len(self.mean_values) not in (1, channels):
                raise ConfigError(f"{self.where}: give one mean_value or one per channel ({channels}); "
                                  f"got {len(self.mean_values)}")
            vals = np.asarray(self.mean_values * (channels if len(self.mean_values) == 1 else 1),
                              dtype=np.float32)
            mean = np.ascontiguousarray(np.broadcast_to(vals[:, None, None], key))
        else:
            mean = np.zeros(key, dtype=np.float32)
        self._means[key] = mean
        return mean

    # -- the transformation ---------------------------------------------------------
    def draw(self, n, height, width, rng):
        """Per-item (mirror flags, row offsets, column offsets) for a batch of ``n``."""
        mirror = (rng.integers(0, 2, n).astype(np.uint8) if self.mirror
                  else np.zeros(n, dtype=np.uint8))
        c = self.crop_size
        if c and self.train:
            h_off = rng.integers(0, height - c + 1, n)
            w_off = rng.integers(0, width - c + 1, n)
        else:
            h_off = np.full(n, (height - c) // 2 if c else 0, dtype=np.int64)
            w_off = np.full(n, (width - c) // 2 if c else 0, dtype=np.int64)
        return mirror, h_off.astype(np.int64), w_off.astype(np.int64)

    def transform(self, src, rng, out=None):
        """Transform a (N, C, H, W) batch; returns the float32 (N, C, h', w') result (into ``out``)."""
        src = np.ascontiguousarray(src)
        if src.dtype != np.uint8 and src.dtype != np.float32:
            src = src.astype(np.float32)
        n, c, h, w = src.shape
        shape = (n,) + self.output_shape(c, h, w)
        if out is None or out.shape != shape or out.dtype != np.float32:
            out = np.empty(shape, dtype=np.float32)
        mirror, h_off, w_off = self.draw(n, h, w, rng)
        transform_batch(src, mirror, h_off, w_off, self.mean_for(c, h, w), self.scale, out)
        return out
