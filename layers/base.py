"""The Layer contract, Caffe's, and the registry of layer types.

A layer is built from its ``LayerParameter`` and then driven by the net:

* ``SetUp(bottom, top)`` once: checks the blob counts, calls ``LayerSetUp``
  (read parameters, create the learnable ``blobs``), ``Reshape`` and sets the
  loss weights.
* ``Forward(bottom, top)`` every pass: ``Reshape`` then ``Forward_cpu``; returns
  the weighted loss the layer contributes.
* ``Backward(top, propagate_down, bottom)``: ``Backward_cpu``.

As in Caffe, ``Backward_cpu`` *overwrites* bottom diffs and *adds* to parameter
diffs (the solver clears them once per iteration, which is what makes
``iter_size`` and shared parameters work).

Subclasses declare their blob counts as class attributes (``exact_num_bottom``,
``min_num_top``, ...) and register under their Caffe type name::

    @register("Sigmoid")
    class SigmoidLayer(NeuronLayer): ...
"""
import difflib

import numpy as np

from numcaffe.net.blob import Blob, proto_array, proto_shape
from numcaffe.net.errors import ConfigError, ModelFileError, ShapeError

#: type name -> Layer class.  A plain dict, filled by :func:`register`.
LAYER_REGISTRY = {}


def register(type_name):
    """Class decorator: register a Layer class under its Caffe type name."""

    def deco(cls):
        if type_name in LAYER_REGISTRY and LAYER_REGISTRY[type_name] is not cls:
            raise ValueError(f"layer type {type_name!r} is registered twice "
                             f"({LAYER_REGISTRY[type_name].__module__} and {cls.__module__})")
        LAYER_REGISTRY[type_name] = cls
        cls.type_name = type_name
        return cls

    return deco


def closest_types(name, n=3):
    return difflib.get_close_matches(name, sorted(LAYER_REGISTRY), n=n, cutoff=0.4)


def layer_class(type_name, where=""):
    """The class registered for ``type_name``; a ConfigError listing near names if none."""
    try:
        return LAYER_REGISTRY[type_name]
    except KeyError:
        near = closest_types(type_name)
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"{where}unknown layer type {type_name!r}{hint}") from None


def create_layer(param):
    """Instantiate the registered class for ``param.type``."""
    cls = layer_class(param.type, f"layer {param.name!r}: " if param.name else "")
    return cls(param)


