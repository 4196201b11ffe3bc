"""Loss layers: a scalar top, weight 1 by default, gradients scaled by that weight.

This module: SoftmaxWithLoss, InfogainLoss, SigmoidCrossEntropyLoss,
MultinomialLogisticLoss and the helpers all losses share; the distance and
margin losses (Euclidean, L1, Hinge, Contrastive) are in loss_distance.py.

Every Backward reads the loss weight where Caffe keeps it, in ``top[0].diff``
(the net's backward seeds it there), and multiplies it into the gradient.  Label
inputs never take a gradient: the net does not ask for one (``propagate_down``
is false for them and ``force_backward`` skips them); a layer that is asked
anyway raises a NumcaffeError, where Caffe would abort.

Normalization (``loss_param``), Caffe's ``get_normalizer``: the summed loss is
divided by

* FULL: every output location, ignored ones included (``outer * inner``);
* VALID: the locations whose label is not ``ignore_label``;
* BATCH_SIZE: ``outer`` (the batch size for the usual axis 1);
* NONE: 1;

and never by less than 1, so a batch whose labels are all ignored gives a loss
and gradient of 0 instead of NaN.  The legacy ``normalize`` bool, consulted only
when ``normalization`` is unset, means VALID when true and BATCH_SIZE when false.

Logs are clamped as in Caffe: ``log(max(p, FLT_MIN))`` for SoftmaxWithLoss,
``log(max(p, kLOG_THRESHOLD = 1e-20))`` for MultinomialLogisticLoss and
InfogainLoss; the gradients do not see the clamp (they are Caffe's formulas).
Sums are accumulated in float64.
"""
import numpy as np
from numba import njit

from numcaffe.layers.base import LossLayer, register
from numcaffe.layers.softmax import SoftmaxGeometry
from numcaffe.net.blob import Blob, proto_array
from numcaffe.net.config import parse_binary, read_bytes
from numcaffe.net.errors import ConfigError, NumcaffeError
from numcaffe.net.io import resolve_path
from numcaffe.net.proto import caffe_pb2

#: Caffe's clamp under the log of a softmax probability (float's FLT_MIN).
FLT_MIN = float(np.finfo(np.float32).tiny)
#: Caffe's kLOG_THRESHOLD, the clamp for MultinomialLogisticLoss and InfogainLoss.
LOG_THRESHOLD = 1e-20

_Norm = caffe_pb2.LossParameter


def normalization_mode(loss_param, default=_Norm.VALID):
    """The normalization a loss layer uses: ``normalization``, else legacy ``normalize``, else ``default``."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return _Norm.VALID if loss_param.normalize else _Norm.BATCH_SIZE
    return default


def get_normalizer(mode, outer, inner, valid_count):
    """Caffe's divisor for the summed loss; ``valid_count`` -1 means "all valid"; at least 1."""
    if mode == _Norm.FULL:
        n = outer * inner
    elif mode == _Norm.VALID:
        n = outer * inner if valid_count == -1 else valid_count
    elif mode == _Norm.BATCH_SIZE:
        n = outer
    elif mode == _Norm.NONE:
        n = 1
    else:
        raise ConfigError(f"unknown loss normalization mode {mode}")
    return float(max(1, n))


# ------------------------------------------------------------------ kernels


@njit(cache=True)
def first_bad_label(label, num_classes, has_ignore, ignore_label):
    """Flat index of the first label that is neither a class index in [0, num_classes) nor the
    ignore_label, or -1.  The kernels that read class-index labels call it first (from jitted
    code: no dispatch), so their loops need no check."""
    for k in range(label.size):
        lv = int(label[k])
        if (lv < 0 or lv >= num_classes) and not (has_ignore and lv == ignore_label):
            return k
    return -1


