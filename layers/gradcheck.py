"""Finite-difference gradient checking, for layers (and, through them, nets).

The checker follows Caffe's GradientChecker: central differences of a scalar
objective with respect to every checked bottom element and every parameter
element, compared with what ``Backward`` computed, within
``threshold * max(|analytic|, |numeric|, 1)``.  Two differences from Caffe:

* the objective is ``sum(w * top)`` over all tops with fixed random weights
  ``w``, summed in double precision, so every top element is exercised and no
  extra non-linearity is introduced by the objective itself;
* random layers (dropout, ...) are put back in the same random state before
  every forward pass, so the finite differences see the same mask.

Points near a kink (``|x - kink| <= kink_range``) are skipped, as in Caffe.  An
analytic gradient that is not finite (a checked bottom diff left unwritten is
NaN) always fails.
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BlobReport:
    """The outcome for one checked blob."""

    label: str
    checked: int = 0
    skipped: int = 0
    worst: float = 0.0          # largest |a - n| / max(|a|, |n|, 1)
    worst_index: int = -1
    analytic: float = 0.0
    numeric: float = 0.0
    failures: list = field(default_factory=list)


def _objective(top, weights):
    return float(sum(np.dot(t.flat_data.astype(np.float64), w) for t, w in zip(top, weights)))


def check_layer(layer, bottom, top, check_bottom=None, step=1e-2, threshold=1e-2,
                kink=None, kink_range=-1.0, max_checks=200, seed=1701, setup=True, detect_kinks=False):
    """Check ``layer``'s gradients; returns a list of :class:`BlobReport`.

    ``check_bottom``: indices of bottoms to check (default all).  Parameters
    are checked unless the layer sets ``param_propagate_down[j]`` False.  At
    most ``max_checks`` elements per blob are tried, picked at random, so large
    blobs stay cheap.  ``detect_kinks`` is for points whose kinks are not known
    beforehand (``numcaffe gradcheck`` on real activations): where the central
    difference disagrees, the one-sided differences are compared too, and if
    they disagree with each other the function is not smooth there and the
    point is skipped, not failed.
    """
    rs = np.random.RandomState(seed)
    if setup:
        layer.SetUp(bottom, top)
    state = layer.get_state()

    def forward():
        layer.set_state(state)
        layer.Forward(bottom, top)

    def objective():
        forward()
        return _objective(top, weights)

    forward()
    weights = [rs.uniform(-1.0, 1.0, t.count) for t in top]
    if check_bottom is None:
        check_bottom = range(len(bottom))
    propagate = [i in set(check_bottom) for i in range(len(bottom))]

    # Analytic gradient: set top diffs to d(objective)/d(top), backward once.
    for t, w in zip(top, weights):
        t.flat_diff[...] = w
    for b, p in zip(bottom, propagate):
        b.flat_diff[...] = np.nan if p else 0.0  # checked diffs must be overwritten, not accumulated
    for p in layer.blobs:
        p.flat_diff[...] = 0.0
    layer.Backward(top, propagate, bottom)

    targets = [(f"bottom[{i}]", bottom[i]) for i in check_bottom]
    # Blobs the layer marks as taking no gradient (BatchNorm's statistics) are not checked.
    targets += [(f"param[{j}]", p) for j, p in enumerate(layer.blobs)
                if j >= len(layer.param_propagate_down) or layer.param_propagate_down[j]]
    analytic = {label: blob.flat_diff.astype(np.float64).copy() for label, blob in targets}

    reports = []
    for label, blob in targets:
        rep = BlobReport(label)
        n = blob.count
        idx = np.arange(n) if n <= max_checks else rs.choice(n, max_checks, replace=False)
        flat = blob.flat_data
        for i in idx:
            x = float(flat[i])
            if kink is not None and abs(x - kink) <= kink_range:
                rep.skipped += 1
                continue
            flat[i] = x + step
            pos = objective()
            flat[i] = x - step
            neg = objective()
            flat[i] = x
            numeric = (pos - neg) / (2.0 * step)
            a = float(analytic[label][i])
            err = abs(a - numeric) / max(abs(a), abs(numeric), 1.0) if np.isfinite(a) else np.inf
            if detect_kinks and err > threshold and np.isfinite(a):
                mid = objective()
                right, left = (pos - mid) / step, (mid - neg) / step
                if abs(right - left) / max(abs(right), abs(left), 1.0) > threshold:
                    rep.skipped += 1          # not differentiable here (a kink)
                    continue
            rep.checked += 1
            if err > rep.worst or rep.worst_index < 0:
                rep.worst, rep.worst_index, rep.analytic, rep.numeric = err, int(i), a, numeric
            if err > threshold:
                rep.failures.append((int(i), a, numeric))
        reports.append(rep)
    forward()
    return reports


def format_reports(reports):
    lines = []
    for r in reports:
        lines.append(f"{r.label}: checked {r.checked}, skipped {r.skipped}, worst relative error "
                     f"{r.worst:.3g} at {r.worst_index} (analytic {r.analytic:.6g}, numeric {r.numeric:.6g})")
    return "\n".join(lines)
