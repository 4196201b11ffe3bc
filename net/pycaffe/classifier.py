"""pycaffe's ``caffe.Classifier`` (python/caffe/classifier.py): a TEST-phase Net that classifies images."""
import numpy as np

from numcaffe.net.errors import ShapeError
from numcaffe.net.net import TEST, Net
from numcaffe.net.pycaffe import io

__all__ = ["Classifier"]


def _centre_crop(size, crop):
    start = (np.asarray(size, dtype=int) - np.asarray(crop, dtype=int)) // 2
    return start, start + np.asarray(crop, dtype=int)


def input_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """The Transformer of pycaffe's Classifier and Detector for ``net``'s first input: H x W x K
    images transposed to K x H x W, then the given channel swap, raw scale, mean and input scale."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """pycaffe's Classifier: a TEST-phase Net that preprocesses images and predicts class probabilities.

    ``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: images are resized to ``image_dims`` (default: the
    net's input size), cropped to the input size, then transformed by ``self.transformer``
    (transpose (2, 0, 1), then the given channel swap, raw scale, mean and input scale).
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or len(image_dims) == 0 else np.array(image_dims)

    def predict(self, inputs, oversample=True):
        """(N, classes) probabilities for N H x W x K images; with ``oversample`` the mean over the
        10 crops of :func:`caffe.io.oversample`, else from the centre crop only."""
        if len(inputs) == 0:
            raise ShapeError("Classifier.predict needs at least one image")
        h, w = (int(d) for d in self.image_dims)
        input_ = np.zeros((len(inputs), h, w, np.shape(inputs[0])[2]), dtype=np.float32)
        for ix, im in enumerate(inputs):
            input_[ix] = io.resize_image(im, (h, w))
        if oversample:
            input_ = io.oversample(input_, self.crop_dims)
        else:
            start, end = _centre_crop((h, w), self.crop_dims)
            input_ = input_[:, start[0]:end[0], start[1]:end[1], :]
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, x) for x in input_])
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