@njit(cache=True)
def softmax_loss_forward(prob, label, outer, channels, inner, has_ignore, ignore_label, floor):
    """-sum log(max(prob[label], floor)) over non-ignored locations.

    Returns (loss, valid count, flat index of the first label outside [0, C) or -1).
    """
    bad = first_bad_label(label, channels, has_ignore, ignore_label)
    if bad >= 0:
        return 0.0, 0, bad
    dim = channels * inner
    loss = 0.0
    count = 0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i * inner + j])
            if has_ignore and lv == ignore_label:
                continue
            p = prob[i * dim + lv * inner + j]
            loss -= np.log(floor if p < floor else p)
            count += 1
    return loss, count, -1


@njit(cache=True)
def softmax_loss_backward(prob, label, dx, outer, channels, inner, has_ignore, ignore_label, scale):
    """dx = scale * (prob - onehot(label)); 0 in ignored columns."""
    dim = channels * inner
    for i in range(outer):
        for c in range(channels):
            row = i * dim + c * inner
            for j in range(inner):
                lv = int(label[i * inner + j])
                if has_ignore and lv == ignore_label:
                    dx[row + j] = 0.0
                elif lv == c:
                    dx[row + j] = scale * (prob[row + j] - 1.0)
                else:
                    dx[row + j] = scale * prob[row + j]


@njit(cache=True)
def sigmoid_cross_entropy_forward(x, t, has_ignore, ignore_label):
    """-sum [t log s(x) + (1-t) log(1-s(x))], in the overflow-free form; returns (loss, valid count).

    With p = [x >= 0]:  -(x (t - p) - log(1 + exp(x - 2 x p))).
    """
    loss = 0.0
    count = 0
    for i in range(x.size):
        if has_ignore and int(t[i]) == ignore_label:
            continue
        xi = float(x[i])
        pos = 1.0 if xi >= 0.0 else 0.0
        loss -= xi * (t[i] - pos) - np.log1p(np.exp(xi - 2.0 * xi * pos))
        count += 1
    return loss, count


@njit(cache=True)
def sigmoid_cross_entropy_backward(x, t, dx, has_ignore, ignore_label, scale):
    """dx = scale * (sigmoid(x) - t); 0 where t is ignore_label."""
    for i in range(x.size):
        if has_ignore and int(t[i]) == ignore_label:
            dx[i] = 0.0
        else:
            s = 0.5 * np.tanh(0.5 * float(x[i])) + 0.5
            dx[i] = scale * (s - t[i])


@njit(cache=True)
def multinomial_logistic_forward(prob, label, num, dim, floor):
    """-sum_i log(max(prob[i, label_i], floor)); returns (loss, first bad label index or -1)."""
    bad = first_bad_label(label, dim, False, 0)
    if bad >= 0:
        return 0.0, bad
    loss = 0.0
    for i in range(num):
        p = prob[i * dim + int(label[i])]
        loss -= np.log(floor if p < floor else p)
    return loss, -1


@njit(cache=True)
def multinomial_logistic_backward(prob, label, dx, num, dim, floor, scale):
    """dx = scale / max(p, floor) at each label, 0 elsewhere (scale carries the minus sign)."""
    for i in range(dx.size):
        dx[i] = 0.0
    for i in range(num):
        lv = int(label[i])
        p = prob[i * dim + lv]
        dx[i * dim + lv] = scale / (floor if p < floor else p)


@njit(cache=True)
def infogain_forward(prob, label, H, outer, channels, inner, has_ignore, ignore_label, floor):
    """-sum over locations of sum_l H[label, l] log(max(prob_l, floor)).

    Returns (loss, valid count, flat index of the first bad label or -1).
    """
    bad = first_bad_label(label, channels, has_ignore, ignore_label)
    if bad >= 0:
        return 0.0, 0, bad
    dim = channels * inner
    loss = 0.0
    count = 0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i * inner + j])
            if has_ignore and lv == ignore_label:
                continue
            for l in range(channels):
                p = prob[i * dim + l * inner + j]
                loss -= H[lv * channels + l] * np.log(floor if p < floor else p)
            count += 1
    return loss, count, -1


@njit(cache=True)
def infogain_row_sums(H, channels, out):
    """out[r] = sum_c H[r, c]."""
    for r in range(channels):
        s = 0.0
        for c in range(channels):
            s += H[r * channels + c]
        out[r] = s


