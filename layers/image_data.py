"""ImageData: batches of image files named in a list file of ``path label`` lines.

As Caffe's ImageDataLayer: each line of ``source`` is an image path and an
integer label (the last space separates them, so paths may hold spaces);
``root_folder`` is prefixed to every path as written (plain concatenation, as
Caffe does: end it with '/').  Images are decoded with Pillow, in colour (BGR,
Caffe's channel order) or grey (``is_color: false``), resized to
``new_height`` x ``new_width`` when both are given, and transformed by
``transform_param``.  ``shuffle`` reorders the list at setup and at every
epoch with the layer's generator; ``rand_skip`` skips a random number of
leading lines.  Tops: data (batch_size, C, H, W) and label (batch_size,).

Over N MPI ranks (training only), rank r takes items r, r + N, ... of the
(shuffled) list: every rank draws the same shuffles, from a generator of
their own that the transforms do not advance, and deals them.

Relative paths resolve against the working directory, then the config
file's directory.  Without resizing, the images of one batch must share a size.
"""
import os

import numpy as np

from numcaffe.layers.base import register
from numcaffe.layers.base_data import PrefetchingDataLayer
from numcaffe.layers.data import generator_like
from numcaffe.net.comm import layer_shard, realign
from numcaffe.net.data.transform import DataTransformer, decode_image
from numcaffe.net.errors import ConfigError, DataError
from numcaffe.net.io import resolve_path
from numcaffe.net.log import get_logger


def read_image_list(path, where="image list"):
    """[(image path, int label)] from a list file of ``path label`` lines."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"{where}: cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise DataError(f"{where}: {path!r} is not a UTF-8 text file of 'path label' lines") from None
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        name, sep, label = line.rpartition(" ")
        try:
            value = int(label)
        except ValueError:
            value = None
        if not sep or not name.strip() or value is None:
            raise DataError(f"{path}:{i}: expected 'image_path integer_label', got {line!r}")
        out.append((name.strip(), value))
    if not out:
        raise DataError(f"{where}: {path!r} lists no images")
    return out


class ImageListSource:
    """Reads, resizes and transforms the images of a list, in (possibly shuffled) order."""

    def __init__(self, items, transformer, batch_size, size, is_color, shuffle, rng, where, shard=(0, 1)):
        self.paths = [p for p, _ in items]
        self.labels = np.asarray([l for _, l in items], dtype=np.float32)
        self.transformer = transformer
        self.batch_size = batch_size
        self.size = size
        self.is_color = is_color
        self.shuffle = shuffle
        self.rng = rng
        self.where = where
        self.shard = shard          # (rank, size): this rank takes items rank, rank + size, ... of the order
        # Every rank draws the same shuffles and deals them; with several ranks the shuffles take their own
        # generator (a copy of the layer's, the same on every rank), which the transforms do not advance.
        self.shuffle_rng = rng if shard[1] == 1 else generator_like(rng, rng.bit_generator.state)
        self.index = 0
        self.shuffle_state = None   # the generator state the current order was drawn from
        self.order = np.arange(len(self.paths))
        if shuffle:
            self._reshuffle()

    def _reshuffle(self):
        self.shuffle_state = self.shuffle_rng.bit_generator.state
        self.order = self.shuffle_rng.permutation(len(self.paths))

    def advance(self, n=1):
        """Move ``n`` items on, reshuffling at the end of every pass."""
        for _ in range(n):
            self.index += 1
            if self.index >= len(self.paths):
                self.index = 0
                if self.shuffle:
                    self._reshuffle()

    def load_image(self, i):
        return decode_image(self.paths[i], self.is_color, self.size, where=f"{self.where}: {self.paths[i]!r}")

    def item_shape(self):
        return self.transformer.output_shape(*self.load_image(self.order[self.index]).shape)

    def load_batch(self, arrays):
        n = self.batch_size
        images, labels = [], np.empty(n, dtype=np.float32)
        for j in range(n):
            i = self.order[self.index]
            img = self.load_image(i)
            if images and img.shape != images[0].shape:
                raise DataError(f"{self.where}: image {self.paths[i]!r} is {img.shape} (C, H, W) but the "
                                f"first image of its batch is {images[0].shape}; set new_height and "
                                f"new_width to give all images one size")
            images.append(img)
            labels[j] = self.labels[i]
            self.advance(self.shard[1])
        data = self.transformer.transform(np.stack(images), self.rng, out=arrays[0] if arrays else None)
        return [data, labels]

    def position(self):
        return {"index": int(self.index), "shuffle": self.shuffle_state, "rng": self.rng.bit_generator.state,
                "shard": list(self.shard)}

    def seek(self, position):
        try:
            index = int(position["index"])
            shuffle_state = position["shuffle"]
            rng_state = position["rng"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.where}: the saved state is not an ImageData position") from None
        if not 0 <= index < len(self.paths):
            raise DataError(f"{self.where}: the saved position {index} is outside the list "
                            f"({len(self.paths)} images); was the list file changed?")
        if shuffle_state is None:
            self.order = np.arange(len(self.paths))
        else:
            drawn = generator_like(self.rng, shuffle_state)
            self.order = drawn.permutation(len(self.paths))
            if self.shuffle_rng is not self.rng:
                self.shuffle_rng = drawn
        self.shuffle_state = shuffle_state
        self.index = index
        self.rng.bit_generator.state = rng_state
        self.advance(realign(position, *self.shard))

    def close(self):
        pass


@register("ImageData")
class ImageDataLayer(PrefetchingDataLayer):
    """Batches of image files listed with their labels; tops: data and label."""

    exact_num_top = 2

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.image_data_param
        if not p.batch_size:
            raise ConfigError(f"{self.describe()}: image_data_param.batch_size must be positive")
        if bool(p.new_height) != bool(p.new_width):
            raise ConfigError(f"{self.describe()}: new_height and new_width must be set together")
        transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.base_dir,
                                      self.describe(), legacy=p)
        list_path = resolve_path(p.source, self.base_dir, f"{self.describe()}: image_data_param.source")
        log = get_logger()
        log.info("Opening file %s", p.source)
        items = read_image_list(list_path, self.describe())
        if p.shuffle:
            log.info("Shuffling data")
        log.info("A total of %d images.", len(items))
        # Caffe opens root_folder + path from the working directory; when the first image is found
        # only next to the config file, every path is taken from there.
        prefix = p.root_folder
        first = prefix + items[0][0]
        if resolve_path(first, self.base_dir, must_exist=False) != os.path.expanduser(first):
            prefix = os.path.join(self.base_dir, prefix)
        resolved = [(prefix + name, label) for name, label in items]
        size = (int(p.new_height), int(p.new_width)) if p.new_height else None
        source = ImageListSource(resolved, transformer, int(p.batch_size), size, bool(p.is_color),
                                 bool(p.shuffle), self.random, self.describe(), layer_shard(self))
        if p.rand_skip:
            if p.rand_skip > len(resolved):
                raise ConfigError(f"{self.describe()}: rand_skip {p.rand_skip} exceeds the number of "
                                  f"images ({len(resolved)})")
            source.index = int(self.random.integers(p.rand_skip))
            log.info("Skipping first %d data points.", source.index)
        source.advance(source.shard[0])   # item i of the (shuffled) list goes to rank i mod size
        shape = source.item_shape()
        top[0].reshape((int(p.batch_size),) + shape)
        log.info("output data size: %s", ",".join(str(d) for d in top[0].shape))
        top[1].reshape((int(p.batch_size),))
        self.start_prefetch(source)
