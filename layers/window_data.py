"""WindowData: image windows sampled for R-CNN-style detection training (Caffe's WindowDataLayer).

``source`` is a window file of records::

    # image_index
    image_path
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines, inclusive pixel boxes)

Windows with ``overlap >= fg_threshold`` are foreground (their class, which
must be > 0); those with ``overlap < bg_threshold`` are background (label 0).
Every batch takes ``batch_size - int(batch_size * fg_fraction)`` background
windows and then the foreground ones, each drawn uniformly with replacement.
A window (enlarged by ``context_pad`` pixels of context, made square with
``crop_mode: "square"``) is cut from the colour image, warped to ``crop_size``
x ``crop_size`` (Pillow's bilinear filter), flipped at random with ``mirror``,
and written as ``(pixel - mean) * scale``; parts of the enlarged region outside
the image stay zero, as in Caffe.  The mean is the centre of ``mean_file`` or
``mean_value``.  ``crop_size``, ``mirror`` and ``mean_file`` come from
``transform_param`` or, in old configs, from ``window_data_param``.

Sampling is with replacement, so the position of the next batch is the random
state alone: resume is exact.  Tops: data (batch_size, C, crop, crop), label.
"""
import math

import numpy as np

from numcaffe.layers.base import register
from numcaffe.layers.base_data import PrefetchingDataLayer
from numcaffe.net.data.transform import DataTransformer, decode_image
from numcaffe.net.errors import ConfigError, DataError
from numcaffe.net.io import resolve_path


def read_window_file(path, fg_threshold, bg_threshold, root_folder="", base_dir=None):
    """(image paths, fg windows, bg windows); windows are rows (image, label, x1, y1, x2, y2)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = f.read().split()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the window file {path!r}: {e}") from None
    images, fg, bg = [], [], []
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tokens):
            raise DataError(f"{path}: ends inside the record of image {len(images) - 1} (expected {what})")
        tok = tokens[pos]
        pos += 1
        try:
            return kind(tok)
        except ValueError:
            raise DataError(f"{path}: expected {what}, got {tok!r} (record of image {len(images)})") from None

    while pos < len(tokens):
        if tokens[pos] != "#":
            raise DataError(f"{path}: expected '#' to start the record of image {len(images)}, "
                            f"got {tokens[pos]!r}")
        pos += 1
        take(int, "the image index")
        image = resolve_path(root_folder + take(str, "the image path"), base_dir, must_exist=False)
        for what in ("channels", "height", "width"):
            take(int, what)
        index = len(images)
        images.append(image)
        for _ in range(take(int, "the number of windows")):
            label = take(int, "a class index")
            overlap = take(float, "an overlap")
            box = [take(int, "a box coordinate") for _ in range(4)]
            if overlap >= fg_threshold:
                if label <= 0:
                    raise DataError(f"{path}: foreground window of image {index} has class {label}; "
                                    f"foreground classes must be > 0")
                fg.append([index, label] + box)
            elif overlap < bg_threshold:
                bg.append([index, 0] + box)
    if not images:
        raise DataError(f"the window file {path!r} is empty")
    as_array = lambda w: np.asarray(w, dtype=np.int64).reshape(-1, 6)  # noqa: E731
    return images, as_array(fg), as_array(bg)


def _round(x):
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def warp_geometry(box, rows, cols, crop, context_pad, square, mirror):
    """Caffe's window geometry: (clipped box, warped (height, width), (pad_h, pad_w))."""
    x1, y1, x2, y2 = box
    if not (context_pad > 0 or square):
        return (x1, y1, x2, y2), (crop, crop), (0, 0)
    f32 = np.float32
    context_scale = f32(crop) / f32(crop - 2 * context_pad)
    half_h, half_w = f32(y2 - y1 + 1) / f32(2.0), f32(x2 - x1 + 1) / f32(2.0)
    cx, cy = f32(x1) + half_w, f32(y1) + half_h
    if square:
        half_h = half_w = max(half_h, half_w)
    x1, x2 = _round(cx - half_w * context_scale), _round(cx + half_w * context_scale)
    y1, y2 = _round(cy - half_h * context_scale), _round(cy + half_h * context_scale)
    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    scale_x, scale_y = f32(crop) / f32(unclipped_w), f32(crop) / f32(unclipped_h)
    width = _round(f32(x2 - x1 + 1) * scale_x)
    height = _round(f32(y2 - y1 + 1) * scale_y)
    pad_h = _round(f32(pad_y1) * scale_y)
    pad_w = _round(f32(pad_x2 if mirror else pad_x1) * scale_x)
    height = min(height, crop - pad_h)
    width = min(width, crop - pad_w)
    return (x1, y1, x2, y2), (height, width), (pad_h, pad_w)


