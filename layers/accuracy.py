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
from numcaffe.layers.loss import IgnoreLabelMixin, bad_label, check_label_count, first_bad_label
from numcaffe.layers.softmax import SoftmaxGeometry
from numcaffe.net.errors import NumcaffeError


@njit(cache=True)
def accuracy_forward(scores, label, outer, channels, inner, top_k, has_ignore, ignore_label, per_class, seen):
    """Returns (correct, counted, index of the first bad label or -1).

    If ``per_class`` is not empty, it receives each class's accuracy, using ``seen``
    (same length) as the tally of locations per class.
    """
    bad = first_bad_label(label, channels, has_ignore, ignore_label)
    if bad >= 0:
        return 0, 0, bad
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
class AccuracyLayer(IgnoreLabelMixin, Layer):
    """top[0] = correct / counted (0 if nothing counted); top[1] (optional) = per-class accuracy."""

    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2
    force_backward_bottoms = False

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.read_ignore_label(p)
        self.geometry = SoftmaxGeometry()
        self.seen = np.zeros(0, dtype=np.float64)
        self.no_per_class = np.zeros(0, dtype=np.float32)

    def Reshape(self, bottom, top):
        scores, label = bottom
        g = self.geometry
        g.update(scores, self.layer_param.accuracy_param.axis, self)
        check_label_count(self, g, scores, label, "axis")
        if self.top_k > g.channels:
            raise self.shape_error(f"top_k ({self.top_k}) must not exceed the number of classes "
                                   f"({g.channels})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((g.channels,))
            if self.seen.size != g.channels:
                self.seen = np.zeros(g.channels, dtype=np.float64)

    def Forward_cpu(self, bottom, top):
        per_class = top[1].flat_data if len(top) > 1 else self.no_per_class
        g = self.geometry
        correct, counted, bad = accuracy_forward(bottom[0].flat_data, bottom[1].flat_data, g.outer, g.channels,
                                                 g.inner, self.top_k, self.has_ignore, self.ignore_label,
                                                 per_class, self.seen)
        if bad >= 0:
            raise bad_label(self, bottom[1], bad, g.channels, self.ignore_or_none)
        top[0].data[...] = correct / counted if counted else 0.0

    def Backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise NumcaffeError(f"{self.describe()} has no gradient; it cannot be part of a backward pass")
