"""Accuracy: the fraction of locations whose label is among the top-k scores.

Scores are ``outer x C x inner`` around ``accuracy_param.axis`` (default 1), labels
one per ``outer * inner`` location, as for SoftmaxWithLoss.  A location counts as
correct when fewer than ``top_k`` classes score at least as high as the true class
(ties count against it, as in Caffe).  Locations labelled ``ignore_label`` are
left out of both the numerator and the count; with nothing counted the accuracy
is 0.  An optional second top holds the per-class accuracy (correct / seen for
each class, 0 for a class not seen in the batch).  No gradient.
"""
import numpy as np
from numba import njit

from numcaffe.layers.base import Layer, register
from numcaffe.net.errors import NumcaffeError, ShapeError


@njit(cache=True)
def accuracy_forward(scores, label, outer, channels, inner, top_k, has_ignore, ignore_label, per_class, seen):
    """Returns (correct, counted, index of the first bad label or -1).

    If ``per_class`` is not empty, it receives each class's accuracy, using ``seen``
    (same length) as the tally of locations per class.
    """
    dim = channels * inner
    tally = per_class.size > 0
    correct = 0
    counted = 0
    for c in range(per_class.size):
        per_class[c] = 0.0
        seen[c] = 0.0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i * inner + j])
            if has_ignore and lv == ignore_label:
                continue
            if lv < 0 or lv >= channels:
                return correct, counted, i * inner + j
            true_score = scores[i * dim + lv * inner + j]
            at_least_as_high = 0                      # includes the true class itself
            for c in range(channels):
                if scores[i * dim + c * inner + j] >= true_score:
                    at_least_as_high += 1
                    if at_least_as_high > top_k:
                        break
            hit = at_least_as_high <= top_k
            if hit:
                correct += 1
            if tally:
                seen[lv] += 1.0
                if hit:
                    per_class[lv] += 1.0
            counted += 1
    for c in range(per_class.size):
        if seen[c] > 0.0:
            per_class[c] = per_class[c] / seen[c]
    return correct, counted, -1


@register("Accuracy")
class AccuracyLayer(Layer):
    """top[0] = correct / counted (0 if nothing counted); top[1] (optional) = per-class accuracy."""

    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2
    force_backward_bottoms = False

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.has_ignore = p.HasField("ignore_label")
        self.ignore_label = int(p.ignore_label) if self.has_ignore else 0
        self.seen = np.zeros(0, dtype=np.float64)
        self.no_per_class = np.zeros(0, dtype=np.float32)

    def Reshape(self, bottom, top):
        scores, label = bottom
        if scores.num_axes == 0:
            raise self.shape_error("needs scores with at least one axis, got a scalar")
        try:
            self.axis = scores.canonical_axis(self.layer_param.accuracy_param.axis)
        except ShapeError as e:
            raise self.shape_error(str(e)) from None
        self.outer = scores.count_range(0, self.axis)
        self.channels = scores.shape[self.axis]
        self.inner = scores.count_range(self.axis + 1)
        if self.outer * self.inner != label.count:
            raise self.shape_error(
                f"the number of labels must match the number of predictions: with axis {self.axis} and "
                f"scores of shape {scores.shape} there must be {self.outer * self.inner} labels, got "
                f"{label.count} (shape {label.shape})")
        if self.top_k > self.channels:
            raise self.shape_error(f"top_k ({self.top_k}) must not exceed the number of classes "
                                   f"({self.channels})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.channels,))
            if self.seen.size != self.channels:
                self.seen = np.zeros(self.channels, dtype=np.float64)

    def Forward_cpu(self, bottom, top):
        per_class = top[1].flat_data if len(top) > 1 else self.no_per_class
        correct, counted, bad = accuracy_forward(bottom[0].flat_data, bottom[1].flat_data, self.outer,
                                                 self.channels, self.inner, self.top_k, self.has_ignore,
                                                 self.ignore_label, per_class, self.seen)
        if bad >= 0:
            also = f" or the ignore_label {self.ignore_label}" if self.has_ignore else ""
            raise NumcaffeError(f"{self.describe()}: label {float(bottom[1].flat_data[bad]):g} at position "
                                f"{bad} is not a class index in [0, {self.channels}){also}")
        top[0].data[...] = correct / counted if counted else 0.0

    def Backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise NumcaffeError(f"{self.describe()} has no gradient; it cannot be part of a backward pass")
