"""The gradient-case table format shared by every ``cases_*.py`` module.

Each ``tests/layers/cases_<family>.py`` defines ``CASES``: a dict mapping a
registered layer type to a list of :class:`GradCase`.  ``test_gradients.py``
collects them all, runs the finite-difference check on each, and fails when a
registered type has no case.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from google.protobuf import text_format

from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.proto import caffe_pb2


def blob(array):
    """A Blob holding ``array`` (as float32)."""
    array = np.asarray(array, dtype=np.float32)
    b = Blob(array.shape)
    b.data[...] = array
    return b


def gaussian(shape, scale=1.0):
    return lambda rs: rs.standard_normal(shape) * scale


def uniform(shape, lo=-1.0, hi=1.0):
    return lambda rs: rs.uniform(lo, hi, shape)


def labels(shape, n_classes):
    return lambda rs: rs.randint(0, n_classes, shape).astype(np.float64)


def distinct(shape, spread=1.0, gap=0.05):
    """Values at least ``gap`` apart (so max/argmax-style kinks are never straddled)."""
    def make(rs):
        n = int(np.prod(shape))
        vals = (np.arange(n) - n / 2.0) * gap
        return rs.permutation(vals).reshape(shape) * spread
    return make


def away_from(shape, kink=0.0, margin=0.05, scale=1.0):
    """Gaussian values that keep ``margin`` away from ``kink``."""
    def make(rs):
        x = rs.standard_normal(shape) * scale
        return np.where(np.abs(x - kink) < margin, kink + np.sign(x - kink + 1e-12) * margin * 2, x)
    return make


@dataclass
class GradCase:
    """One parameterization of one layer type to gradient-check.

    layer: the LayerParameter in prototxt syntax (type included).
    bottoms: one generator per bottom, ``fn(RandomState) -> array`` (see helpers above).
    num_top: number of top blobs.
    check_bottom: bottom indices to check (default: all).
    no_gradient: the layer has no gradient (data, metrics); only forward/backward run.
    check_forward: optional ``fn(bottom_arrays, top_arrays, layer)`` asserting forward values.
    """

    layer: str
    bottoms: Sequence[Callable] = ()
    num_top: int = 1
    check_bottom: Optional[Sequence[int]] = None
    step: float = 1e-2
    threshold: float = 1e-2
    kink: Optional[float] = None
    kink_range: float = -1.0
    max_checks: int = 100
    phase: int = caffe_pb2.TRAIN
    no_gradient: bool = False
    check_forward: Optional[Callable] = None
    id: str = ""
    seed: int = 1701
    extra: dict = field(default_factory=dict)

    def make_param(self, name="layer"):
        param = caffe_pb2.LayerParameter()
        text_format.Parse(self.layer, param)
        if not param.name:
            param.name = name
        if not param.HasField("phase"):
            param.phase = self.phase
        return param

    def build(self):
        """(layer, bottom blobs, top blobs), bottoms filled from the generators."""
        rs = np.random.RandomState(self.seed)
        bottom = [blob(gen(rs)) for gen in self.bottoms]
        top = [Blob() for _ in range(self.num_top)]
        layer = create_layer(self.make_param())
        from numcaffe.net.random import set_random_seed
        set_random_seed(self.seed)
        return layer, bottom, top