@njit(cache=True)
def infogain_backward(prob, label, H, row_sums, dx, outer, channels, inner, has_ignore, ignore_label,
                      scale):
    """dx_l = scale * (prob_l * sum_k H[label, k] - H[label, l]); 0 in ignored columns."""
    dim = channels * inner
    for i in range(outer):
        for c in range(channels):
            row = i * dim + c * inner
            for j in range(inner):
                lv = int(label[i * inner + j])
                if has_ignore and lv == ignore_label:
                    dx[row + j] = 0.0
                else:
                    dx[row + j] = scale * (prob[row + j] * row_sums[lv] - H[lv * channels + c])


# ------------------------------------------------------------------ helpers
# (Accuracy, which reads class-index labels the same way, uses them too.)


def check_no_label_gradient(layer, propagate_down, indices):
    for i in indices:
        if i < len(propagate_down) and propagate_down[i]:
            raise NumcaffeError(f"{layer.describe()} cannot backpropagate to its label input (bottom {i}); "
                                f"set propagate_down: false for that bottom")


def bad_label(layer, label_blob, index, num_classes, ignore_label=None):
    """The error for the label at flat ``index``, a kernel's first label outside [0, num_classes)."""
    value = float(label_blob.flat_data[index])
    also = f" or the ignore_label {ignore_label}" if ignore_label is not None else ""
    return NumcaffeError(f"{layer.describe()}: label {value:g} at position {index} is not a class "
                         f"index in [0, {num_classes}){also}")


def check_label_count(layer, geometry, scores, labels, axis_name):
    """One label per location: ``geometry.outer * geometry.inner`` of them (``scores`` seen around its class axis)."""
    g = geometry
    if g.outer * g.inner != labels.count:
        raise layer.shape_error(
            f"the number of labels must match the number of predictions: with {axis_name} "
            f"{g.axis} and scores of shape {scores.shape} there must be {g.outer * g.inner} "
            f"labels (values in 0..{g.channels - 1}), got {labels.count} (shape {labels.shape})")


class IgnoreLabelMixin:
    def read_ignore_label(self, param):
        """``has_ignore`` and ``ignore_label`` from ``param`` (a loss_param or accuracy_param)."""
        self.has_ignore = param.HasField("ignore_label")
        self.ignore_label = int(param.ignore_label) if self.has_ignore else 0

    @property
    def ignore_or_none(self):
        return self.ignore_label if self.has_ignore else None


class _SoftmaxLoss(IgnoreLabelMixin, LossLayer):
    """What SoftmaxWithLoss and InfogainLoss share: p = softmax(scores) along an axis,
    one label per location, a normalizer, and p as the optional top[1] (it shares
    p's memory; its diff is not used).  ``axis_field`` names the parameter holding
    the axis, ``axis_name`` how messages call it.
    """

    min_num_top = 1
    max_num_top = 2
    exact_num_top = None
    axis_field = "softmax_param"
    axis_name = "softmax axis"

    def LayerSetUp(self, bottom, top):
        self.read_ignore_label(self.layer_param.loss_param)
        self.geometry = SoftmaxGeometry()
        self.prob = Blob()
        self.normalizer = 1.0

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        self.geometry.update(bottom[0], getattr(self.layer_param, self.axis_field).axis, self)
        check_label_count(self, self.geometry, bottom[0], bottom[1], self.axis_name)
        self.prob.reshape(bottom[0].shape)
        if len(top) >= 2:
            top[1].reshape(bottom[0].shape)
            top[1].share_data(self.prob)

    def _set_loss(self, bottom, top, loss, count, bad):
        """top[0] = loss / normalizer, or the error for a kernel's bad label."""
        g = self.geometry
        if bad >= 0:
            raise bad_label(self, bottom[1], bad, g.channels, self.ignore_or_none)
        self.normalizer = get_normalizer(self.normalization, g.outer, g.inner, count)
        top[0].data[...] = loss / self.normalizer


