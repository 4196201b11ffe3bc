"""Gradient cases for layers/softmax.py, loss.py and accuracy.py.

Forward values are checked against numpy oracles written from Caffe's
definitions (float64).  Losses with label inputs check only bottom 0; inputs
are drawn away from the kinks (hinge at x = +-1, L1 at a == b, the contrastive
margin), so finite differences never straddle one.
"""
import numpy as np

from tests.layers.gradcase import GradCase, gaussian, labels, uniform

TOL = dict(rtol=2e-5, atol=1e-6)
FLT_MIN = float(np.finfo(np.float32).tiny)
LOG_THRESHOLD = 1e-20
MODES = ("FULL", "VALID", "BATCH_SIZE", "NONE")


# -- input generators ----------------------------------------------------------------------
def labels_with_ignored(shape, n_classes, ignore, every=3):
    """Class labels with every ``every``-th location (and a random few more) set to ``ignore``."""
    def make(rs):
        lab = rs.randint(0, n_classes, shape).astype(np.float64)
        flat = lab.reshape(-1)
        flat[::every] = ignore
        return lab
    return make


def scored_labels(scores_shape, axis=1):
    """Generators (scores, labels): labels are the best class at even locations, the worst at odd ones.

    So any top_k below the number of classes gives both hits and misses.
    """
    held = {}

    def make_scores(rs):
        held["s"] = rs.standard_normal(scores_shape)
        return held["s"]

    def make_labels(rs):
        s = np.moveaxis(held["s"], axis, -1)
        best, worst = s.argmax(axis=-1), s.argmin(axis=-1)
        pick = (np.arange(best.size) % 2 == 0).reshape(best.shape)
        return np.where(pick, best, worst).astype(np.float64)
    return make_scores, make_labels


def away_from_both(shape, kinks=(-1.0, 1.0), margin=0.06, scale=1.5):
    """Gaussian values at least ``margin`` from each of ``kinks`` (the hinge's +-1)."""
    def make(rs):
        x = rs.standard_normal(shape) * scale
        for k in kinks:
            near = np.abs(x - k) < margin
            x[near] = k + np.where(x[near] >= k, 1.0, -1.0) * 2 * margin
        return x
    return make


def apart_pair(shape, gap=0.05):
    """Two generators (a, b) with |a - b| >= gap everywhere (b is made from a)."""
    held = {}

    def make_a(rs):
        held["a"] = rs.standard_normal(shape)
        return held["a"]

    def make_b(rs):
        offset = rs.uniform(gap, 1.0, shape) * rs.choice([-1.0, 1.0], shape)
        return held["a"] + offset
    return make_a, make_b


