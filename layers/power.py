"""Power, Exp and Log: neuron layers of an affine map ``shift + scale * x`` (see layers/neuron.py)::

    Power      y = (shift + scale * x)^power           dx = dy * power * scale * (shift + scale * x)^(power - 1)
    Exp        y = base^(shift + scale * x)            dx = dy * y * ln(base) * scale
    Log        y = log_base(shift + scale * x)         dx = dy * scale / ((shift + scale * x) * ln(base))

For Exp and Log, ``base: -1`` (the default) means e.  The kernels compute in
double precision and store float32.
"""
import math

import numpy as np
from numba import njit

from numcaffe.layers.base import register
from numcaffe.layers.neuron import ElementwiseLayer
from numcaffe.net.errors import ConfigError


# -- kernels -------------------------------------------------------------------------
@njit(cache=True)
def power_forward(x, y, power, scale, shift):
    """y = (shift + scale * x)^power."""
    for i in range(x.size):
        y[i] = (shift + scale * x[i]) ** power


@njit(cache=True)
def power_backward(x, dy, dx, power, scale, shift):
    """dx = dy * power * scale * (shift + scale * x)^(power - 1)."""
    for i in range(x.size):
        dx[i] = dy[i] * power * scale * (shift + scale * x[i]) ** (power - 1.0)


@njit(cache=True)
def exp_forward(x, y, inner_scale, outer_scale):
    """y = outer_scale * exp(inner_scale * x)   (= base^(shift + scale * x))."""
    for i in range(x.size):
        y[i] = outer_scale * math.exp(inner_scale * x[i])


@njit(cache=True)
def exp_backward(x, dy, dx, inner_scale, outer_scale):
    """dx = dy * y * inner_scale."""
    for i in range(x.size):
        dx[i] = dy[i] * outer_scale * math.exp(inner_scale * x[i]) * inner_scale


@njit(cache=True)
def log_forward(x, y, scale, shift, base_scale):
    """y = base_scale * ln(shift + scale * x)   (base_scale = 1 / ln(base))."""
    for i in range(x.size):
        y[i] = base_scale * math.log(shift + scale * x[i])


@njit(cache=True)
def log_backward(x, dy, dx, scale, shift, base_scale):
    """dx = dy * base_scale * scale / (shift + scale * x)."""
    for i in range(x.size):
        dx[i] = dy[i] * base_scale * scale / (shift + scale * x[i])


# -- layers ---------------------------------------------------------------------------
@register("Power")
class PowerLayer(ElementwiseLayer):
    """y = (shift + scale * x)^power;  dx = dy * power * scale * (shift + scale * x)^(power - 1).

    As in Caffe, when power * scale is 0 the output is the constant
    (power == 0 ? 1 : shift^power) and the gradient is 0.
    """

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale
        self.keeps_input = self.diff_scale != 0.0 and self.power != 1.0
        with np.errstate(all="ignore"):  # e.g. a negative shift to a fractional power: NaN, as in C
            self.constant = 1.0 if self.power == 0.0 else float(np.float64(self.shift) ** self.power)

    def forward(self, x, y):
        if self.diff_scale == 0.0:
            y[...] = self.constant
        else:
            power_forward(x, y, self.power, self.scale, self.shift)

    def backward(self, x, dy, dx):
        if self.diff_scale == 0.0:
            dx[...] = 0.0
        else:
            power_backward(x, dy, dx, self.power, self.scale, self.shift)


def _check_base(layer, base, kind):
    if base != -1.0 and base <= 0.0:
        raise ConfigError(f"{layer.describe()}: {kind}_param.base must be -1 (for e) or positive; got {base:g}")


@register("Exp")
class ExpLayer(ElementwiseLayer):
    """y = base^(shift + scale * x) (base -1: e);  dx = dy * y * ln(base) * scale."""

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        _check_base(self, base, "exp")
        log_base = 1.0 if base == -1.0 else math.log(base)
        self.inner_scale = log_base * scale
        if shift == 0.0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1.0 else base ** shift

    def forward(self, x, y):
        exp_forward(x, y, self.inner_scale, self.outer_scale)

    def backward(self, x, dy, dx):
        exp_backward(x, dy, dx, self.inner_scale, self.outer_scale)


@register("Log")
class LogLayer(ElementwiseLayer):
    """y = log_base(shift + scale * x) (base -1: e);  dx = dy * scale / ((shift + scale * x) * ln(base))."""

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.log_param
        base = float(p.base)
        _check_base(self, base, "log")
        if base == 1.0:
            raise ConfigError(f"{self.describe()}: log_param.base 1 has no logarithm")
        self.scale, self.shift = float(p.scale), float(p.shift)
        self.base_scale = 1.0 if base == -1.0 else 1.0 / math.log(base)

    def forward(self, x, y):
        log_forward(x, y, self.scale, self.shift, self.base_scale)

    def backward(self, x, dy, dx):
        log_backward(x, dy, dx, self.scale, self.shift, self.base_scale)
