"""Adaptive update rules: AdaGrad, RMSProp, AdaDelta, Adam (Caffe's formulas and settings).

With ``g`` the (clipped, normalised, regularised) gradient, ``a`` the local
rate (``lr * lr_mult``) and ``eps`` the solver's ``delta``:

    AdaGrad:  H <- H + g^2;                              step = a g / (sqrt(H) + eps)
    RMSProp:  H <- d H + (1 - d) g^2   (d = rms_decay);   step = a g / (sqrt(H) + eps)
    AdaDelta: H <- m H + (1 - m) g^2   (m = momentum);
              u = g sqrt((U + eps) / (H + eps));
              U <- m U + (1 - m) u^2;                     step = a u
    Adam:     M <- b1 M + (1 - b1) g;   V <- b2 V + (1 - b2) g^2   (b1 = momentum, b2 = momentum2);
              step = a sqrt(1 - b2^t) / (1 - b1^t) * M / (sqrt(V) + eps),   t = iter + 1

AdaDelta and Adam keep two history arrays per parameter; as in Caffe the
second set follows the first in the solver state (history[N + i]).
"""
import math

from numba import njit

from numcaffe.solvers.sgd import SGDSolver
from numcaffe.solvers.solver import register_solver


@njit(cache=True)
def adagrad_update(g, h, local_rate, delta):
    for i in range(g.size):
        gi = g[i]
        h[i] += gi * gi
        g[i] = local_rate * gi / (math.sqrt(h[i]) + delta)


@njit(cache=True)
def rmsprop_update(g, h, local_rate, rms_decay, delta):
    for i in range(g.size):
        gi = g[i]
        h[i] = rms_decay * h[i] + (1.0 - rms_decay) * gi * gi
        g[i] = local_rate * gi / (math.sqrt(h[i]) + delta)


@njit(cache=True)
def adadelta_update(g, h_grad, h_update, local_rate, momentum, delta):
    for i in range(g.size):
        gi = g[i]
        hg = momentum * h_grad[i] + (1.0 - momentum) * gi * gi
        h_grad[i] = hg
        u = gi * math.sqrt((h_update[i] + delta) / (hg + delta))
        h_update[i] = momentum * h_update[i] + (1.0 - momentum) * u * u
        g[i] = local_rate * u


@njit(cache=True)
def adam_update(g, m, v, step_rate, beta1, beta2, eps):
    """``step_rate`` is local_rate * sqrt(1 - beta2^t) / (1 - beta1^t)."""
    for i in range(g.size):
        gi = g[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        g[i] = step_rate * m[i] / (math.sqrt(v[i]) + eps)


def _no_momentum(solver):
    if solver.param.momentum != 0:
        raise solver.config_error(f"momentum cannot be used with {solver.type_name} (momentum is "
                                  f"{solver.param.momentum}; remove it or set it to 0)")


@register_solver("AdaGrad")
class AdaGradSolver(SGDSolver):
    """AdaGrad (Duchi et al. 2011): steps shrink with the summed squared gradients."""

    def pre_solve(self):
        _no_momentum(self)
        super().pre_solve()

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        adagrad_update(blob.flat_diff, self.history[param_id].reshape(-1),
                       float(rate * self.net.params_lr[param_id]), float(self.param.delta))


@register_solver("RMSProp")
class RMSPropSolver(SGDSolver):
    """RMSProp (Tieleman & Hinton 2012): steps scaled by a running RMS of the gradient."""

    def pre_solve(self):
        _no_momentum(self)
        if not 0 <= self.param.rms_decay < 1:
            raise self.config_error(f"rms_decay should lie between 0 and 1 (got {self.param.rms_decay})")
        super().pre_solve()

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        rmsprop_update(blob.flat_diff, self.history[param_id].reshape(-1),
                       float(rate * self.net.params_lr[param_id]), float(self.param.rms_decay),
                       float(self.param.delta))


@register_solver("AdaDelta")
class AdaDeltaSolver(SGDSolver):
    """AdaDelta (Zeiler 2012): RMS of past updates over RMS of past gradients."""

    history_per_param = 2

    def compute_update_value(self, param_id, rate):
        n = len(self.net.learnable_params)
        blob = self.net.learnable_params[param_id]
        adadelta_update(blob.flat_diff, self.history[param_id].reshape(-1), self.history[n + param_id].reshape(-1),
                        float(rate * self.net.params_lr[param_id]), float(self.param.momentum),
                        float(self.param.delta))


@register_solver("Adam")
class AdamSolver(SGDSolver):
    """Adam (Kingma & Ba 2014), with Caffe's bias correction folded into the rate."""

    history_per_param = 2

    def compute_update_value(self, param_id, rate):
        n = len(self.net.learnable_params)
        p = self.param
        beta1, beta2 = p.momentum, p.momentum2
        t = self.iter + 1
        correction = math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        blob = self.net.learnable_params[param_id]
        adam_update(blob.flat_diff, self.history[param_id].reshape(-1), self.history[n + param_id].reshape(-1),
                    float(rate * self.net.params_lr[param_id] * correction), float(beta1), float(beta2),
                    float(p.delta))
