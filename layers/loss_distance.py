"""Losses of distances and margins: EuclideanLoss, L1Loss, HingeLoss, ContrastiveLoss.

Each divides its sum by the batch size N (the first axis; Euclidean and
Contrastive by 2N, as Caffe), with no ``loss_param`` normalization, and
multiplies its gradient by the loss weight that ``top[0].diff`` holds (see
layers/loss.py).  Euclidean and L1 take a
gradient for both inputs; Hinge's labels and Contrastive's similarity labels
take none.  Sums are accumulated in float64.
"""
import numpy as np
from numba import njit

from numcaffe.layers.base import LossLayer, register
from numcaffe.layers.elementwise import scale_into
from numcaffe.layers.loss import bad_label, check_no_label_gradient, first_bad_label
from numcaffe.net.proto import caffe_pb2

# ------------------------------------------------------------------ kernels


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
    bad = first_bad_label(label, dim, False, 0)
    if bad >= 0:
        return 0.0, bad
    total = 0.0
    for i in range(num):
        lv = int(label[i])
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


# ------------------------------------------------------------------ layers


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
                scale_into(sign * w / self.num, self.diff, bottom[i].flat_diff)


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
            raise bad_label(self, bottom[1], bad, self.dim)
        top[0].data[...] = total / self.num

    def Backward_cpu(self, top, propagate_down, bottom):
        check_no_label_gradient(self, propagate_down, [1])
        if propagate_down[0]:
            scale = float(top[0].flat_diff[0]) / self.num
            hinge_backward(self.margins, bottom[1].flat_data, bottom[0].flat_diff, self.num, self.dim,
                           self.squared, scale)


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
        check_no_label_gradient(self, propagate_down, [2])
        w = float(top[0].flat_diff[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                contrastive_backward(self.diff, self.dist_sq, bottom[2].flat_data, bottom[i].flat_diff,
                                     self.num, self.channels, self.margin, self.legacy, sign * w / self.num)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2
