"""pycaffe's ``caffe.Detector``: classify many windows of images at once (R-CNN's windowed detection).

``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
channel_swap=None, context_pad=None)`` is a TEST-phase :class:`Net` with an input
:class:`Transformer` set up as :class:`Classifier`'s.  ``detect_windows([(image file, windows)])``
crops each window (``ymin, xmin, ymax, xmax``, pixels), warps it to the net's input size, runs
all of them through the net in batches and returns one ``{"filename", "window", "prediction"}``
per window, in order.

With ``context_pad = p`` a window is first enlarged so that, once warped to the input size
``S``, a border of ``p`` pixels around it is image context (R-CNN's feature extraction): the box
grows by ``S / (S - 2p)`` about its centre; the part that falls outside the image is filled with
the mean (in the unprocessed image's units) and the part inside is resized into place.

``detect_selective_search`` needs the ``selective_search_ijcv_with_python`` module (MATLAB
code, github.com/sergeyk/selective_search_ijcv_with_python) on ``sys.path``, as pycaffe's does.
"""
import os

import numpy as np

from numcaffe.net.errors import ConfigError, NumcaffeError, ShapeError
from numcaffe.net.net import TEST, Net
from numcaffe.net.pycaffe import io
from numcaffe.net.pycaffe.classifier import input_transformer

__all__ = ["Detector"]


class Detector(Net):
    """A TEST net that crops, warps and classifies image windows; see the module doc."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        if not self.inputs:
            raise ConfigError(f"{self.source}: Detector needs a net with an input (an Input layer or "
                              f"net-level input) to feed the windows to")
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Predictions for every window of every image: [(image file, [windows])] ->
        [{"filename", "window", "prediction"}], in the order given."""
        images_windows = [(name, list(windows)) for name, windows in images_windows]
        crops = []
        for name, windows in images_windows:
            image = io.load_image(name).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            return []
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections, k = [], 0
        for name, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[k], "filename": name})
                k += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """:meth:`detect_windows` over Selective Search proposals for each image."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise NumcaffeError("detect_selective_search needs the selective_search_ijcv_with_python module "
                                "(github.com/sergeyk/selective_search_ijcv_with_python, with MATLAB) on "
                                "sys.path; or pass windows to detect_windows") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """The H x W x K crop of ``im`` for ``window`` (ymin, xmin, ymax, xmax), with the configured context."""
        y0, x0, y1, x1 = (int(v) for v in window)
        if not self.context_pad:
            if y1 <= y0 or x1 <= x0:
                raise ShapeError(f"Detector: window {tuple(window)} is empty (ymin, xmin, ymax, xmax)")
            return im[y0:y1, x0:x1]
        size = self.crop_dims[0]                      # the input is taken as square, as pycaffe does
        grow = size / (size - 2.0 * self.context_pad)
        half_h, half_w = (y1 - y0 + 1) / 2.0, (x1 - x0 + 1) / 2.0
        centre = np.array([y0 + half_h, x0 + half_w, y0 + half_h, x0 + half_w])
        box = np.round(centre + grow * np.array([-half_h, -half_w, half_h, half_w]))
        to_input_h = size / (box[2] - box[0] + 1)     # pixels of the input per pixel of the image
        to_input_w = size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0.0, -box[0]) * to_input_h))     # the part of the box above / left of the image
        pad_x = int(round(max(0.0, -box[1]) * to_input_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0, [im_h, im_w, im_h, im_w])
        inside_h, inside_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if inside_h <= 0 or inside_w <= 0:
            raise ShapeError(f"Detector: window {tuple(window)} lies outside the {im_h} x {im_w} image")
        crop_h = min(int(round(inside_h * to_input_h)), size - pad_y)
        crop_w = min(int(round(inside_w * to_input_w)), size - pad_x)
        b = box.astype(int)
        context = io.resize_image(im[b[0]:b[2], b[1]:b[3]], (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad):
        """Set the crop size (the input's H x W x K) and the context padding; with context, the mean
        the padding is filled with, in the units of the unprocessed image."""
        in_ = self.inputs[0]
        back = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[back]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(back)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, np.argsort(swap)]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