def siamese(num, channels, margin, legacy):
    """Generators (a, b, similar) with pair distances at 0.5x or 1.5x the margin's kink.

    Pairs cycle through (dissimilar, inside), (dissimilar, outside), (similar, 0.5),
    (similar, 1.5), so every branch of the loss is exercised.
    """
    kink = np.sqrt(margin) if legacy else margin      # where the dissimilar term switches off
    held = {}

    def make_a(rs):
        held["a"] = rs.standard_normal((num, channels))
        return held["a"]

    def make_b(rs):
        direction = rs.standard_normal((num, channels))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        radius = np.where(np.arange(num) % 2 == 0, 0.5, 1.5) * kink
        return held["a"] + direction * radius[:, None]

    def make_sim(rs):
        return ((np.arange(num) // 2) % 2).astype(np.float64)
    return make_a, make_b, make_sim


# -- numpy oracles ----------------------------------------------------------------------------
def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _split(x, axis):
    """x as (outer, C, inner) around ``axis``."""
    axis %= x.ndim
    outer = int(np.prod(x.shape[:axis]))
    return x.reshape(outer, x.shape[axis], -1)


def normalizer(mode, outer, inner, valid):
    n = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return max(1.0, float(n))


def softmax_loss_value(scores, lab, axis=1, ignore=None, mode="VALID"):
    p = _split(np_softmax(scores.astype(np.float64), axis), axis)
    outer, _, inner = p.shape
    lab = lab.reshape(outer, inner).astype(int)
    keep = np.ones_like(lab, bool) if ignore is None else lab != ignore
    o, i = np.nonzero(keep)
    loss = -np.log(np.maximum(p[o, lab[o, i], i], FLT_MIN)).sum()
    return loss / normalizer(mode, outer, inner, keep.sum())


def _check_softmax(axis):
    def check(bottoms, tops, layer):
        np.testing.assert_allclose(tops[0], np_softmax(bottoms[0].astype(np.float64), axis), **TOL)
        np.testing.assert_allclose(tops[0].sum(axis=axis), 1.0, rtol=1e-5)
    return check


def _check_softmax_loss(axis=1, ignore=None, mode="VALID"):
    def check(bottoms, tops, layer):
        assert tops[0].shape == ()
        np.testing.assert_allclose(tops[0], softmax_loss_value(bottoms[0], bottoms[1], axis, ignore, mode),
                                   **TOL)
    return check


def _check_sigmoid_ce(ignore=None, mode="BATCH_SIZE"):
    def check(bottoms, tops, layer):
        x, t = bottoms[0].astype(np.float64), bottoms[1].astype(np.float64)
        keep = np.ones(x.shape, bool) if ignore is None else t.astype(int) != ignore
        # -[t log s(x) + (1 - t) log(1 - s(x))] = log(1 + e^x) - t x
        per = np.logaddexp(0.0, x) - t * x
        outer = x.shape[0]
        n = normalizer(mode, outer, x.size // outer, keep.sum())
        np.testing.assert_allclose(tops[0], per[keep].sum() / n, **TOL)
    return check


def _check_euclidean(bottoms, tops, layer):
    a, b = (x.astype(np.float64).reshape(x.shape[0], -1) for x in bottoms)
    np.testing.assert_allclose(tops[0], ((a - b) ** 2).sum() / a.shape[0] / 2, **TOL)


def _check_l1(bottoms, tops, layer):
    a, b = (x.astype(np.float64).reshape(x.shape[0], -1) for x in bottoms)
    np.testing.assert_allclose(tops[0], np.abs(a - b).sum() / a.shape[0], **TOL)


def _check_hinge(power):
    def check(bottoms, tops, layer):
        x = bottoms[0].astype(np.float64).reshape(bottoms[0].shape[0], -1)
        d = np.ones_like(x)
        d[np.arange(x.shape[0]), bottoms[1].reshape(-1).astype(int)] = -1
        m = np.maximum(0.0, 1.0 + d * x)
        np.testing.assert_allclose(tops[0], (m ** power).sum() / x.shape[0], **TOL)
    return check


def _check_multinomial(bottoms, tops, layer):
    p = bottoms[0].astype(np.float64).reshape(bottoms[0].shape[0], -1)
    lab = bottoms[1].reshape(-1).astype(int)
    loss = -np.log(np.maximum(p[np.arange(p.shape[0]), lab], LOG_THRESHOLD)).sum() / p.shape[0]
    np.testing.assert_allclose(tops[0], loss, **TOL)


def infogain_value(scores, lab, H, axis=1, ignore=None, mode="VALID"):
    p = _split(np_softmax(scores.astype(np.float64), axis), axis)
    outer, C, inner = p.shape
    H = H.astype(np.float64).reshape(C, C)
    lab = lab.reshape(outer, inner).astype(int)
    loss, valid = 0.0, 0
    for o in range(outer):
        for i in range(inner):
            if ignore is not None and lab[o, i] == ignore:
                continue
            loss -= (H[lab[o, i]] * np.log(np.maximum(p[o, :, i], LOG_THRESHOLD))).sum()
            valid += 1
    return loss / normalizer(mode, outer, inner, valid)


def _check_infogain(axis=1, ignore=None, mode="VALID"):
    def check(bottoms, tops, layer):
        np.testing.assert_allclose(tops[0], infogain_value(bottoms[0], bottoms[1], bottoms[2], axis, ignore,
                                                           mode), **TOL)
    return check


def contrastive_value(a, b, sim, margin, legacy):
    a, b = a.astype(np.float64).reshape(a.shape[0], -1), b.astype(np.float64).reshape(b.shape[0], -1)
    d2 = ((a - b) ** 2).sum(axis=1)
    similar = sim.reshape(-1).astype(int) != 0
    if legacy:
        dissimilar = np.maximum(margin - d2, 0.0)
    else:
        dissimilar = np.maximum(margin - np.sqrt(d2), 0.0) ** 2
    return np.where(similar, d2, dissimilar).sum() / a.shape[0] / 2


def _check_contrastive(margin, legacy):
    def check(bottoms, tops, layer):
        np.testing.assert_allclose(tops[0], contrastive_value(*bottoms, margin, legacy), **TOL)
    return check


def accuracy_value(scores, lab, axis=1, top_k=1, ignore=None):
    """(accuracy, per-class accuracy), Caffe's rule: correct iff < top_k classes score >= the true one."""
    s = _split(scores.astype(np.float64), axis)
    outer, C, inner = s.shape
    lab = lab.reshape(outer, inner).astype(int)
    hits, seen = np.zeros(C), np.zeros(C)
    for o in range(outer):
        for i in range(inner):
            y = lab[o, i]
            if ignore is not None and y == ignore:
                continue
            seen[y] += 1
            hits[y] += (s[o, :, i] >= s[o, y, i]).sum() <= top_k
    total = hits.sum() / seen.sum() if seen.sum() else 0.0
    return total, np.divide(hits, seen, out=np.zeros(C), where=seen > 0)


def _check_accuracy(axis=1, top_k=1, ignore=None, expect_some_wrong=True):
    def check(bottoms, tops, layer):
        acc, per_class = accuracy_value(bottoms[0], bottoms[1], axis, top_k, ignore)
        assert tops[0].shape == ()
        np.testing.assert_allclose(tops[0], acc, rtol=1e-6)
        if expect_some_wrong:
            assert 0.0 < acc < 1.0, "the case should have both hits and misses"
        if len(tops) > 1:
            assert tops[1].shape == (bottoms[0].shape[axis],)
            np.testing.assert_allclose(tops[1], per_class, rtol=1e-6)
    return check


# -- case builders ----------------------------------------------------------------------------
def _swl(params, scores_shape, label_gen, axis=1, ignore=None, mode="VALID", **kw):
    return GradCase(f'type: "SoftmaxWithLoss" {params}', [gaussian(scores_shape, 2.0), label_gen],
                    check_bottom=[0], check_forward=_check_softmax_loss(axis, ignore, mode), **kw)


def _swl_norm(mode):
    return _swl(f'loss_param {{ ignore_label: 255 normalization: {mode} }}', (2, 3, 2, 3),
                labels_with_ignored((2, 1, 2, 3), 3, 255), ignore=255, mode=mode, id=f"norm-{mode}")


def _sce(params, shape, target_gen, ignore=None, mode="BATCH_SIZE", scale=1.0, **kw):
    return GradCase(f'type: "SigmoidCrossEntropyLoss" {params}', [gaussian(shape, scale), target_gen],
                    check_bottom=[0], check_forward=_check_sigmoid_ce(ignore, mode), **kw)


def _infogain(params, scores_shape, label_shape, H_gen, n, axis=1, ignore=None, mode="VALID",
              label_gen=None, **kw):
    label_gen = label_gen or labels(label_shape, n)
    return GradCase(f'type: "InfogainLoss" {params}', [gaussian(scores_shape, 2.0), label_gen, H_gen],
                    check_bottom=[0], check_forward=_check_infogain(axis, ignore, mode), **kw)


def _contrastive(margin, legacy, num=8, channels=3, **kw):
    gens = siamese(num, channels, margin, legacy)
    params = f'contrastive_loss_param {{ margin: {margin} legacy_version: {str(legacy).lower()} }}'
    return GradCase(f'type: "ContrastiveLoss" {params}', list(gens), check_bottom=[0, 1],
                    check_forward=_check_contrastive(margin, legacy), **kw)


def _accuracy(params, scores_shape, num_top=1, axis=1, top_k=1, ignore=None, **kw):
    return GradCase(f'type: "Accuracy" {params}', list(scored_labels(scores_shape, axis)), num_top=num_top,
                    no_gradient=True, check_forward=_check_accuracy(axis, top_k, ignore), **kw)


def _eye(n):
    return lambda rs: np.eye(n)


CASES = {
    "Softmax": [
        GradCase('type: "Softmax"', [gaussian((3, 5), 2.0)], check_forward=_check_softmax(1), id="2d"),
        GradCase('type: "Softmax"', [gaussian((2, 3, 2, 3), 2.0)], check_forward=_check_softmax(1),
                 id="4d-spatial"),
        GradCase('type: "Softmax" softmax_param { axis: -1 }', [gaussian((2, 3, 4), 2.0)],
                 check_forward=_check_softmax(-1), id="axis-last"),
        GradCase('type: "Softmax" softmax_param { axis: 0 }', [gaussian((4, 3))],
                 check_forward=_check_softmax(0), id="axis0"),
        GradCase('type: "Softmax"', [gaussian((2, 4), 40.0)], check_forward=_check_softmax(1),
                 step=1e-3, id="large-scores"),
    ],
    "SoftmaxWithLoss": [
        _swl("", (4, 5), labels((4,), 5), id="2d"),
        _swl("", (2, 3, 2, 3), labels((2, 1, 2, 3), 3), id="4d-spatial"),
        *[_swl_norm(m) for m in MODES],
        _swl("loss_param { ignore_label: 0 }", (5, 4), labels((5,), 4), ignore=0, id="ignore-class0"),
        _swl("loss_param { normalize: false }", (2, 3, 2, 2), labels((2, 2, 2), 3), mode="BATCH_SIZE",
             id="legacy-normalize-false"),
        _swl("loss_param { ignore_label: -1 normalize: true }", (2, 3, 2, 2),
             labels_with_ignored((2, 2, 2), 3, -1), ignore=-1, id="legacy-normalize-true"),
        _swl("softmax_param { axis: 2 }", (2, 3, 4), labels((2, 3), 4), axis=2, id="axis2"),
        _swl("softmax_param { axis: -1 }", (3, 2, 4), labels((3, 2), 4), axis=-1, id="axis-last"),
    ],
    "SigmoidCrossEntropyLoss": [
        _sce("", (4, 3), uniform((4, 3), 0.0, 1.0), id="soft-targets"),
        _sce("", (2, 3, 2, 2), labels((2, 3, 2, 2), 2), id="4d-binary"),
        _sce("", (3, 4), labels((3, 4), 2), scale=8.0, id="large-inputs"),
        _sce("loss_param { ignore_label: -1 normalization: VALID }", (3, 5),
             labels_with_ignored((3, 5), 2, -1), ignore=-1, mode="VALID", id="ignore-VALID"),
        _sce("loss_param { normalization: FULL }", (3, 4), labels((3, 4), 2), mode="FULL", id="FULL"),
        _sce("loss_param { normalization: NONE }", (3, 4), labels((3, 4), 2), mode="NONE", id="NONE"),
        _sce("loss_param { normalize: true }", (3, 4), labels((3, 4), 2), mode="VALID",
             id="legacy-normalize-true"),
    ],
    "EuclideanLoss": [
        GradCase('type: "EuclideanLoss"', [gaussian((4, 3)), gaussian((4, 3))],
                 check_forward=_check_euclidean, id="2d"),
        GradCase('type: "EuclideanLoss"', [gaussian((2, 3, 2, 2)), gaussian((2, 12))],
                 check_forward=_check_euclidean, id="4d-vs-2d"),
    ],
    "L1Loss": [
        GradCase('type: "L1Loss"', list(apart_pair((4, 3))), check_forward=_check_l1, id="2d"),
        GradCase('type: "L1Loss"', list(apart_pair((2, 3, 2, 2))), check_forward=_check_l1, id="4d"),
    ],
    "HingeLoss": [
        GradCase('type: "HingeLoss"', [away_from_both((4, 5)), labels((4,), 5)], check_bottom=[0],
                 check_forward=_check_hinge(1), id="L1"),
        GradCase('type: "HingeLoss" hinge_loss_param { norm: L2 }', [away_from_both((4, 5)), labels((4,), 5)],
                 check_bottom=[0], check_forward=_check_hinge(2), id="L2"),
        GradCase('type: "HingeLoss" hinge_loss_param { norm: L1 }',
                 [away_from_both((3, 4, 1, 1)), labels((3, 1, 1, 1), 4)], check_bottom=[0],
                 check_forward=_check_hinge(1), id="L1-4d"),
    ],
    "MultinomialLogisticLoss": [
        GradCase('type: "MultinomialLogisticLoss"', [uniform((4, 5), 0.1, 1.0), labels((4,), 5)],
                 check_bottom=[0], check_forward=_check_multinomial, step=1e-3, id="2d"),
        GradCase('type: "MultinomialLogisticLoss"', [uniform((3, 4, 1, 1), 0.2, 1.0), labels((3, 1, 1, 1), 4)],
                 check_bottom=[0], check_forward=_check_multinomial, step=1e-3, id="4d"),
    ],
    "InfogainLoss": [
        _infogain("", (4, 5), (4,), _eye(5), 5, id="identity"),
        _infogain("", (4, 5), (4,), uniform((5, 5), 0.0, 1.0), 5, id="random-H"),
        _infogain("", (2, 3, 2, 2), (2, 1, 2, 2), uniform((3, 3), 0.0, 1.0), 3, id="4d-spatial"),
        _infogain("infogain_loss_param { axis: -1 }", (2, 3, 4), (2, 3), uniform((4, 4), 0.0, 1.0), 4, axis=-1,
                  id="axis-last"),
        _infogain("loss_param { ignore_label: 7 normalization: BATCH_SIZE }", (6, 3), (6,),
                  uniform((3, 3), 0.0, 1.0), 3, ignore=7, mode="BATCH_SIZE",
                  label_gen=labels_with_ignored((6,), 3, 7), id="ignore-BATCH_SIZE"),
        _infogain("loss_param { normalization: NONE }", (3, 4), (3,), uniform((4, 4), 0.0, 1.0), 4, mode="NONE",
                  id="NONE"),
    ],
    "ContrastiveLoss": [
        _contrastive(1.0, False, id="default"),
        _contrastive(2.0, False, channels=4, id="margin2"),
        _contrastive(1.0, True, id="legacy"),
        _contrastive(3.0, True, num=4, id="legacy-margin3"),
    ],
    "Accuracy": [
        _accuracy("", (8, 4), id="top1"),
        _accuracy("accuracy_param { top_k: 2 }", (8, 5), top_k=2, id="top2"),
        _accuracy("accuracy_param { top_k: 4 }", (8, 5), top_k=4, id="top4"),
        _accuracy("accuracy_param { ignore_label: 3 }", (9, 4), ignore=3, id="ignore"),
        _accuracy("", (10, 3), num_top=2, id="per-class"),
        _accuracy("accuracy_param { top_k: 2 ignore_label: 0 }", (2, 4, 3, 3), num_top=2, top_k=2, ignore=0,
                  id="spatial-per-class"),
        _accuracy("accuracy_param { axis: 2 }", (2, 3, 5), axis=2, id="axis2"),
        _accuracy("accuracy_param { axis: -1 }", (3, 4), num_top=2, axis=-1, id="axis-last"),
    ],
}
