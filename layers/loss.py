"""Loss layers: a scalar top, weight 1 by default, gradients scaled by that weight.

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
from numcaffe.net.db import resolve_path
from numcaffe.net.errors import ConfigError, NumcaffeError
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
def softmax_loss_forward(prob, label, outer, channels, inner, has_ignore, ignore_label, floor):
    """-sum log(max(prob[label], floor)) over non-ignored locations.

    Returns (loss, valid count, flat index of the first label outside [0, C) or -1).
    """
    dim = channels * inner
    loss = 0.0
    count = 0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i * inner + j])
            if has_ignore and lv == ignore_label:
                continue
            if lv < 0 or lv >= channels:
                return loss, count, i * inner + j
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
def difference_sumsq(a, b, diff):
    """diff = a - b; returns sum(diff^2) in float64."""
    total = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        diff[i] = d
        total += float(d) * float(d)
    return total


@njit(cache=True)
def difference_sumabs(a, b, diff):
    """diff = a - b; returns sum(|diff|) in float64."""
    total = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        diff[i] = d
        total += abs(float(d))
    return total


@njit(cache=True)
def scaled_copy(src, alpha, dst):
    """dst = alpha * src."""
    for i in range(src.size):
        dst[i] = alpha * src[i]


@njit(cache=True)
def scaled_sign(src, alpha, dst):
    """dst = alpha * sign(src), sign(0) = 0."""
    for i in range(src.size):
        if src[i] > 0:
            dst[i] = alpha
        elif src[i] < 0:
            dst[i] = -alpha
        else:
            dst[i] = 0.0


@njit(cache=True)
def hinge_forward(x, label, margins, num, dim, squared):
    """margins = max(0, 1 + d * x) with d = -1 at the label, +1 elsewhere.

    Returns (sum of margins, or of their squares, in float64; index of the first bad label or -1).
    """
    total = 0.0
    for i in range(num):
        lv = int(label[i])
        if lv < 0 or lv >= dim:
            return total, i
        for j in range(dim):
            v = x[i * dim + j]
            if j == lv:
                v = -v
            m = 1.0 + v
            if m < 0.0:
                m = 0.0
            margins[i * dim + j] = m
            total += m * m if squared else m
    return total, -1


@njit(cache=True)
def hinge_backward(margins, label, dx, num, dim, squared, scale):
    """dx = scale * d * (sign(m) for L1 | 2 m for L2), d = -1 at the label."""
    for i in range(num):
        lv = int(label[i])
        for j in range(dim):
            m = margins[i * dim + j]
            g = 2.0 * m if squared else (1.0 if m > 0.0 else 0.0)
            if j == lv:
                g = -g
            dx[i * dim + j] = scale * g


@njit(cache=True)
def multinomial_logistic_forward(prob, label, num, dim, floor):
    """-sum_i log(max(prob[i, label_i], floor)); returns (loss, first bad label index or -1)."""
    loss = 0.0
    for i in range(num):
        lv = int(label[i])
        if lv < 0 or lv >= dim:
            return loss, i
        p = prob[i * dim + lv]
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
    dim = channels * inner
    loss = 0.0
    count = 0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i * inner + j])
            if has_ignore and lv == ignore_label:
                continue
            if lv < 0 or lv >= channels:
                return loss, count, i * inner + j
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


@njit(cache=True)
def contrastive_forward(a, b, sim, diff, dist_sq, num, channels, margin, legacy):
    """Summed contrastive loss (before the 1 / 2N): d^2 for similar pairs, else
    max(margin - d^2, 0) (legacy) or max(margin - d, 0)^2.  Fills diff = a - b and dist_sq.
    """
    loss = 0.0
    for i in range(num):
        s = 0.0
        for c in range(channels):
            d = a[i * channels + c] - b[i * channels + c]
            diff[i * channels + c] = d
            s += float(d) * float(d)
        dist_sq[i] = s
        if int(sim[i]) != 0:
            loss += s
        elif legacy:
            m = margin - s
            loss += m if m > 0.0 else 0.0
        else:
            m = margin - np.sqrt(s)
            if m > 0.0:
                loss += m * m
    return loss


@njit(cache=True)
def contrastive_backward(diff, dist_sq, sim, dx, num, channels, margin, legacy, alpha):
    """alpha * diff for similar pairs; for dissimilar ones inside the margin -alpha * diff
    (legacy) or -alpha * (margin - d) / (d + 1e-4) * diff; 0 outside the margin.
    """
    for i in range(num):
        if int(sim[i]) != 0:
            beta = alpha
        elif legacy:
            beta = -alpha if margin - dist_sq[i] > 0.0 else 0.0
        else:
            dist = np.sqrt(dist_sq[i])
            m = margin - dist
            beta = -alpha * m / (dist + 1e-4) if m > 0.0 else 0.0
        for c in range(channels):
            dx[i * channels + c] = beta * diff[i * channels + c]


# ------------------------------------------------------------------ helpers


def _check_no_label_gradient(layer, propagate_down, indices):
    for i in indices:
        if i < len(propagate_down) and propagate_down[i]:
            raise NumcaffeError(f"{layer.describe()} cannot backpropagate to its label input (bottom {i}); "
                                f"set propagate_down: false for that bottom")


def _bad_label(layer, label_blob, index, num_classes, ignore_label=None):
    value = float(label_blob.flat_data[index])
    also = f" or the ignore_label {ignore_label}" if ignore_label is not None else ""
    return NumcaffeError(f"{layer.describe()}: label {value:g} at position {index} is not a class "
                         f"index in [0, {num_classes}){also}")


class _IgnoreLabelMixin:
    def _read_ignore_label(self):
        lp = self.layer_param.loss_param
        self.has_ignore = lp.HasField("ignore_label")
        self.ignore_label = int(lp.ignore_label) if self.has_ignore else 0

    @property
    def _ignore_or_none(self):
        return self.ignore_label if self.has_ignore else None


# ------------------------------------------------------------------ layers


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_IgnoreLabelMixin, LossLayer):
    """Softmax along ``softmax_param.axis`` then the multinomial logistic loss of the labels.

    Bottoms: scores (outer x C x inner), labels (outer * inner class indices).
    loss = -sum log(max(p[label], FLT_MIN)) / normalizer;
    d scores = (p - onehot(label)) * loss_weight / normalizer (0 where ignored).
    Optional top[1]: the probabilities (it shares their memory; its diff is not used).
    """

    min_num_top = 1
    max_num_top = 2
    exact_num_top = None

    def LayerSetUp(self, bottom, top):
        self._read_ignore_label()
        self.normalization = normalization_mode(self.layer_param.loss_param)
        self.geometry = SoftmaxGeometry()
        self.prob = Blob()
        self.normalizer = 1.0

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        g = self.geometry
        g.update(bottom[0], self.layer_param.softmax_param.axis, self)
        if g.outer * g.inner != bottom[1].count:
            raise self.shape_error(
                f"the number of labels must match the number of predictions: with softmax axis "
                f"{g.axis} and scores of shape {bottom[0].shape} there must be {g.outer * g.inner} "
                f"labels (values in 0..{g.channels - 1}), got {bottom[1].count} (shape {bottom[1].shape})")
        self.prob.reshape(bottom[0].shape)
        if len(top) >= 2:
            top[1].reshape(bottom[0].shape)
            top[1].share_data(self.prob)

    def Forward_cpu(self, bottom, top):
        g = self.geometry
        g.forward(bottom[0].flat_data, self.prob.flat_data)
        loss, count, bad = softmax_loss_forward(self.prob.flat_data, bottom[1].flat_data, g.outer,
                                                g.channels, g.inner, self.has_ignore, self.ignore_label,
                                                FLT_MIN)
        if bad >= 0:
            raise _bad_label(self, bottom[1], bad, g.channels, self._ignore_or_none)
        self.normalizer = get_normalizer(self.normalization, g.outer, g.inner, count)
        top[0].data[...] = loss / self.normalizer

    def Backward_cpu(self, top, propagate_down, bottom):
        _check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            g = self.geometry
            scale = float(top[0].flat_diff[0]) / self.normalizer
            softmax_loss_backward(self.prob.flat_data, bottom[1].flat_data, bottom[0].flat_diff, g.outer,
                                  g.channels, g.inner, self.has_ignore, self.ignore_label, scale)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(_IgnoreLabelMixin, LossLayer):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1], elementwise.

    loss = -sum [t log s(x) + (1 - t) log(1 - s(x))] / normalizer, computed without
    overflow; dx = (s(x) - t) * loss_weight / normalizer, 0 where t == ignore_label.
    normalization: ``loss_param.normalization`` if set, else legacy ``normalize``,
    else BATCH_SIZE (Caffe's default here, unlike SoftmaxWithLoss); outer = shape[0],
    inner = count / shape[0].
    """

    def LayerSetUp(self, bottom, top):
        self._read_ignore_label()
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
        _check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            scale = float(top[0].flat_diff[0]) / self.normalizer
            sigmoid_cross_entropy_backward(bottom[0].flat_data, bottom[1].flat_data, bottom[0].flat_diff,
                                           self.has_ignore, self.ignore_label, scale)


