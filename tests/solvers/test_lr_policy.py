"""Each learning-rate policy against its formula (Caffe's sgd_solver.cpp and numcaffe's own)."""
import math

import numpy as np
import pytest

from numcaffe.net.errors import ConfigError
from numcaffe.solvers import lr_policy
from tests.solvers.nets import least_squares_solver, solver_param


def P(text):
    return solver_param(text)


def f32(x):
    """The solver's hyper-parameters are float32 fields, as in Caffe."""
    return float(np.float32(x))


ITERS = [0, 1, 2, 5, 9, 10, 11, 29, 30, 31, 99, 250, 999]

CAFFE_CASES = {
    "fixed": ('lr_policy: "fixed" base_lr: 0.1', lambda it: 0.1),
    "step": ('lr_policy: "step" base_lr: 0.1 gamma: 0.5 stepsize: 10', lambda it: 0.1 * 0.5 ** (it // 10)),
    "exp": ('lr_policy: "exp" base_lr: 0.1 gamma: 0.99', lambda it: f32(0.1) * f32(0.99) ** it),
    "inv": ('lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75',
            lambda it: f32(0.01) * (1 + f32(0.0001) * it) ** -0.75),
    "multistep": ('lr_policy: "multistep" base_lr: 0.1 gamma: 0.1 stepvalue: 10 stepvalue: 30 stepvalue: 250',
                  lambda it: 0.1 * 0.1 ** sum(it >= s for s in (10, 30, 250))),
    "poly": ('lr_policy: "poly" base_lr: 0.1 power: 2 max_iter: 1000', lambda it: 0.1 * (1 - it / 1000) ** 2),
    "sigmoid": ('lr_policy: "sigmoid" base_lr: 0.1 gamma: 0.05 stepsize: 30',
                lambda it: f32(0.1) / (1 + math.exp(-f32(0.05) * (it - 30)))),
}


@pytest.mark.parametrize("name", list(CAFFE_CASES))
def test_caffe_policy_formula(name):
    text, formula = CAFFE_CASES[name]
    param = P(text)
    for it in ITERS:
        want = formula(it)
        assert lr_policy.learning_rate(param, it) == pytest.approx(want, rel=1e-6), (name, it)


def test_sigmoid_with_negative_gamma_is_rejected_as_caffe_does():
    # Caffe CHECKs gamma >= 0 for sigmoid (its rate rises from 0 to base_lr around stepsize)
    with pytest.raises(ConfigError, match="gamma >= 0"):
        lr_policy.check_policy(P('lr_policy: "sigmoid" base_lr: 0.1 gamma: -0.05 stepsize: 30'))


def test_current_step_is_what_caffe_records():
    step = P('lr_policy: "step" base_lr: 1 gamma: 0.5 stepsize: 10')
    multi = P('lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 5 stepvalue: 7')
    assert [lr_policy.current_step(step, i) for i in (0, 9, 10, 25)] == [0, 0, 1, 2]
    assert [lr_policy.current_step(multi, i) for i in (0, 4, 5, 6, 7, 100)] == [0, 0, 1, 1, 2, 2]
    assert lr_policy.current_step(P('lr_policy: "inv"'), 50) == 0


def test_multistep_takes_at_most_one_step_per_iteration_as_caffe():
    # SGDSolver::GetLearningRate advances current_step_ by at most one per iteration, so a
    # repeated stepvalue takes effect one iteration after the first.
    p = P('lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 5 stepvalue: 5 stepvalue: 6 stepvalue: 20')
    assert [lr_policy.current_step(p, i) for i in (4, 5, 6, 7, 19, 20)] == [0, 1, 2, 3, 3, 4]
    assert lr_policy.learning_rate(p, 5) == 0.5 and lr_policy.learning_rate(p, 7) == 0.125


def test_cosine_without_restarts_anneals_over_max_iter():
    p = P('lr_policy: "cosine" base_lr: 0.1 min_lr: 0.001 max_iter: 100')
    for it in (0, 25, 50, 99):
        want = f32(0.001) + (f32(0.1) - f32(0.001)) * 0.5 * (1 + math.cos(math.pi * it / 100))
        assert lr_policy.learning_rate(p, it) == pytest.approx(want, rel=1e-12)
    assert lr_policy.learning_rate(p, 0) == pytest.approx(0.1)
    assert lr_policy.learning_rate(p, 50) == pytest.approx((0.1 + 0.001) / 2)


def test_cosine_warm_restarts_with_growing_periods():
    p = P('lr_policy: "cosine" base_lr: 1 min_lr: 0 cosine_period: 10 cosine_period_mult: 2 max_iter: 1000')
    # cycles: [0, 10), [10, 30), [30, 70), [70, 150)
    def want(t, T):
        return 0.5 * (1 + math.cos(math.pi * t / T))
    cases = {0: (0, 10), 5: (5, 10), 9: (9, 10), 10: (0, 20), 20: (10, 20), 29: (19, 20), 30: (0, 40), 69: (39, 40),
             70: (0, 80), 149: (79, 80)}
    for it, (t, T) in cases.items():
        assert lr_policy.learning_rate(p, it) == pytest.approx(want(t, T), abs=1e-12), it
    same = P('lr_policy: "cosine" base_lr: 1 cosine_period: 10 max_iter: 1000')
    assert lr_policy.learning_rate(same, 37) == pytest.approx(want(7, 10))


@pytest.mark.parametrize("policy", ["fixed", "step", "inv", "cosine"])
def test_warmup_multiplies_any_policy(policy):
    base = f'lr_policy: "{policy}" base_lr: 0.2 gamma: 0.5 stepsize: 3 power: 0.75 max_iter: 100'
    plain = P(base)
    warm = P(base + " warmup_iter: 10 warmup_start_factor: 0.1")
    for it in range(15):
        factor = 0.1 + 0.9 * it / 10 if it < 10 else 1.0
        assert lr_policy.learning_rate(warm, it) == pytest.approx(lr_policy.learning_rate(plain, it) * factor,
                                                                  rel=1e-6), it
    assert lr_policy.learning_rate(warm, 0) == pytest.approx(0.02, rel=1e-6)


def test_plateau_rate_and_counter():
    p = P('lr_policy: "plateau" base_lr: 0.1 gamma: 0.5')
    assert lr_policy.learning_rate(p, 100, plateau_steps=0) == pytest.approx(0.1)
    assert lr_policy.learning_rate(p, 100, plateau_steps=3) == pytest.approx(0.1 * 0.125)
    st = lr_policy.PlateauState(mode="max", threshold=0.01, patience=2)
    seen = [st.observe(v, i) for i, v in enumerate([0.5, 0.6, 0.605, 0.6, 0.7, 0.7, 0.69])]
    # improvement must exceed the threshold; after `patience` tests without one, one reduction
    assert seen == [True, True, False, "reduced", True, False, "reduced"]
    assert st.steps == 2 and st.best == pytest.approx(0.7) and st.best_iter == 4
    low = lr_policy.PlateauState(mode="min", patience=1)
    assert [low.observe(v, i) for i, v in enumerate([3.0, 2.0, 2.5])] == [True, True, "reduced"]
    restored = lr_policy.PlateauState(mode="max", threshold=0.01, patience=2)
    restored.set_state(st.get_state())
    assert restored.get_state() == st.get_state()


@pytest.mark.parametrize("text,needle", [
    ('base_lr: 0.1', "no lr_policy"),
    ('lr_policy: "stpe"', "did you mean 'step'"),
    ('lr_policy: "step" gamma: 0.1', "stepsize > 0"),
    ('lr_policy: "multistep" stepvalue: 30 stepvalue: 10', "stepvalue must increase"),
    ('lr_policy: "poly" power: 1', "max_iter > 0"),
    ('lr_policy: "cosine" cosine_period: 10 cosine_period_mult: 0.5', "cosine_period_mult must be >= 1"),
])
def test_bad_policy_settings(text, needle):
    with pytest.raises(ConfigError, match=needle):
        lr_policy.check_policy(P(text))


def test_solver_uses_the_policy_and_logs_lr(numcaffe_log):
    solver, _, _ = least_squares_solver("SGD", "display: 2", base_lr=0.5)
    solver.param.lr_policy = "multistep"
    solver.param.gamma = 0.1
    solver.param.stepvalue.extend([1, 3])
    solver.step(4)
    msgs = numcaffe_log.messages
    assert "Iteration 0, lr = 0.5" in msgs
    assert "Iteration 2, lr = 0.05" in msgs
    assert "MultiStep Status: Iteration 1, step = 1" in msgs
    assert "MultiStep Status: Iteration 3, step = 2" in msgs
    assert solver.current_step == 2
