"""Fillers follow Caffe's formulas and are reproducible from one seed."""
import math

import numpy as np
import pytest

from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.filler import fill
from numcaffe.net.proto import caffe_pb2

F = caffe_pb2.FillerParameter


def _filled(shape, **kw):
    b = Blob(shape)
    fill(b, F(**kw), np.random.default_rng(0))
    return b.data.astype(np.float64)


def test_constant_uniform_gaussian():
    assert np.all(_filled((3, 4), type="constant", value=2.5) == 2.5)
    u = _filled((200, 50), type="uniform", min=-2, max=3)
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean() - 0.5) < 0.05
    g = _filled((200, 50), type="gaussian", mean=1, std=2)
    assert abs(g.mean() - 1) < 0.1 and abs(g.std() - 2) < 0.1


def test_sparse_gaussian_keeps_sparse_over_num_outputs():
    g = _filled((100, 400), type="gaussian", std=1, sparse=10)
    assert abs((g != 0).mean() - 0.1) < 0.01


@pytest.mark.parametrize("kind", ["constant", "uniform", "xavier", "msra", "positive_unitball", "bilinear"])
def test_sparse_is_refused_by_every_filler_but_gaussian(kind):
    # Caffe's filler.hpp: each of these CHECKs sparse == -1 ("Sparsity not supported by this Filler").
    with pytest.raises(ConfigError, match="sparse"):
        _filled((2, 1, 4, 4), type=kind, sparse=3)
    _filled((2, 1, 4, 4), type=kind, sparse=-1)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 64 * 5 * 5), ("AVERAGE", (75 + 1600) / 2)])
def test_xavier_and_msra_scales(norm, n):
    vn = F.VarianceNorm.Value(norm)
    x = _filled((64, 3, 5, 5), type="xavier", variance_norm=vn)
    assert np.abs(x).max() <= math.sqrt(3 / n) + 1e-6
    assert abs(x.std() - math.sqrt(1 / n)) < 0.05 * math.sqrt(1 / n)
    m = _filled((64, 3, 5, 5), type="msra", variance_norm=vn)
    assert abs(m.std() - math.sqrt(2 / n)) < 0.05 * math.sqrt(2 / n)


def test_positive_unitball_rows_sum_to_one():
    p = _filled((5, 2, 3), type="positive_unitball")
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.reshape(5, -1).sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7])
def test_bilinear_matches_caffe_formula(k):
    # Caffe's filler.hpp since BVLC/caffe#5713: f = ceil(k / 2), c = (k - 1) / (2 f).
    w = _filled((2, 1, k, k), type="bilinear")
    f = math.ceil(k / 2)
    c = (k - 1) / (2 * f)
    for i in range(k * k):
        x, y = i % k, (i // k) % k
        assert w[1, 0, y, x] == pytest.approx((1 - abs(x / f - c)) * (1 - abs(y / f - c)))
    # centred for odd sizes too (the old formula shifted k = 3, 6, 7, ... off centre)
    np.testing.assert_allclose(w[0, 0], w[0, 0, ::-1, ::-1], rtol=1e-6)


def test_same_seed_same_values_and_unknown_type():
    a, b = Blob((4, 4)), Blob((4, 4))
    fill(a, F(type="gaussian"), np.random.default_rng(7))
    fill(b, F(type="gaussian"), np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b.data)
    with pytest.raises(ConfigError, match="unknown filler type 'gausian'"):
        fill(a, F(type="gausian"), np.random.default_rng(0))