# ------------------------------------------------------------------ layers


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_SoftmaxLoss):
    """Softmax along ``softmax_param.axis`` then the multinomial logistic loss of the labels.

    Bottoms: scores (outer x C x inner), labels (outer * inner class indices).
    loss = -sum log(max(p[label], FLT_MIN)) / normalizer;
    d scores = (p - onehot(label)) * loss_weight / normalizer (0 where ignored).
    Optional top[1]: the probabilities (it shares their memory; its diff is not used).
    """

    def LayerSetUp(self, bottom, top):
        super().LayerSetUp(bottom, top)
        self.normalization = normalization_mode(self.layer_param.loss_param)

    def Forward_cpu(self, bottom, top):
        g = self.geometry
        g.forward(bottom[0].flat_data, self.prob.flat_data)
        loss, count, bad = softmax_loss_forward(self.prob.flat_data, bottom[1].flat_data, g.outer,
                                                g.channels, g.inner, self.has_ignore, self.ignore_label,
                                                FLT_MIN)
        self._set_loss(bottom, top, loss, count, bad)

    def Backward_cpu(self, top, propagate_down, bottom):
        check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            g = self.geometry
            scale = float(top[0].flat_diff[0]) / self.normalizer
            softmax_loss_backward(self.prob.flat_data, bottom[1].flat_data, bottom[0].flat_diff, g.outer,
                                  g.channels, g.inner, self.has_ignore, self.ignore_label, scale)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(IgnoreLabelMixin, LossLayer):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1], elementwise.

    loss = -sum [t log s(x) + (1 - t) log(1 - s(x))] / normalizer, computed without
    overflow; dx = (s(x) - t) * loss_weight / normalizer, 0 where t == ignore_label.
    normalization: ``loss_param.normalization`` if set, else legacy ``normalize``,
    else BATCH_SIZE (Caffe's default here, unlike SoftmaxWithLoss); outer = shape[0],
    inner = count / shape[0].
    """

    def LayerSetUp(self, bottom, top):
        self.read_ignore_label(self.layer_param.loss_param)
        self.normalization = normalization_mode(self.layer_param.loss_param, default=_Norm.BATCH_SIZE)
        self.normalizer = 1.0

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.shape_error(f"inputs must have the same count; got {bottom[0].shape} "
                                   f"and {bottom[1].shape}")
        self.outer = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner = bottom[0].count_range(1)

    def Forward_cpu(self, bottom, top):
        loss, count = sigmoid_cross_entropy_forward(bottom[0].flat_data, bottom[1].flat_data,
                                                    self.has_ignore, self.ignore_label)
        self.normalizer = get_normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = loss / self.normalizer

    def Backward_cpu(self, top, propagate_down, bottom):
        check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            scale = float(top[0].flat_diff[0]) / self.normalizer
            sigmoid_cross_entropy_backward(bottom[0].flat_data, bottom[1].flat_data, bottom[0].flat_diff,
                                           self.has_ignore, self.ignore_label, scale)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """Bottom 0 holds probabilities (N x D), bottom 1 one label per example.

    loss = -sum_n log(max(p[n, label_n], 1e-20)) / N;
    dp[n, label_n] = -w / (N max(p, 1e-20)), 0 elsewhere.
    """

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.dim = bottom[0].count // max(self.num, 1)
        if bottom[1].count != self.num:
            raise self.shape_error(f"needs one label per example (labels of shape N x 1 x 1 x 1): "
                                   f"{self.num} for probabilities of shape {bottom[0].shape}, got "
                                   f"labels of shape {bottom[1].shape}")

    def Forward_cpu(self, bottom, top):
        loss, bad = multinomial_logistic_forward(bottom[0].flat_data, bottom[1].flat_data, self.num,
                                                 self.dim, LOG_THRESHOLD)
        if bad >= 0:
            raise bad_label(self, bottom[1], bad, self.dim)
        top[0].data[...] = loss / self.num

    def Backward_cpu(self, top, propagate_down, bottom):
        check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            scale = -float(top[0].flat_diff[0]) / self.num
            multinomial_logistic_backward(bottom[0].flat_data, bottom[1].flat_data, bottom[0].flat_diff,
                                          self.num, self.dim, LOG_THRESHOLD, scale)


@register("InfogainLoss")
class InfogainLossLayer(_SoftmaxLoss):
    """SoftmaxWithLoss generalised by an "information gain" matrix H (C x C).

    p = softmax(scores) along ``infogain_loss_param.axis``;
    loss = -sum over locations of sum_l H[label, l] log(max(p_l, 1e-20)) / normalizer;
    d scores_l = (p_l sum_k H[label, k] - H[label, l]) w / normalizer.
    H comes from bottom 2, or else from the .binaryproto ``infogain_loss_param.source``
    (a relative path is looked up in the working directory, as Caffe does, then beside
    the net's config file).  With H = identity this is SoftmaxWithLoss (up to the log clamp).
    ``loss_param.normalization`` (default VALID); the legacy ``normalize`` is refused, as
    in Caffe.  Optional top[1]: the probabilities.
    """

    exact_num_bottom = None
    min_num_bottom = 2
    max_num_bottom = 3
    axis_field = "infogain_loss_param"
    axis_name = "infogain axis"

    def LayerSetUp(self, bottom, top):
        super().LayerSetUp(bottom, top)
        lp = self.layer_param.loss_param
        if lp.HasField("normalize"):
            raise ConfigError(f"{self.describe()}: loss_param.normalize is deprecated and not accepted "
                              f"here; use loss_param.normalization")
        self.normalization = lp.normalization
        self.row_sums = np.zeros(0, dtype=np.float64)
        self.infogain = None
        if len(bottom) < 3:
            self.infogain = self._read_infogain()

    def _read_infogain(self):
        param = self.layer_param.infogain_loss_param
        if not param.source:
            raise ConfigError(f"{self.describe()}: the infogain matrix must come from a third bottom or "
                              f"from infogain_loss_param.source")
        path = resolve_path(param.source, self.base_dir, must_exist=False)
        proto = parse_binary(read_bytes(path, "infogain matrix (.binaryproto)"), caffe_pb2.BlobProto(), path)
        return np.ascontiguousarray(proto_array(proto).ravel(), dtype=np.float32)

    def _matrix(self, bottom):
        return bottom[2].flat_data if len(bottom) >= 3 else self.infogain

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        g = self.geometry
        H = self._matrix(bottom)
        if H.size != g.channels * g.channels:
            raise self.shape_error(f"the infogain matrix H must be {g.channels} x {g.channels} "
                                   f"(one row and column per class), got {H.size} values")
        if self.row_sums.size != g.channels:
            self.row_sums = np.zeros(g.channels, dtype=np.float64)
        if len(bottom) < 3:
            infogain_row_sums(H, g.channels, self.row_sums)   # fixed H: sum its rows once

    def Forward_cpu(self, bottom, top):
        g = self.geometry
        g.forward(bottom[0].flat_data, self.prob.flat_data)
        loss, count, bad = infogain_forward(self.prob.flat_data, bottom[1].flat_data, self._matrix(bottom),
                                            g.outer, g.channels, g.inner, self.has_ignore, self.ignore_label,
                                            LOG_THRESHOLD)
        self._set_loss(bottom, top, loss, count, bad)

    def Backward_cpu(self, top, propagate_down, bottom):
        check_no_label_gradient(self, propagate_down, [1, 2])
        if propagate_down[0]:
            g = self.geometry
            H = self._matrix(bottom)
            if len(bottom) >= 3:
                infogain_row_sums(H, g.channels, self.row_sums)   # H is an input: it may change
            scale = float(top[0].flat_diff[0]) / self.normalizer
            infogain_backward(self.prob.flat_data, bottom[1].flat_data, H, self.row_sums, bottom[0].flat_diff,
                              g.outer, g.channels, g.inner, self.has_ignore, self.ignore_label, scale)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
