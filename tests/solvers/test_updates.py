"""Each solver's update equals a hand-computed one on a small least-squares problem.

As Caffe's test_gradient_based_solver.cpp: the net is y_hat = X w + b with a
Euclidean loss; the test recomputes the gradient from the data with numpy
and applies Caffe's ApplyUpdate (clip, 1/iter_size, weight decay, the rule)
in float64, step by step, then compares the weights and the history.
"""
import numpy as np
import pytest

from numcaffe.net.errors import ConfigError
from tests.solvers.nets import SOLVER_TYPES, least_squares_solver


def grad(w, b, x, y):
    """dL/dw, dL/db of L = sum (x w + b - y)^2 / (2 B) for one batch."""
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    r = x @ w.ravel() + b[0] - y
    return (r @ x / len(y)).reshape(w.shape), np.array([r.sum() / len(y)])


class Reference:
    """Caffe's ApplyUpdate in float64 numpy."""

    def __init__(self, solver_type, hp, w, b, lr_mult, decay_mult):
        self.type, self.hp = solver_type, hp
        self.params = [w.astype(np.float64), b.astype(np.float64)]
        self.lr_mult, self.decay_mult = lr_mult, decay_mult
        n = 2 if solver_type in ("AdaDelta", "Adam") else 1
        self.history = [np.zeros_like(p) for _ in range(n) for p in self.params]
        self.iter = 0

    def step(self, grads, rate):
        hp = self.hp
        grads = [g.astype(np.float64).copy() for g in grads]
        clip = hp.get("clip_gradients", -1)
        if clip >= 0:
            norm = np.sqrt(sum((g * g).sum() for g in grads))
            if norm > clip:
                grads = [g * clip / norm for g in grads]
        n = len(self.params)
        for i, (p, g) in enumerate(zip(self.params, grads)):
            g /= hp.get("iter_size", 1)
            decay = hp.get("weight_decay", 0.0) * self.decay_mult[i]
            g += decay * (np.sign(p) if hp.get("regularization_type") == "L1" else p)
            a = rate * self.lr_mult[i]
            h = self.history[i]
            mu = hp.get("momentum", 0.0)
            eps = hp.get("delta", 1e-8)
            if self.type == "SGD":
                h[...] = mu * h + a * g
                step = h.copy()
            elif self.type == "Nesterov":
                old = h.copy()
                h[...] = mu * h + a * g
                step = (1 + mu) * h - mu * old
            elif self.type == "AdaGrad":
                h += g * g
                step = a * g / (np.sqrt(h) + eps)
            elif self.type == "RMSProp":
                d = hp["rms_decay"]
                h[...] = d * h + (1 - d) * g * g
                step = a * g / (np.sqrt(h) + eps)
            elif self.type == "AdaDelta":
                u_hist = self.history[n + i]
                h[...] = mu * h + (1 - mu) * g * g
                u = g * np.sqrt((u_hist + eps) / (h + eps))
                u_hist[...] = mu * u_hist + (1 - mu) * u * u
                step = a * u
            elif self.type == "Adam":
                b1, b2 = mu, hp["momentum2"]
                v = self.history[n + i]
                t = self.iter + 1
                h[...] = b1 * h + (1 - b1) * g
                v[...] = b2 * v + (1 - b2) * g * g
                step = a * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * h / (np.sqrt(v) + eps)
            p -= step
        self.iter += 1


HYPER = {
    "SGD": dict(momentum=0.9),
    "Nesterov": dict(momentum=0.9),
    "AdaGrad": dict(delta=1e-6),
    "RMSProp": dict(rms_decay=0.95, delta=1e-6),
    "AdaDelta": dict(momentum=0.95, delta=1e-6),
    "Adam": dict(momentum=0.9, momentum2=0.999, delta=1e-6),
}

VARIANTS = {
    "plain": dict(),
    "l2_decay": dict(weight_decay=0.1),
    "l1_decay": dict(weight_decay=0.1, regularization_type="L1"),
    "iter_size": dict(iter_size=2, weight_decay=0.05),
    "clip": dict(clip_gradients=0.05),
}


def _settings(hp):
    out = []
    for k, v in hp.items():
        out.append(f'{k}: "{v}"' if isinstance(v, str) else f"{k}: {v}")
    return " ".join(out)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
def test_update_matches_hand_computation(solver_type, variant):
    hp = dict(HYPER[solver_type], **VARIANTS[variant])
    iter_size = hp.get("iter_size", 1)
    batch, n = 4, 8
    lr_mult, decay_mult = (1.0, 2.0), (1.0, 0.5)
    base_lr = 0.1 if solver_type != "AdaDelta" else 1.0
    solver, x, y = least_squares_solver(solver_type, _settings(hp), base_lr=base_lr, batch=batch, n=n, lr_w=lr_mult[0], lr_b=lr_mult[1],
                                        decay_w=decay_mult[0], decay_b=decay_mult[1])
    w_blob, b_blob = solver.net.params["ip"]
    ref = Reference(solver_type, hp, w_blob.data.copy(), b_blob.data.copy(), lr_mult, decay_mult)
    pos = 0
    for it in range(4):
        w, b = ref.params
        gw, gb = np.zeros_like(w), np.zeros_like(b)
        for _ in range(iter_size):
            dw, db = grad(w, b, x[pos:pos + batch], y[pos:pos + batch].astype(np.float64))
            gw += dw
            gb += db
            pos = (pos + batch) % n
        ref.step([gw, gb], base_lr)
        solver.step(1)
        np.testing.assert_allclose(w_blob.data, ref.params[0], rtol=1e-5, atol=1e-6,
                                   err_msg=f"weights after iteration {it}")
        np.testing.assert_allclose(b_blob.data, ref.params[1], rtol=1e-5, atol=1e-6)
        for got, want in zip(solver.history, ref.history):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"history after iteration {it}")
    assert solver.iter == 4


def test_zero_lr_mult_leaves_the_parameter_alone():
    solver, x, y = least_squares_solver("SGD", "momentum: 0.9 weight_decay: 0.1", lr_w=0.0, lr_b=1.0)
    w = solver.net.params["ip"][0].data.copy()
    solver.step(3)
    np.testing.assert_array_equal(solver.net.params["ip"][0].data, w)
    assert not np.array_equal(solver.net.params["ip"][1].data, 0)


def test_clipping_logs_caffe_message(numcaffe_log):
    solver, x, y = least_squares_solver("SGD", "clip_gradients: 1e-4")
    solver.step(1)
    assert any(m.startswith("Gradient clipping: scaling down gradients (L2 norm ") and "> 0.0001) by scale factor" in m
               for m in numcaffe_log.messages)


@pytest.mark.parametrize("solver_type,settings,needle", [
    ("AdaGrad", "momentum: 0.9", "momentum cannot be used with AdaGrad"),
    ("RMSProp", "momentum: 0.5 rms_decay: 0.9", "momentum cannot be used with RMSProp"),
    ("RMSProp", "rms_decay: 1.5", "rms_decay should lie between 0 and 1"),
    ("SGD", 'regularization_type: "L3"', "unknown regularization_type 'L3'"),
])
def test_bad_hyper_parameters_are_config_errors(solver_type, settings, needle):
    with pytest.raises(ConfigError, match=needle):
        least_squares_solver(solver_type, settings)
