"""Smooth activations, neuron layers (see layers/neuron.py for what all neuron layers share)::

    ELU        y = x > 0 ? x : alpha * (exp(x) - 1)    dx = dy * (x > 0 ? 1 : alpha * exp(x))
    SELU       y = lambda * (x > 0 ? x : alpha * (exp(x) - 1))
                                                       dx = dy * lambda * (x > 0 ? 1 : alpha * exp(x))
    Sigmoid    y = 1 / (1 + exp(-x))                   dx = dy * y * (1 - y)
    TanH       y = tanh(x)                             dx = dy * (1 - y^2)
    BNLL       y = log(1 + exp(x))                     dx = dy * e / (1 + e),  e = exp(min(x, 50))
    Swish      y = x * sigmoid(beta * x)               dx = dy * (beta * y + sigmoid(beta * x) * (1 - beta * y))

Caffe computes these gradients from ``y``; here backward recomputes ``y`` from
the input ``x``, so an in-place layer after them cannot corrupt the gradient.
SELU is a numcaffe extension (``selu_param``, defaults: the self-normalising
constants).  The kernels compute in double precision and store float32.
"""
import math

from numba import njit

from numcaffe.layers.base import register
from numcaffe.layers.neuron import ElementwiseLayer

#: Above this input BNLL's backward uses exp(50) (Caffe's kBNLL_THRESHOLD).
BNLL_THRESHOLD = 50.0


# -- kernels -------------------------------------------------------------------------
@njit(cache=True)
def elu_forward(x, y, alpha):
    """y = x > 0 ? x : alpha * (exp(x) - 1)."""
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0.0 else alpha * math.expm1(v)


@njit(cache=True)
def elu_backward(x, dy, dx, alpha):
    """dx = dy * (x > 0 ? 1 : alpha * exp(x))   (alpha * exp(x) = y + alpha)."""
    for i in range(x.size):
        v = x[i]
        dx[i] = dy[i] if v > 0.0 else dy[i] * alpha * math.exp(v)


@njit(cache=True)
def selu_forward(x, y, alpha, lam):
    """y = lambda * (x > 0 ? x : alpha * (exp(x) - 1))."""
    for i in range(x.size):
        v = x[i]
        y[i] = lam * v if v > 0.0 else lam * alpha * math.expm1(v)


@njit(cache=True)
def selu_backward(x, dy, dx, alpha, lam):
    """dx = dy * lambda * (x > 0 ? 1 : alpha * exp(x))."""
    for i in range(x.size):
        v = x[i]
        dx[i] = dy[i] * lam if v > 0.0 else dy[i] * lam * alpha * math.exp(v)


@njit(cache=True)
def sigmoid(v):
    """1 / (1 + exp(-v)).  (Caffe writes 0.5 * tanh(0.5 * v) + 0.5, the same function; exp is
    several times faster than tanh here, and its overflow to inf for v < -709 still gives 0.)"""
    return 1.0 / (1.0 + math.exp(-v))


@njit(cache=True)
def sigmoid_forward(x, y):
    """y = sigmoid(x)."""
    for i in range(x.size):
        y[i] = sigmoid(x[i])


@njit(cache=True)
def sigmoid_backward(x, dy, dx):
    """dx = dy * y * (1 - y),  y = sigmoid(x)."""
    for i in range(x.size):
        s = sigmoid(x[i])
        dx[i] = dy[i] * s * (1.0 - s)


@njit(cache=True)
def tanh_forward(x, y):
    """y = tanh(x)."""
    for i in range(x.size):
        y[i] = math.tanh(x[i])


@njit(cache=True)
def tanh_backward(x, dy, dx):
    """dx = dy * (1 - y^2),  y = tanh(x)."""
    for i in range(x.size):
        t = math.tanh(x[i])
        dx[i] = dy[i] * (1.0 - t * t)


@njit(cache=True)
def bnll_forward(x, y):
    """y = log(1 + exp(x)), as x + log(1 + exp(-x)) for x > 0 so exp never overflows."""
    for i in range(x.size):
        v = x[i]
        y[i] = v + math.log1p(math.exp(-v)) if v > 0.0 else math.log1p(math.exp(v))


@njit(cache=True)
def bnll_backward(x, dy, dx, threshold):
    """dx = dy * e / (1 + e),  e = exp(min(x, threshold))."""
    for i in range(x.size):
        e = math.exp(min(x[i], threshold))
        dx[i] = dy[i] * e / (e + 1.0)


@njit(cache=True)
def swish_forward(x, y, beta):
    """y = x * sigmoid(beta * x)."""
    for i in range(x.size):
        y[i] = x[i] * sigmoid(beta * x[i])


@njit(cache=True)
def swish_backward(x, dy, dx, beta):
    """dx = dy * (beta * y + s * (1 - beta * y)),  s = sigmoid(beta * x), y = x * s."""
    for i in range(x.size):
        s = sigmoid(beta * x[i])
        by = beta * x[i] * s
        dx[i] = dy[i] * (by + s * (1.0 - by))


# -- layers ---------------------------------------------------------------------------
@register("ELU")
class ELULayer(ElementwiseLayer):
    """y = x > 0 ? x : alpha * (exp(x) - 1);  dx = dy * (x > 0 ? 1 : alpha * exp(x))."""

    def LayerSetUp(self, bottom, top):
        self.alpha = float(self.layer_param.elu_param.alpha)

    def forward(self, x, y):
        elu_forward(x, y, self.alpha)

    def backward(self, x, dy, dx):
        elu_backward(x, dy, dx, self.alpha)


@register("SELU")
class SELULayer(ElementwiseLayer):
    """numcaffe's SELU: y = lambda * (x > 0 ? x : alpha * (exp(x) - 1))."""

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.selu_param
        self.alpha = float(p.alpha)
        self.lam = float(getattr(p, "lambda"))

    def forward(self, x, y):
        selu_forward(x, y, self.alpha, self.lam)

    def backward(self, x, dy, dx):
        selu_backward(x, dy, dx, self.alpha, self.lam)


@register("Sigmoid")
class SigmoidLayer(ElementwiseLayer):
    """y = 1 / (1 + exp(-x));  dx = dy * y * (1 - y)."""

    def forward(self, x, y):
        sigmoid_forward(x, y)

    def backward(self, x, dy, dx):
        sigmoid_backward(x, dy, dx)


@register("TanH")
class TanHLayer(ElementwiseLayer):
    """y = tanh(x);  dx = dy * (1 - y^2)."""

    def forward(self, x, y):
        tanh_forward(x, y)

    def backward(self, x, dy, dx):
        tanh_backward(x, dy, dx)


@register("BNLL")
class BNLLLayer(ElementwiseLayer):
    """Binomial normal log likelihood: y = log(1 + exp(x));  dx = dy * sigmoid(x)."""

    def forward(self, x, y):
        bnll_forward(x, y)

    def backward(self, x, dy, dx):
        bnll_backward(x, dy, dx, BNLL_THRESHOLD)


@register("Swish")
class SwishLayer(ElementwiseLayer):
    """y = x * sigmoid(beta * x);  dx = dy * (beta * y + sigmoid(beta * x) * (1 - beta * y))."""

    def LayerSetUp(self, bottom, top):
        self.beta = float(self.layer_param.swish_param.beta)

    def forward(self, x, y):
        swish_forward(x, y, self.beta)

    def backward(self, x, dy, dx):
        swish_backward(x, dy, dx, self.beta)