class Layer:
    """Base class of all layers (Caffe's ``Layer<float>``)."""

    type_name = None
    exact_num_bottom = None
    min_num_bottom = None
    max_num_bottom = None
    exact_num_top = None
    min_num_top = None
    max_num_top = None
    equal_num_bottom_top = False
    #: Loss layers set this to 1: their first top gets loss weight 1 by default.
    default_loss_weight = 0.0
    #: Whether ``force_backward`` may request a gradient for the given bottom.
    force_backward_bottoms = True
    #: False when the net will never run this layer's backward (net/net.py sets it from its
    #: backward analysis): forward may then skip what it keeps for backward.
    backward_wanted = True

    def __init__(self, param):
        self.layer_param = param
        self.phase = param.phase
        self.blobs = []
        self.param_propagate_down = []
        self.loss_weights = []
        self.rng = None  # a numpy Generator; the net sets one per layer, see `random`
        self.base_dir = None  # directory of the config file, for relative paths
        if len(param.blobs):
            for j, bp in enumerate(param.blobs):
                b = Blob(proto_shape(bp))
                try:
                    b.data[...] = proto_array(bp)
                except ShapeError as e:
                    raise ModelFileError(f"layer {param.name!r} ({param.type}) parameter {j}: {e}") from None
                self.blobs.append(b)

    # -- identity ------------------------------------------------------------
    @property
    def name(self):
        return self.layer_param.name

    @property
    def type(self):
        return self.type_name

    @property
    def random(self):
        """This layer's numpy Generator (fillers, dropout masks, shuffling)."""
        if self.rng is None:
            from numcaffe.net.random import new_generator
            self.rng = new_generator()
        return self.rng

    def describe(self):
        return f"layer {self.name!r} ({self.type_name})"

    # -- Caffe's contract --------------------------------------------------------
    def SetUp(self, bottom, top):
        self.CheckBlobCounts(bottom, top)
        self.LayerSetUp(bottom, top)
        self.Reshape(bottom, top)
        self.SetLossWeights(top)
        if len(self.param_propagate_down) != len(self.blobs):
            self.param_propagate_down = [True] * len(self.blobs)

    def LayerSetUp(self, bottom, top):
        """Read the parameters and create learnable blobs (once)."""

    def Reshape(self, bottom, top):
        raise NotImplementedError

    def Forward_cpu(self, bottom, top):
        raise NotImplementedError

    def Backward_cpu(self, top, propagate_down, bottom):
        raise NotImplementedError

    def Forward(self, bottom, top):
        """Reshape, forward, and return this layer's weighted loss."""
        self.Reshape(bottom, top)
        self.Forward_cpu(bottom, top)
        loss = 0.0
        for t, w in zip(top, self.loss_weights):
            if w:
                # As in Caffe the top's diff holds the weight, which backward starts from.  It is
                # written on every pass, not only at setup, so a top that grew (a larger batch
                # reshaped in) has the weight in every element, where Caffe would leave zeros.
                d = t.flat_diff
                d[...] = w
                loss += w * float(np.add.reduce(t.flat_data, dtype=np.float64))
        return loss

    def Backward(self, top, propagate_down, bottom):
        self.Backward_cpu(top, propagate_down, bottom)

    # -- loss weights -------------------------------------------------------------
    def loss(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def SetLossWeights(self, top):
        lw = list(self.layer_param.loss_weight)
        if lw and len(lw) != len(top):
            raise ConfigError(f"{self.describe()}: loss_weight must be given once per top "
                              f"({len(top)} tops, {len(lw)} weights)")
        if not lw:
            lw = [self.default_loss_weight if i == 0 else 0.0 for i in range(len(top))]
        self.loss_weights = [float(w) for w in lw]
        for t, w in zip(top, self.loss_weights):
            if w:
                t.diff[...] = w

    # -- checks -------------------------------------------------------------------
    def CheckBlobCounts(self, bottom, top):
        def check(kind, n, exact, lo, hi):
            if exact is not None and n != exact:
                raise ConfigError(f"{self.describe()} takes {exact} {kind} blob(s), got {n}")
            if lo is not None and n < lo:
                raise ConfigError(f"{self.describe()} takes at least {lo} {kind} blob(s), got {n}")
            if hi is not None and n > hi:
                raise ConfigError(f"{self.describe()} takes at most {hi} {kind} blob(s), got {n}")

        check("bottom", len(bottom), self.exact_num_bottom, self.min_num_bottom, self.max_num_bottom)
        check("top", len(top), self.exact_num_top, self.min_num_top, self.max_num_top)
        if self.equal_num_bottom_top and len(bottom) != len(top):
            raise ConfigError(f"{self.describe()} needs as many tops as bottoms "
                              f"({len(bottom)} bottoms, {len(top)} tops)")

    def workspace_count(self):
        """Floats of the thread's shared scratch arrays (layers/workspace.py) this layer's next pass will
        ask for, at its current shapes; the net adds the biggest to its memory check."""
        return 0

    def shape_error(self, message):
        return ShapeError(f"{self.describe()}: {message}")

    def allow_force_backward(self, bottom_index):
        return self.force_backward_bottoms

    # -- resumable state ------------------------------------------------------------
    def get_state(self):
        """JSON-serialisable state beyond the learnable blobs (random state, cursors)."""
        if self.rng is not None:
            return {"rng": self.rng.bit_generator.state}
        return {}

    def set_state(self, state):
        if self.rng is not None and "rng" in state:
            self.rng.bit_generator.state = state["rng"]


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; may run in place."""

    exact_num_bottom = 1
    exact_num_top = 1

    def Reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)


class LossLayer(Layer):
    """Predictions and targets in, a scalar loss out (weight 1 by default)."""

    exact_num_bottom = 2
    exact_num_top = 1
    default_loss_weight = 1.0

    def LayerSetUp(self, bottom, top):
        pass

    def Reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.shape_error(f"the two bottoms must have the same num (first axis); "
                                   f"got {bottom[0].shape} and {bottom[1].shape}")
        top[0].reshape(())

    def allow_force_backward(self, bottom_index):
        # The label input (bottom 1) of a loss never takes a forced gradient.
        return bottom_index != 1
