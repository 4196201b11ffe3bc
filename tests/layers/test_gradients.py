"""Every registered layer type, gradient-checked by finite differences.

The cases live in ``cases_<family>.py`` beside this file (see gradcase.py).
"""
import importlib
import pkgutil

import numpy as np
import pytest

import numcaffe.layers  # noqa: F401  (registers every layer type)
from numcaffe.layers.base import LAYER_REGISTRY
from numcaffe.layers.gradcheck import check_layer, format_reports

import tests.layers as _pkg


def _collect():
    cases = {}
    for info in pkgutil.iter_modules(_pkg.__path__):
        if info.name.startswith("cases_"):
            mod = importlib.import_module(f"tests.layers.{info.name}")
            for type_name, items in mod.CASES.items():
                cases.setdefault(type_name, []).extend(items)
    return cases


CASES = _collect()
PARAMS = [pytest.param(t, c, id=f"{t}-{c.id or i}") for t, items in sorted(CASES.items())
          for i, c in enumerate(items)]


def test_every_registered_type_has_a_gradient_case():
    missing = sorted(set(LAYER_REGISTRY) - set(CASES))
    assert not missing, f"layer types without a gradient case: {missing}"


def test_cases_name_registered_types():
    unknown = sorted(set(CASES) - set(LAYER_REGISTRY))
    assert not unknown, f"gradient cases for unregistered types: {unknown}"


@pytest.mark.parametrize("type_name,case", PARAMS)
def test_layer_gradient(type_name, case):
    layer, bottom, top = case.build()
    assert layer.type == type_name
    if case.no_gradient:
        layer.SetUp(bottom, top)
        layer.Forward(bottom, top)
        before = [b.flat_diff.copy() for b in bottom]
        layer.Backward(top, [False] * len(bottom), bottom)
        for b, d in zip(bottom, before):
            np.testing.assert_array_equal(b.flat_diff, d)
    else:
        reports = check_layer(layer, bottom, top, check_bottom=case.check_bottom, step=case.step,
                              threshold=case.threshold, kink=case.kink, kink_range=case.kink_range,
                              max_checks=case.max_checks, seed=case.seed)
        assert sum(r.checked for r in reports) > 0, "nothing was checked"
        bad = [r for r in reports if r.failures]
        assert not bad, format_reports(reports)
        _check_accumulation(layer, bottom, top, case)
    if case.check_forward is not None:
        layer.Forward(bottom, top)
        case.check_forward([b.data.copy() for b in bottom], [t.data.copy() for t in top], layer)


def _check_accumulation(layer, bottom, top, case):
    """Parameter diffs accumulate over Backward calls; bottom diffs are overwritten."""
    propagate = [case.check_bottom is None or i in case.check_bottom for i in range(len(bottom))]
    state = layer.get_state()
    layer.set_state(state)
    layer.Forward(bottom, top)
    rs = np.random.RandomState(0)
    for t in top:
        t.flat_diff[...] = rs.uniform(-1, 1, t.count)
    for p in layer.blobs:
        p.flat_diff[...] = 0
    layer.Backward(top, propagate, bottom)
    first_b = [b.flat_diff.copy() for b in bottom]
    first_p = [p.flat_diff.copy() for p in layer.blobs]
    for b in bottom:
        b.flat_diff[...] = 7.0
    layer.Backward(top, propagate, bottom)
    for i, (b, d) in enumerate(zip(bottom, first_b)):
        # A bottom whose diff is a top's diff (Flatten, Reshape share it, as Caffe) has nothing to overwrite.
        aliased = any(np.shares_memory(b.flat_diff, t.flat_diff) for t in top)
        if propagate[i] and not aliased:
            np.testing.assert_allclose(b.flat_diff, d, rtol=1e-5, atol=1e-6,
                                       err_msg=f"bottom[{i}] diff must be overwritten, not accumulated")
    for j, (p, d) in enumerate(zip(layer.blobs, first_p)):
        if layer.param_propagate_down[j]:
            np.testing.assert_allclose(p.flat_diff, 2 * d, rtol=1e-4, atol=1e-5,
                                       err_msg=f"param[{j}] diff must accumulate")
