"""Learning-rate policies: pure functions of the iteration and the SolverParameter.

Caffe's policies (SGDSolver::GetLearningRate), with ``it`` the number of
updates done so far:

* ``fixed``:     base_lr
* ``step``:      base_lr * gamma ^ floor(it / stepsize)
* ``exp``:       base_lr * gamma ^ it
* ``inv``:       base_lr * (1 + gamma * it) ^ (-power)
* ``multistep``: base_lr * gamma ^ (number of stepvalue entries <= it; at most one new
  step per iteration, so a repeated value counts one iteration later)
* ``poly``:      base_lr * (1 - it / max_iter) ^ power
* ``sigmoid``:   base_lr / (1 + exp(-gamma * (it - stepsize))); a positive gamma rises from
  0 to base_lr around ``stepsize``, a negative one decays from base_lr to 0 there

numcaffe's own (fields 1001 and up):

* ``cosine``:  min_lr + (base_lr - min_lr) * (1 + cos(pi * t / T)) / 2, where
  ``t`` counts iterations since the last restart and the period ``T`` starts
  at ``cosine_period`` (``max_iter`` when 0) and is multiplied by
  ``cosine_period_mult`` at every restart (SGDR, Loshchilov & Hutter 2017);
  one period of ``max_iter`` is plain cosine annealing.
* ``plateau``: base_lr * gamma ^ k, where k is the number of times the watched
  test output stopped improving for ``plateau_patience`` tests.  k is the one
  piece of policy *state*; the solver keeps it (:class:`PlateauState`) and
  saves it in its snapshots.
* warmup (any policy): for ``it < warmup_iter`` the rate is multiplied by
  ``f0 + (1 - f0) * it / warmup_iter`` with ``f0 = warmup_start_factor``, a
  linear ramp from ``base_lr * f0`` (for policies that start at base_lr) to
  the policy's own rate.

The settings are checked where Caffe's ``GetLearningRate`` CHECKs them (``step``: stepsize > 0,
gamma >= 0; ``exp``, ``inv``, ``multistep``: gamma >= 0; ``sigmoid``: stepsize > 0) and where the
formula would divide by zero (``poly``: max_iter > 0).  Two departures, both accepting more than
Caffe: ``sigmoid`` takes a negative gamma (Caffe CHECKs gamma >= 0, which rules out the decaying
form), and ``multistep`` stepvalues that do not increase only warn, as Caffe runs them (each such
step is taken one iteration after the one before).  docs/solver.md has the table.  Like C's
``pow`` and ``exp`` in Caffe, a rate that overflows is inf (caught by the solver's NaN/Inf check)
and a sigmoid whose exponent overflows is 0, never a Python exception.

``current_step`` is what Caffe records in its SolverState for ``step`` and
``multistep``; :func:`current_step` computes it, again from the iteration alone.
"""
import math

from numcaffe.net.errors import ConfigError
from numcaffe.net.log import get_logger

log = get_logger("numcaffe.solver")

CAFFE_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
NUMCAFFE_POLICIES = ("cosine", "plateau")
POLICIES = CAFFE_POLICIES + NUMCAFFE_POLICIES