class WindowSource:
    """Samples and warps windows; its position is the generator state alone."""

    def __init__(self, images, fg, bg, p, crop, mirror, mean, scale, rng, where):
        self.images, self.fg, self.bg = images, fg, bg
        self.batch_size = int(p.batch_size)
        self.num_fg = int(np.float32(self.batch_size) * np.float32(p.fg_fraction))
        self.context_pad = int(p.context_pad)
        self.square = p.crop_mode == "square"
        self.cache = {} if p.cache_images else None
        self.crop, self.mirror, self.mean, self.scale = crop, mirror, mean, scale
        self.rng = rng
        self.where = where
        if self.num_fg and not len(fg):
            raise DataError(f"{where}: the window file has no foreground windows (overlap >= fg_threshold)")
        if self.batch_size - self.num_fg and not len(bg):
            raise DataError(f"{where}: the window file has no background windows (overlap < bg_threshold)")

    def image(self, index):
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        img = decode_image(self.images[index], True, where=f"{self.where}: {self.images[index]!r}")
        if self.cache is not None:
            self.cache[index] = img
        return img

    def warp(self, img, box, mirror, out):
        """Write one window into ``out`` (C, crop, crop), which is zero."""
        from PIL import Image
        rows, cols = img.shape[1:]
        (x1, y1, x2, y2), (h, w), (pad_h, pad_w) = warp_geometry(box, rows, cols, self.crop, self.context_pad,
                                                                 self.square, mirror)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows):
            raise DataError(f"{self.where}: window {box} lies outside its {rows}x{cols} image")
        if h <= 0 or w <= 0:
            return
        region = img[:, y1:y2 + 1, x1:x2 + 1]
        if region.shape[1:] != (h, w):
            pil = Image.fromarray(np.ascontiguousarray(region.transpose(1, 2, 0)))
            region = np.asarray(pil.resize((w, h), Image.BILINEAR)).transpose(2, 0, 1)
        if mirror:
            region = region[:, :, ::-1]
        out[:, pad_h:pad_h + h, pad_w:pad_w + w] = \
            (region.astype(np.float32) - self.mean[:, pad_h:pad_h + h, pad_w:pad_w + w]) * self.scale

    def load_batch(self, arrays):
        n, c = self.batch_size, self.mean.shape[0]
        shape = (n, c, self.crop, self.crop)
        data = arrays[0] if arrays and arrays[0].shape == shape else np.empty(shape, np.float32)
        data[...] = 0
        num_bg = n - self.num_fg
        picks = [self.bg[self.rng.integers(len(self.bg), size=num_bg)] if num_bg else np.zeros((0, 6), np.int64),
                 self.fg[self.rng.integers(len(self.fg), size=self.num_fg)] if self.num_fg
                 else np.zeros((0, 6), np.int64)]
        windows = np.concatenate(picks)
        flips = self.rng.integers(0, 2, n).astype(bool) if self.mirror else np.zeros(n, bool)
        for i, (index, label, x1, y1, x2, y2) in enumerate(windows):
            img = self.image(int(index))
            if img.shape[0] != c:
                raise DataError(f"{self.where}: {self.images[index]!r} has {img.shape[0]} channels, the "
                                f"mean {c}")
            self.warp(img, (int(x1), int(y1), int(x2), int(y2)), bool(flips[i]), data[i])
        return [data, windows[:, 1].astype(np.float32)]

    def position(self):
        return {"rng": self.rng.bit_generator.state}

    def seek(self, position):
        self.rng.bit_generator.state = position["rng"]

    def close(self):
        self.cache = None


@register("WindowData")
class WindowDataLayer(PrefetchingDataLayer):
    """Foreground and background windows of images, warped to crop_size; tops: data and label."""

    exact_num_top = 2

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.window_data_param
        if not p.batch_size:
            raise ConfigError(f"{self.describe()}: window_data_param.batch_size must be positive")
        if p.crop_mode not in ("warp", "square"):
            raise ConfigError(f"{self.describe()}: crop_mode must be \"warp\" or \"square\", got {p.crop_mode!r}")
        t = DataTransformer(self.layer_param.transform_param, self.phase, self.base_dir, self.describe(),
                            legacy=p)
        crop = t.crop_size
        if crop <= 0:
            raise ConfigError(f"{self.describe()}: WindowData needs a crop_size (the warped window size)")
        if 2 * p.context_pad >= crop:
            raise ConfigError(f"{self.describe()}: context_pad {p.context_pad} leaves no room in crop_size {crop}")
        path = resolve_path(p.source, self.base_dir, f"{self.describe()}: window_data_param.source")
        images, fg, bg = read_window_file(path, p.fg_threshold, p.bg_threshold, p.root_folder, self.base_dir)
        channels = 3
        if t.mean_image is not None:
            m = t.mean_image
            off = (m.shape[2] - crop) // 2
            if m.shape[0] != channels or off < 0 or m.shape[1] < off + crop:
                raise ConfigError(f"{self.describe()}: the mean file holds a {m.shape} image; WindowData needs "
                                  f"{channels} channels and at least {crop}x{crop}")
            mean = np.ascontiguousarray(m[:, off:off + crop, off:off + crop])
        else:
            mean = t.mean_for(channels, crop, crop)
        scale = np.float32(p.scale) if p.HasField("scale") else t.scale
        source = WindowSource(images, fg, bg, p, crop, t.mirror, mean, scale, self.random, self.describe())
        top[0].reshape((int(p.batch_size), channels, crop, crop))
        top[1].reshape((int(p.batch_size),))
        self.start_prefetch(source)
