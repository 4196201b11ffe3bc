"""Each learning-rate policy against its formula (Caffe's sgd_solver.cpp and numcaffe's own)."""
import math
import os
import re
import subprocess
import sys

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


def test_sigmoid_with_negative_gamma_decays_from_base_lr():
    # base_lr / (1 + exp(-gamma (it - stepsize))) with gamma = -0.5, stepsize = 10, base_lr = 0.2:
    # it = 0: -gamma (it - stepsize) = 0.5 * -10 = -5, 0.2 / (1 + e^-5) = 0.2 / 1.0067379 = 0.1986614;
    # it = 10: 0.2 / (1 + 1) = 0.1;  it = 20: 0.2 / (1 + e^5) = 0.2 / 149.4132 = 0.0013386
    p = P('lr_policy: "sigmoid" base_lr: 0.2 gamma: -0.5 stepsize: 10')
    lr_policy.check_policy(p)                     # accepted (Caffe itself CHECKs gamma >= 0)
    assert lr_policy.learning_rate(p, 10) == pytest.approx(0.1, rel=1e-7)
    assert lr_policy.learning_rate(p, 0) == pytest.approx(0.1986614, rel=1e-6)
    assert lr_policy.learning_rate(p, 20) == pytest.approx(0.0013386, rel=1e-4)
    rates = [lr_policy.learning_rate(p, it) for it in range(0, 40)]
    assert all(a > b for a, b in zip(rates, rates[1:]))     # the decaying form
    # far past the centre exp(-gamma (it - stepsize)) passes the largest double: the rate is 0, as C's
    # exp gives inf there, not an OverflowError
    assert lr_policy.learning_rate(p, 100000) == 0.0
    up = P('lr_policy: "sigmoid" base_lr: 0.2 gamma: 0.5 stepsize: 100000')
    assert lr_policy.learning_rate(up, 0) == 0.0


def test_sigmoid_trains_with_a_negative_gamma():
    solver, _, _ = least_squares_solver("SGD", 'lr_policy: "sigmoid" gamma: -0.5 stepsize: 2', base_lr=0.2)
    solver.step(4)
    assert solver.learning_rate == pytest.approx(0.2 / (1 + math.exp(0.5 * (3 - 2))), rel=1e-6)


def test_overflowing_rates_are_inf_as_in_caffe_not_exceptions():
    # exp with gamma > 1 (a learning-rate range test) outgrows a double after some 7,000 iterations;
    # poly past max_iter (pycaffe's step() does not stop there) has a negative base.  Caffe's pow gives
    # inf and nan, which its (and numcaffe's) NaN/Inf check then reports.
    assert lr_policy.learning_rate(P('lr_policy: "exp" base_lr: 0.1 gamma: 1.1'), 100000) == math.inf
    assert math.isnan(lr_policy.learning_rate(P('lr_policy: "poly" base_lr: 0.1 power: 0.5 max_iter: 10'), 11))


def test_multistep_stepvalues_that_do_not_increase_run_as_in_caffe_with_a_warning(numcaffe_log):
    p = P('lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 30 stepvalue: 10 stepvalue: 40')
    lr_policy.check_policy(p, "s.prototxt")
    assert ("s.prototxt: lr_policy 'multistep': stepvalue 10 after 30 does not increase; as in Caffe, that "
            "step is taken at iteration 31 (one after the step before it)") in numcaffe_log.messages
    # Caffe: step 1 at iteration 30 (>= 30), step 2 at 31 (>= 10, one per iteration), step 3 at 40
    assert [lr_policy.current_step(p, i) for i in (9, 10, 29, 30, 31, 39, 40)] == [0, 0, 0, 1, 2, 2, 3]
    numcaffe_log.records.clear()
    lr_policy.check_policy(P('lr_policy: "multistep" gamma: 0.5 stepvalue: 10 stepvalue: 30'))
    assert not any("does not increase" in m for m in numcaffe_log.messages)


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


# What BVLC Caffe's SGDSolver::GetLearningRate CHECKs, and what would divide by zero (poly), is refused;
# nothing else.  One case per check.
@pytest.mark.parametrize("text,needle", [
    ('base_lr: 0.1', "no lr_policy"),
    ('lr_policy: "stpe"', "did you mean 'step'"),
    ('lr_policy: "step" gamma: 0.1', "lr_policy 'step' needs stepsize > 0 (got 0)"),
    ('lr_policy: "step" gamma: -0.1 stepsize: 5', "lr_policy 'step' needs gamma >= 0 (got -0.1"),
    ('lr_policy: "exp" gamma: -0.5', "lr_policy 'exp' needs gamma >= 0 (got -0.5)"),
    ('lr_policy: "inv" gamma: -0.5 power: 0.75', "lr_policy 'inv' needs gamma >= 0 (got -0.5)"),
    ('lr_policy: "multistep" gamma: -0.5 stepvalue: 3', "lr_policy 'multistep' needs gamma >= 0 (got -0.5)"),
    ('lr_policy: "sigmoid" gamma: -0.5 stepsize: -2', "lr_policy 'sigmoid' needs stepsize > 0 (got -2)"),
    ('lr_policy: "sigmoid" gamma: 0.5', "lr_policy 'sigmoid' needs stepsize > 0 (got 0)"),
    ('lr_policy: "poly" power: 1', "lr_policy 'poly' needs max_iter > 0 (it divides by max_iter; got 0)"),
    ('lr_policy: "plateau" gamma: -0.5', "lr_policy 'plateau' needs gamma >= 0 (got -0.5)"),
    ('lr_policy: "cosine" cosine_period: 10 cosine_period_mult: 0.5', "cosine_period_mult must be >= 1"),
    ('lr_policy: "cosine"', "lr_policy 'cosine' needs cosine_period > 0 or max_iter > 0"),
    ('lr_policy: "fixed" warmup_iter: -1', "warmup_iter must be >= 0 (got -1)"),
])
def test_bad_policy_settings(text, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        lr_policy.check_policy(P(text))


@pytest.mark.parametrize("text", [
    'lr_policy: "fixed" gamma: -3 stepsize: -1 power: -2',      # fixed reads none of them
    'lr_policy: "inv" gamma: 0.001 power: -0.5',                # Caffe takes any power
    'lr_policy: "poly" max_iter: 10 power: -1',
    'lr_policy: "exp" gamma: 1.5',                              # a growing rate (range tests)
    'lr_policy: "step" gamma: 2 stepsize: 1',
    'lr_policy: "sigmoid" gamma: -0.01 stepsize: 5000',
])
def test_what_caffe_accepts_is_accepted(text):
    lr_policy.check_policy(P(text))


def test_a_bad_policy_setting_names_the_solver_file_on_the_command_line(tmp_path):
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }\n')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "step" gamma: 0.5 '
                                              'max_iter: 4 snapshot_prefix: "snap/r"')
    res = subprocess.run([sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", "solver.prototxt"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GLOG_minloglevel": "1"})
    errors = [l for l in res.stderr.splitlines() if l.startswith("numcaffe")]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert errors == ["numcaffe: error: solver.prototxt: lr_policy 'step' needs stepsize > 0 (got 0)"], res.stderr
    assert not (tmp_path / "snap").exists()


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