class _DifferenceLoss(LossLayer):
    """Shared shape logic of EuclideanLoss and L1Loss: two same-sized inputs, both differentiable."""

    def LayerSetUp(self, bottom, top):
        self.diff = np.zeros(0, dtype=np.float32)

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.shape_error(f"inputs must have the same dimension; got {bottom[0].shape} "
                                   f"and {bottom[1].shape}")
        if self.diff.size != bottom[0].count:
            self.diff = np.zeros(bottom[0].count, dtype=np.float32)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1

    def allow_force_backward(self, bottom_index):
        return True


@register("EuclideanLoss")
class EuclideanLossLayer(_DifferenceLoss):
    """loss = sum (a - b)^2 / (2 N);  da = (a - b) w / N,  db = -(a - b) w / N  (w: loss weight)."""

    def Forward_cpu(self, bottom, top):
        sumsq = difference_sumsq(bottom[0].flat_data, bottom[1].flat_data, self.diff)
        top[0].data[...] = sumsq / self.num / 2.0

    def Backward_cpu(self, top, propagate_down, bottom):
        w = float(top[0].flat_diff[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                scaled_copy(self.diff, sign * w / self.num, bottom[i].flat_diff)


@register("L1Loss")
class L1LossLayer(_DifferenceLoss):
    """numcaffe extension, the L1 sibling of EuclideanLoss: loss = sum |a - b| / N.

    da = sign(a - b) w / N,  db = -sign(a - b) w / N  (w: loss weight).  Where
    a == b, |.| has no derivative; the subgradient 0 is used there.
    """

    def Forward_cpu(self, bottom, top):
        sumabs = difference_sumabs(bottom[0].flat_data, bottom[1].flat_data, self.diff)
        top[0].data[...] = sumabs / self.num

    def Backward_cpu(self, top, propagate_down, bottom):
        w = float(top[0].flat_diff[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                scaled_sign(self.diff, sign * w / self.num, bottom[i].flat_diff)


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge loss of N x D scores against N class labels.

    With d_nk = -1 if k == label_n else +1 and m_nk = max(0, 1 + d_nk x_nk):
    L1 (default): loss = sum m / N,    dx = d * sign(m) w / N;
    L2:           loss = sum m^2 / N,  dx = 2 d m w / N.
    """

    def LayerSetUp(self, bottom, top):
        self.squared = self.layer_param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
        self.margins = np.zeros(0, dtype=np.float32)

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.dim = bottom[0].count // max(self.num, 1)
        if bottom[1].count != self.num:
            raise self.shape_error(f"needs one label per example: {self.num} for scores of shape "
                                   f"{bottom[0].shape}, got labels of shape {bottom[1].shape}")
        if self.margins.size != bottom[0].count:
            self.margins = np.zeros(bottom[0].count, dtype=np.float32)

    def Forward_cpu(self, bottom, top):
        total, bad = hinge_forward(bottom[0].flat_data, bottom[1].flat_data, self.margins, self.num, self.dim,
                                   self.squared)
        if bad >= 0:
            raise _bad_label(self, bottom[1], bad, self.dim)
        top[0].data[...] = total / self.num

    def Backward_cpu(self, top, propagate_down, bottom):
        _check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            scale = float(top[0].flat_diff[0]) / self.num
            hinge_backward(self.margins, bottom[1].flat_data, bottom[0].flat_diff, self.num, self.dim,
                           self.squared, scale)


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
            raise _bad_label(self, bottom[1], bad, self.dim)
        top[0].data[...] = loss / self.num

    def Backward_cpu(self, top, propagate_down, bottom):
        _check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            scale = -float(top[0].flat_diff[0]) / self.num
            multinomial_logistic_backward(bottom[0].flat_data, bottom[1].flat_data, bottom[0].flat_diff,
                                          self.num, self.dim, LOG_THRESHOLD, scale)


@register("InfogainLoss")
class InfogainLossLayer(_IgnoreLabelMixin, LossLayer):
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
    exact_num_top = None
    min_num_top = 1
    max_num_top = 2

    def LayerSetUp(self, bottom, top):
        self._read_ignore_label()
        lp = self.layer_param.loss_param
        if lp.HasField("normalize"):
            raise ConfigError(f"{self.describe()}: loss_param.normalize is deprecated and not accepted "
                              f"here; use loss_param.normalization")
        self.normalization = lp.normalization
        self.geometry = SoftmaxGeometry()
        self.prob = Blob()
        self.normalizer = 1.0
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
        g.update(bottom[0], self.layer_param.infogain_loss_param.axis, self)
        if g.outer * g.inner != bottom[1].count:
            raise self.shape_error(
                f"the number of labels must match the number of predictions: with infogain axis "
                f"{g.axis} and scores of shape {bottom[0].shape} there must be {g.outer * g.inner} "
                f"labels (values in 0..{g.channels - 1}), got {bottom[1].count} (shape {bottom[1].shape})")
        H = self._matrix(bottom)
        if H.size != g.channels * g.channels:
            raise self.shape_error(f"the infogain matrix H must be {g.channels} x {g.channels} "
                                   f"(one row and column per class), got {H.size} values")
        if self.row_sums.size != g.channels:
            self.row_sums = np.zeros(g.channels, dtype=np.float64)
        if len(bottom) < 3:
            infogain_row_sums(H, g.channels, self.row_sums)   # fixed H: sum its rows once
        self.prob.reshape(bottom[0].shape)
        if len(top) >= 2:
            top[1].reshape(bottom[0].shape)
            top[1].share_data(self.prob)

    def Forward_cpu(self, bottom, top):
        g = self.geometry
        g.forward(bottom[0].flat_data, self.prob.flat_data)
        loss, count, bad = infogain_forward(self.prob.flat_data, bottom[1].flat_data, self._matrix(bottom),
                                            g.outer, g.channels, g.inner, self.has_ignore, self.ignore_label,
                                            LOG_THRESHOLD)
        if bad >= 0:
            raise _bad_label(self, bottom[1], bad, g.channels, self._ignore_or_none)
        self.normalizer = get_normalizer(self.normalization, g.outer, g.inner, count)
        top[0].data[...] = loss / self.normalizer

    def Backward_cpu(self, top, propagate_down, bottom):
        _check_no_label_gradient(self, propagate_down, [1, 2])
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


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Siamese loss of feature pairs (a_n, b_n), N x C each, with similarity labels y_n.

    d_n = ||a_n - b_n||; loss = sum_n [y_n d_n^2 + (1 - y_n) max(margin - d_n, 0)^2] / 2N,
    or with ``legacy_version`` (1 - y_n) max(margin - d_n^2, 0).  Gradients as Caffe:
    da = -db = (a - b) w / N for similar pairs; for dissimilar ones inside the margin
    -(a - b) w / N (legacy) or -(margin - d) / (d + 1e-4) (a - b) w / N.
    """

    exact_num_bottom = 3

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)
        self.diff = np.zeros(0, dtype=np.float32)
        self.dist_sq = np.zeros(0, dtype=np.float64)

    def Reshape(self, bottom, top):
        super().Reshape(bottom, top)
        a, b, y = bottom
        if a.shape != b.shape or a.count_range(2) != 1:
            raise self.shape_error(f"the two feature inputs must both be N x C (x 1 x 1); got {a.shape} "
                                   f"and {b.shape}")
        self.num = a.shape[0] if a.num_axes else 1
        self.channels = a.count // max(self.num, 1)
        if y.count != self.num:
            raise self.shape_error(f"needs one similarity label per pair ({self.num}), got shape {y.shape}")
        if self.diff.size != a.count:
            self.diff = np.zeros(a.count, dtype=np.float32)
        if self.dist_sq.size != self.num:
            self.dist_sq = np.zeros(self.num, dtype=np.float64)

    def Forward_cpu(self, bottom, top):
        loss = contrastive_forward(bottom[0].flat_data, bottom[1].flat_data, bottom[2].flat_data, self.diff,
                                   self.dist_sq, self.num, self.channels, self.margin, self.legacy)
        top[0].data[...] = loss / self.num / 2.0

    def Backward_cpu(self, top, propagate_down, bottom):
        _check_no_label_gradient(self, propagate_down, [2])
        w = float(top[0].flat_diff[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                contrastive_backward(self.diff, self.dist_sq, bottom[2].flat_data, bottom[i].flat_diff,
                                     self.num, self.channels, self.margin, self.legacy, sign * w / self.num)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2