def check_policy(param, source=""):
    """Raise a ConfigError when the policy or its settings cannot work (``source``: the solver file,
    named in the message)."""
    where = f"{source}: " if source else ""
    policy = param.lr_policy
    if not policy:
        raise ConfigError(f"{where}the solver sets no lr_policy; choose one of {', '.join(POLICIES)}")
    if policy not in POLICIES:
        import difflib
        near = difflib.get_close_matches(policy, POLICIES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{where}unknown lr_policy {policy!r} (known: {', '.join(POLICIES)}){hint}")
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise ConfigError(f"{where}lr_policy {policy!r} needs stepsize > 0 (got {param.stepsize})")
    if policy in ("step", "exp", "inv", "multistep", "plateau") and param.gamma < 0:
        raise ConfigError(f"{where}lr_policy {policy!r} needs gamma >= 0 (got {param.gamma})")
    if policy == "multistep":
        values = list(param.stepvalue)
        for k in range(1, len(values)):
            if values[k] <= values[k - 1]:
                log.warning("%slr_policy 'multistep': stepvalue %d after %d does not increase; as in Caffe, "
                            "that step is taken at iteration %d (one after the step before it)", where,
                            values[k], values[k - 1], _multistep_iterations(values)[k])
                break
    if policy == "poly" and param.max_iter <= 0:
        raise ConfigError(f"{where}lr_policy 'poly' needs max_iter > 0 (it divides by max_iter; got "
                          f"{param.max_iter})")
    if policy == "cosine":
        if param.cosine_period < 0 or (param.cosine_period == 0 and param.max_iter <= 0):
            raise ConfigError(f"{where}lr_policy 'cosine' needs cosine_period > 0 or max_iter > 0")
        if param.cosine_period_mult < 1:
            raise ConfigError(f"{where}cosine_period_mult must be >= 1 (got {param.cosine_period_mult})")
    if param.warmup_iter < 0:
        raise ConfigError(f"{where}warmup_iter must be >= 0 (got {param.warmup_iter})")


def _multistep_iterations(stepvalues):
    """The iteration at which each multistep step is taken: Caffe advances at most one step per
    iteration, so step k comes at max(stepvalue[k], (iteration of step k-1) + 1)."""
    out, reached = [], -1
    for value in stepvalues:
        reached = max(value, reached + 1)
        out.append(reached)
    return out


def current_step(param, it):
    """Caffe's ``current_step_`` for ``step`` and ``multistep`` (0 for the other policies)."""
    if param.lr_policy == "step":
        return it // param.stepsize
    if param.lr_policy == "multistep":
        return sum(1 for reached in _multistep_iterations(param.stepvalue) if reached <= it)
    return 0


def cosine_position(param, it):
    """(t, T): iterations since the last restart and the current period."""
    period = float(param.cosine_period or param.max_iter)
    mult = float(param.cosine_period_mult)
    if mult == 1.0:
        return it % period, period
    start = 0.0
    while it >= start + period:
        start += period
        period *= mult
    return it - start, period


def _pow(x, y):
    """C's pow as Caffe calls it: inf on overflow, nan outside the domain, never an exception."""
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def warmup_factor(param, it):
    if it >= param.warmup_iter:
        return 1.0
    f0 = param.warmup_start_factor
    return f0 + (1.0 - f0) * it / param.warmup_iter


def learning_rate(param, it, plateau_steps=0):
    """The learning rate for iteration ``it`` (before the warmup factor is the policy's)."""
    policy = param.lr_policy
    base = param.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * _pow(param.gamma, it // param.stepsize)
    elif policy == "exp":
        rate = base * _pow(param.gamma, it)
    elif policy == "inv":
        rate = base * _pow(1.0 + param.gamma * it, -param.power)
    elif policy == "multistep":
        rate = base * _pow(param.gamma, current_step(param, it))
    elif policy == "poly":
        rate = base * _pow(1.0 - it / param.max_iter, param.power)
    elif policy == "sigmoid":
        try:
            rate = base / (1.0 + math.exp(-param.gamma * (it - param.stepsize)))
        except OverflowError:        # exp(z) past the largest double: C's exp gives inf, the rate 0
            rate = 0.0
    elif policy == "cosine":
        t, period = cosine_position(param, it)
        rate = param.min_lr + (base - param.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / period))
    elif policy == "plateau":
        rate = base * _pow(param.gamma, plateau_steps)
    else:
        check_policy(param)
        raise AssertionError(policy)
    return rate * warmup_factor(param, it)


class MonitorState:
    """Best value and waiting count of a watched test output (plateau, early stopping)."""

    def __init__(self, mode="max", threshold=0.0):
        if mode not in ("max", "min"):
            raise ConfigError(f"monitor mode must be 'max' or 'min' (got {mode!r})")
        self.mode = mode
        self.threshold = float(threshold)
        self.best = None
        self.best_iter = None
        self.wait = 0

    def improved(self, value):
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.threshold
        return value < self.best - self.threshold

    def observe(self, value, it):
        """Record a test result; returns whether it improved on the best so far."""
        value = float(value)
        if self.improved(value):
            self.best, self.best_iter, self.wait = value, it, 0
            return True
        self.wait += 1
        return False

    def get_state(self):
        return {"best": self.best, "best_iter": self.best_iter, "wait": self.wait}

    def set_state(self, state):
        self.best = state.get("best")
        self.best_iter = state.get("best_iter")
        self.wait = int(state.get("wait", 0))


class PlateauState(MonitorState):
    """Reduce-on-plateau: ``steps`` reductions so far, counted by :meth:`observe`."""

    def __init__(self, mode="max", threshold=0.0, patience=5):
        super().__init__(mode, threshold)
        if patience < 1:
            raise ConfigError(f"plateau_patience must be >= 1 (got {patience})")
        self.patience = patience
        self.steps = 0

    def observe(self, value, it):
        improved = super().observe(value, it)
        if not improved and self.wait >= self.patience:
            self.steps += 1
            self.wait = 0
            return "reduced"
        return improved

    def get_state(self):
        return dict(super().get_state(), steps=self.steps)

    def set_state(self, state):
        super().set_state(state)
        self.steps = int(state.get("steps", 0))
