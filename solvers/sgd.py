"""SGD with momentum and Nesterov's accelerated gradient (Caffe's SGDSolver, NesterovSolver).

``SGDSolver.apply_update`` is Caffe's ApplyUpdate, shared by every solver:

    rate = lr_policy(iter)                       (solvers/lr_policy.py)
    clip: if ||g||_2 > clip_gradients:  g *= clip_gradients / ||g||_2   (over all parameters)
    per parameter:
        normalize:   g *= 1 / iter_size
        regularize:  g += decay * w       (L2)   or   g += decay * sign(w)   (L1),
                     decay = weight_decay * decay_mult
        update rule: g <- the step to take, using the history arrays, at local_rate = rate * lr_mult
    w -= g

The update rules (``V`` the history, ``mu`` the momentum, ``a`` the local rate):

    SGD:       V <- mu V + a g;                  step = V
    Nesterov:  V' <- mu V + a g;                 step = (1 + mu) V' - mu V
"""
import numpy as np
from numba import njit, prange

from numcaffe.layers.elementwise import axpy, axpy_parallel
from numcaffe.layers.parallel import parts, share
from numcaffe.net.log import fmt
from numcaffe.solvers import lr_policy
from numcaffe.solvers.listener import notify
from numcaffe.solvers.solver import Solver, log, register_solver

# ---------------------------------------------------------------- kernels
# (L2 decay, g += decay * w, is layers/elementwise.py's axpy.)


@njit(cache=True)
def regularize_l1(w, g, decay):
    """g += decay * sign(w)  (sign(0) = 0)."""
    for i in range(g.size):
        if w[i] > 0:
            g[i] += decay
        elif w[i] < 0:
            g[i] -= decay


@njit(cache=True)
def scale(g, factor):
    """g *= factor, in place (elementwise's scale_into(factor, g, g) measured 3x slower: LLVM's
    runtime alias check sends an array that is both input and output to the scalar loop)."""
    for i in range(g.size):
        g[i] *= factor


@njit(cache=True)
def sumsq(g):
    s = 0.0
    for i in range(g.size):
        s += g[i] * g[i]
    return s


@njit(cache=True)
def sgd_update(g, v, local_rate, momentum):
    """V <- momentum * V + local_rate * g;  g <- V."""
    for i in range(g.size):
        v[i] = momentum * v[i] + local_rate * g[i]
        g[i] = v[i]


@njit(cache=True)
def nesterov_update(g, v, local_rate, momentum):
    """V' <- momentum * V + local_rate * g;  g <- (1 + momentum) V' - momentum V."""
    for i in range(g.size):
        v_old = v[i]
        v_new = momentum * v_old + local_rate * g[i]
        v[i] = v_new
        g[i] = (1.0 + momentum) * v_new - momentum * v_old


@njit(cache=True)
def subtract(w, g):
    """w -= g (Caffe's Blob::Update)."""
    for i in range(w.size):
        w[i] -= g[i]


# The parallel twins (layers/parallel.py): the plain kernel on equal shares of the parameter, one
# per thread, so bitwise the same; the solver takes them for parameters of PARALLEL_MIN values and more.

@njit(cache=True, parallel=True)
def sgd_update_parallel(g, v, local_rate, momentum, shares):
    for t in prange(shares):
        lo, hi = share(g.size, t, shares)
        sgd_update(g[lo:hi], v[lo:hi], local_rate, momentum)


@njit(cache=True, parallel=True)
def subtract_parallel(w, g, shares):
    for t in prange(shares):
        lo, hi = share(w.size, t, shares)
        subtract(w[lo:hi], g[lo:hi])


def step(blob):
    """w -= g for one parameter blob (Caffe's Blob::Update), on every thread when it is big."""
    shares = parts(blob.count)
    if shares > 1:
        subtract_parallel(blob.flat_data, blob.flat_diff, shares)
    else:
        subtract(blob.flat_data, blob.flat_diff)


# ---------------------------------------------------------------- solvers


@register_solver("SGD")
class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: V <- mu V + a g;  w <- w - V."""

    #: history arrays per parameter (AdaDelta and Adam keep two).
    history_per_param = 1

    def pre_solve(self):
        params = self.net.learnable_params
        self.history = [np.zeros(p.shape, dtype=np.float32)
                        for _ in range(self.history_per_param) for p in params]

    def history_names(self):
        names = self.net.param_display_names
        n = len(names)
        return [f"{names[i % n]}" + (f" (history {i // n})" if self.history_per_param > 1 else "")
                for i in range(len(self.history))]

    def get_learning_rate(self):
        p = self.param
        step = lr_policy.current_step(p, self.iter)
        if p.lr_policy == "multistep" and step != self.current_step:
            log.info("MultiStep Status: Iteration %d, step = %d", self.iter, step)
        self.current_step = step
        return lr_policy.learning_rate(p, self.iter, self.plateau.steps if self.plateau is not None else 0)

    def clip_gradients(self):
        clip = self.param.clip_gradients
        if clip < 0:
            return
        params = self.net.learnable_params
        total = 0.0
        for blob in params:
            total += sumsq(blob.flat_diff)
        norm = float(np.sqrt(total))
        if norm > clip:
            factor = clip / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     fmt(norm), fmt(clip), fmt(factor))
            for blob in params:
                scale(blob.flat_diff, factor)

    def normalize(self, param_id):
        if self.param.iter_size == 1:
            return
        scale(self.net.learnable_params[param_id].flat_diff, 1.0 / self.param.iter_size)

    def regularize(self, param_id):
        decay = self.param.weight_decay * self.net.params_weight_decay[param_id]
        if not decay:
            return
        blob = self.net.learnable_params[param_id]
        if self.param.regularization_type == "L2":
            shares = parts(blob.count)
            if shares > 1:
                axpy_parallel(float(decay), blob.flat_data, blob.flat_diff, shares)
            else:
                axpy(float(decay), blob.flat_data, blob.flat_diff)
        else:
            regularize_l1(blob.flat_data, blob.flat_diff, float(decay))

    def compute_update_value(self, param_id, rate):
        local_rate = rate * self.net.params_lr[param_id]
        blob = self.net.learnable_params[param_id]
        shares = parts(blob.count)
        if shares > 1:
            sgd_update_parallel(blob.flat_diff, self.history[param_id].reshape(-1), float(local_rate),
                                float(self.param.momentum), shares)
        else:
            sgd_update(blob.flat_diff, self.history[param_id].reshape(-1), float(local_rate),
                       float(self.param.momentum))

    def apply_update(self):
        rate = self.get_learning_rate()
        self.learning_rate = rate
        p = self.param
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
            notify(self.listeners, "on_learning_rate", self, rate)
        self.clip_gradients()
        for i in range(len(self.net.learnable_params)):
            self.normalize(i)
            self.regularize(i)
            self.compute_update_value(i, rate)
        for blob in self.net.learnable_params:
            step(blob)
        if self.net.debug_info:
            self.net.update_debug_info()


@register_solver("Nesterov")
class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: V' <- mu V + a g;  w <- w - ((1 + mu) V' - mu V)."""

    def compute_update_value(self, param_id, rate):
        local_rate = rate * self.net.params_lr[param_id]
        blob = self.net.learnable_params[param_id]
        nesterov_update(blob.flat_diff, self.history[param_id].reshape(-1), float(local_rate),
                        float(self.param.momentum))
