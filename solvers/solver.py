"""The training loop (Caffe's Solver): step, test, snapshot, restore.

``Solver.step(n)`` runs Caffe's Solver::Step exactly: per iteration

1. clear the parameter diffs;
2. test every ``test_interval`` iterations (at iteration 0 only with
   ``test_initialization``);
3. ``iter_size`` forward/backward passes, their loss averaged, and the
   smoothed loss (``average_loss``) updated;
4. on display iterations the ``Iteration N (...), loss = ...`` line and the
   train net's outputs;
5. ``apply_update()`` -- learning rate, gradient clipping, 1/iter_size
   normalisation, weight decay, the update rule, ``data -= diff`` -- which
   subclasses define (solvers/sgd.py, solvers/adaptive.py);
6. ``iter += 1``; then a snapshot every ``snapshot`` iterations or when a
   signal asks for one, and a stop when a signal asks for it.

``solve()`` steps to ``max_iter``, snapshots at the end (``snapshot_after_train``)
and runs Caffe's final display forward and test.

Beyond Caffe: the test nets' results drive reduce-on-plateau and early
stopping (with a ``PREFIX_best`` snapshot of the best weights), and every
snapshot carries the complete state of the run (layer random states, data
positions, smoothed loss, policy counters), so that restoring it continues
the identical run.  Tests that are interrupted by a signal are rolled back,
and snapshots taken while testing record the state from before the test, so
that a resumed run repeats exactly the test the interrupted one began.

Data parallel over MPI ranks (net/comm.py, docs/mpi.md): the same loop on
every rank, with one Allreduce of the flat gradient buffer between the passes
and the update (``_reduce_gradients``), which also agrees on the loss, NaNs and
signals; rank 0 alone tests (the others wait for its scores) and writes
snapshots, which hold every rank's data position and random state.
"""
import math
import os
import time

import numpy as np
from google.protobuf import text_format

from numcaffe.net import comm as nc_comm
from numcaffe.net import random as nc_random
from numcaffe.net.config import read_message
from numcaffe.net.errors import ConfigError, ModelFileError, NumericalError
from numcaffe.net.io import resolve_path
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.upgrade import check_current
from numcaffe.solvers import lr_policy, signals
from numcaffe.solvers.listener import notify
from numcaffe.solvers import state as solver_state
from numcaffe.net.log import fmt, get_logger

log = get_logger("numcaffe.solver")


#: solver type name -> Solver class, filled by :func:`register_solver`.
SOLVER_REGISTRY = {}


def register_solver(type_name):
    def deco(cls):
        if type_name in SOLVER_REGISTRY and SOLVER_REGISTRY[type_name] is not cls:
            raise ValueError(f"solver type {type_name!r} is registered twice")
        SOLVER_REGISTRY[type_name] = cls
        cls.type_name = type_name
        return cls
    return deco


def solver_class(type_name):
    import numcaffe.solvers  # noqa: F401  (registers every solver type)
    try:
        return SOLVER_REGISTRY[type_name]
    except KeyError:
        import difflib
        near = difflib.get_close_matches(type_name, list(SOLVER_REGISTRY), n=1, cutoff=0.4)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown solver type {type_name!r} (known: {', '.join(SOLVER_REGISTRY)}){hint}") from None


def read_solver_param(path):
    """Read a solver file (prototxt, YAML or binary) into a SolverParameter."""
    return read_message(os.fspath(path), caffe_pb2.SolverParameter)


def get_solver(solver, **kwargs):
    """The solver a file or SolverParameter describes, of the class its ``type`` names."""
    if not isinstance(solver, caffe_pb2.SolverParameter):
        kwargs.setdefault("source", os.fspath(solver))
        solver = read_solver_param(solver)
    try:
        cls = solver_class(solver.type)
    except ConfigError as e:
        raise ConfigError(f"{kwargs['source']}: {e}" if kwargs.get("source") else str(e)) from None
    return cls(solver, **kwargs)


def _quiet_fp(method):
    """Run ``method`` without numpy's overflow/invalid/divide RuntimeWarnings: in the training loop
    a NaN or Inf is reported once, by the solver's own check (``_diverged``), naming the layer."""
    def quiet(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return method(*args, **kwargs)
    quiet.__name__, quiet.__doc__, quiet.__wrapped__ = method.__name__, method.__doc__, method
    return quiet


def _output_lines(net, names_values, loss_weights, label):
    """Caffe's ``    <label> output #i: name = v (* w = w*v loss)`` lines."""
    lines = []
    for i, (name, value) in enumerate(names_values):
        w = loss_weights.get(name, 0.0)
        extra = f" (* {fmt(w)} = {fmt(w * value)} loss)" if w else ""
        lines.append(f"    {label} output #{i}: {name} = {fmt(value)}{extra}")
    return lines


def snapshot_prefix(p, source=None, base_dir=None):
    """The prefix a solver built from ``p`` (read from the file ``source``) writes its snapshots to.

    Caffe's rule: no prefix means the solver file's name; a directory gets that name appended.
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    stem = os.path.splitext(os.path.basename(source))[0] if source else "solver"
    if not p.HasField("snapshot_prefix"):
        prefix = os.path.join(base_dir, stem)
    else:
        prefix = os.path.expanduser(p.snapshot_prefix)
        # A bare name ("model") is taken from the working directory, as Caffe does; a relative
        # path with a folder from the solver's folder unless only the working directory has it.
        if not os.path.isabs(prefix) and os.path.dirname(prefix):
            here = os.path.join(base_dir, prefix)
            parent_here = os.path.dirname(here) or "."
            parent_cwd = os.path.dirname(prefix) or "."
            prefix = prefix if (not os.path.isdir(parent_here) and os.path.isdir(parent_cwd)) else here
        if p.snapshot_prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
            prefix = os.path.join(prefix, stem)
    if not os.path.isabs(os.path.expanduser(p.snapshot_prefix)):
        rel = os.path.relpath(prefix)   # shorter names in the log and the state files
        prefix = rel if not rel.startswith(os.pardir) else prefix
    return prefix


class Solver:
    """Base of all solvers.  ``Solver(solver_file_or_param, base_dir=None, source=None)``.

    Relative paths to the nets and weights are opened from the working
    directory, as Caffe does, and from the solver file's directory when the
    file is only there.  A snapshot_prefix without a folder ("lenet") is taken from
    the working directory, as Caffe does; a relative one with a folder
    ("snapshots/lenet") from the solver file's directory unless only the working
    directory has that folder.
    """

    type_name = None

    def __init__(self, solver, base_dir=None, source=None):
        if isinstance(solver, caffe_pb2.SolverParameter):
            check_current(solver, source or "Solver")
            param = caffe_pb2.SolverParameter()   # the solver's own copy, as Caffe's param_
            param.CopyFrom(solver)
        else:
            source = os.fspath(solver)
            param = read_solver_param(source)
        self.source = source
        if base_dir is None:
            base_dir = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
        self.base_dir = base_dir
        self.param = param
        self.comm = nc_comm.world()
        self._check_param()
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(param).rstrip())
        self._set_snapshot_prefix()
        if param.snapshot and self.comm.is_root:
            self._check_snapshot_writable()
        if param.random_seed >= 0:
            # as Caffe: without a seed in the file, a seed set before (caffe.set_random_seed) still holds
            nc_random.set_random_seed(param.random_seed)
        elif self.comm.size > 1:
            # every rank draws the same shuffles (then deals them): one seed, rank 0's
            nc_random.set_random_seed(self.comm.bcast(int(np.random.SeedSequence().entropy % 2 ** 63)))
        self._net_files = {}              # net file -> its NetParameter, while the nets are made
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        del self._net_files
        for net in self.test_nets:
            # Caffe shares at every test; sharing now as well lets solver.test_nets[i] be used at any time.
            net.share_trained_layers_with(self.net)
        if self.comm.is_root:             # the other ranks take rank 0's weights (_init_distributed)
            for w in self.param.weights:
                self.copy_weights(w)
        self._init_distributed()
        log.info("Solver scaffolding done.")
        self.iter = 0
        self.current_step = 0
        self.learning_rate = 0.0
        self.smoothed_loss = 0.0
        self.losses = []
        self._loss_start_iter = 0
        self._keep_loss_window = False
        self.requested_early_exit = False
        self.test_scores = [[] for _ in self.test_nets]
        self.action_function = None
        self.listeners = []               # told what the log shows (solvers/listener.py)
        self.callbacks = []              # pycaffe's solver.add_callback: (on_start, on_gradients_ready)
        self.progress = None
        self._pre_test_state = None
        self._test_requests = []         # signals rank 0 took while testing with several ranks
        self._last_snapshot = None        # (iter, model file) of the last snapshot written
        self.best_snapshot = None
        self._init_monitors()
        self._train_loss_weights = self.net.blob_loss_weights
        self._test_loss_weights = [n.blob_loss_weights for n in self.test_nets]
        self.pre_solve()

    # -- data parallel ------------------------------------------------------------------
    def _init_distributed(self):
        """The flat gradient buffer and rank 0's initial weights on every rank (net/comm.py).

        The buffer's tail carries, per rank, the loss and whether its gradients
        are finite, then the ranks' snapshot and stop requests: one Allreduce per
        iteration averages the gradients and agrees on all of it.
        """
        n = self.comm.size
        self._grads = nc_comm.GradientBuffer(self.net, self.comm, extra=2 * n + 2)
        if n > 1:
            nc_comm.bcast_params(self.net, self.comm)
            for net in self.test_nets:
                net.share_trained_layers_with(self.net)
            log.info("Data parallel over %d ranks (%s): each rank reads its share of the data, the global "
                     "batch is %d x the batch size of the train net", n, self.comm.library or "MPI", n)

    def _reduce_gradients(self, loss, request):
        """Average the gradients over ranks; returns (global loss, ranks whose loss or gradients are not
        finite, the agreed request).  With one rank there is nothing to exchange or agree on."""
        n, r = self.comm.size, self.comm.rank
        finite = math.isfinite(loss) and self._gradients_finite()
        if n == 1:
            return loss, ([] if finite else [0]), request
        tail = self._grads.tail
        tail[:] = 0.0
        tail[r] = loss
        tail[n + r] = 0.0 if finite else 1.0
        if r != 0:
            # Rank 0's signals decide (as while testing): the launcher signals every rank, but a copy may
            # reach another rank an iteration earlier, and both copies would snapshot (SIGHUP: twice).
            request = signals.NONE
        tail[2 * n] = request in (signals.SNAPSHOT, signals.SNAPSHOT_STOP)
        tail[2 * n + 1] = request in (signals.STOP, signals.SNAPSHOT_STOP)
        self._grads.reduce()
        loss = float(np.sum(tail[:n], dtype=np.float64)) / n
        snap, stop = tail[2 * n] > 0, tail[2 * n + 1] > 0
        request = (signals.SNAPSHOT_STOP if snap and stop else signals.SNAPSHOT if snap
                   else signals.STOP if stop else signals.NONE)
        bad = [i for i in range(n) if tail[n + i] != 0]
        return loss, bad, request

    def _global_outputs(self, net):
        """The train net's outputs, averaged over ranks (what one process at the global batch shows)."""
        values = self._outputs(net)
        if self.comm.size == 1 or not values:
            return values
        sums = self.comm.allreduce_sum(np.array([v for _, v in values], dtype=np.float64))
        return [(name, float(s) / self.comm.size) for (name, _), s in zip(values, sums)]

    # -- configuration --------------------------------------------------------------
    def config_error(self, message):
        """A ConfigError about the solver's settings, naming the solver file when there is one."""
        return ConfigError(f"{self.source}: {message}" if self.source else message)

    def _check_param(self):
        p = self.param
        if p.average_loss < 1:
            raise self.config_error(f"average_loss must be >= 1 (got {p.average_loss})")
        if p.iter_size < 1:
            raise self.config_error(f"iter_size must be >= 1 (got {p.iter_size})")
        if p.regularization_type not in ("L1", "L2"):
            raise self.config_error(f"unknown regularization_type {p.regularization_type!r} (expected L2 or L1)")
        for name in ("max_iter", "display", "snapshot", "test_interval"):
            if getattr(p, name) < 0:
                raise self.config_error(f"{name} must be >= 0 (got {getattr(p, name)})")
        if any(t < 0 for t in p.test_iter):
            raise self.config_error(f"test_iter must be >= 0 (got {list(p.test_iter)})")
        lr_policy.check_policy(p, self.source)
        if p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            from numcaffe.net.hdf5 import require_h5py
            require_h5py("snapshot_format: HDF5")

    def _path(self, path):
        """A path from the solver: as Caffe opens it (working directory), else in the solver's directory."""
        return resolve_path(path, self.base_dir, must_exist=False)

    def _set_snapshot_prefix(self):
        self.snapshot_prefix = snapshot_prefix(self.param, self.source, self.base_dir)

    def _check_snapshot_writable(self):
        """Fail now, not at the first snapshot hours later (Caffe's CheckSnapshotWritePermissions)."""
        import tempfile
        directory = os.path.dirname(os.path.abspath(self.snapshot_prefix))
        try:
            os.makedirs(directory, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as e:
            raise ConfigError(f"cannot write snapshots with prefix {self.snapshot_prefix!r}: "
                              f"{e.strerror or e}; make sure {directory} is a writable directory") from None

    def _read_net_param(self, path):
        """A net file the solver names, read (and upgraded) once however many of its nets it makes."""
        full = self._path(path)
        if full not in self._net_files:
            self._net_files[full] = read_message(full, caffe_pb2.NetParameter)
        return self._net_files[full], os.path.dirname(os.path.abspath(full)), full

    def _make_net(self, net_param, phase, solver_state_msg, base_dir, source):
        """As Caffe: the net runs in ``phase``, overridden by its own state, then by the solver's."""
        from numcaffe.net.net import Net
        state = caffe_pb2.NetState(phase=phase)
        state.MergeFrom(net_param.state)
        if solver_state_msg is not None:
            state.MergeFrom(solver_state_msg)
        net = Net(net_param, state=state, base_dir=base_dir)
        net.source = source
        return net

    def _init_train_net(self):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if not given:
            raise self.config_error("the solver names no train net; give one of net, net_param, train_net, "
                                    "train_net_param")
        if len(given) > 1:
            raise self.config_error(f"the solver gives more than one train net ({', '.join(given)}); keep one")
        field = given[0]
        if field.endswith("_param"):
            log.info("Creating training net specified in %s.", field)
            net_param, base_dir, source = getattr(p, field), self.base_dir, f"<solver {field}>"
        else:
            log.info("Creating training net from %s file: %s", field, getattr(p, field))
            net_param, base_dir, source = self._read_net_param(getattr(p, field))
        train_state = p.train_state if p.HasField("train_state") else None
        return self._make_net(net_param, caffe_pb2.TRAIN, train_state, base_dir, source)

    def _init_test_nets(self):
        p = self.param
        generic = p.HasField("net_param") + p.HasField("net")
        num_specific = len(p.test_net_param) + len(p.test_net)
        if generic:
            if len(p.test_iter) < num_specific:
                raise self.config_error(f"test_iter must be given for each test net ({num_specific} test nets, "
                                        f"{len(p.test_iter)} test_iter)")
        elif len(p.test_iter) != num_specific:
            raise self.config_error(f"test_iter must be given once for each test net ({num_specific} test nets, "
                                    f"{len(p.test_iter)} test_iter)")
        count = num_specific + (len(p.test_iter) - num_specific)
        if len(p.test_state) and len(p.test_state) != count:
            raise self.config_error(f"test_state must be given once per test net or not at all "
                                    f"({count} test nets, {len(p.test_state)} test_state)")
        if count and p.test_interval <= 0:
            raise self.config_error(f"the solver has {count} test net(s) but no test_interval > 0")
        specs = []
        for tp in p.test_net_param:
            specs.append(("test_net_param", tp, self.base_dir, "<solver test_net_param>"))
        for tn in p.test_net:
            np_, base, src = self._read_net_param(tn)
            specs.append((f"test_net file: {tn}", np_, base, src))
        remaining = len(p.test_iter) - len(specs)
        if remaining > 0:
            if p.HasField("net_param"):
                specs += [("net_param", p.net_param, self.base_dir, "<solver net_param>")] * remaining
            else:
                np_, base, src = self._read_net_param(p.net)
                specs += [(f"net file: {p.net}", np_, base, src)] * remaining
        nets = []
        for i, (what, net_param, base, src) in enumerate(specs):
            log.info("Creating test net (#%d) specified by %s", i, what)
            state = p.test_state[i] if len(p.test_state) else None
            nets.append(self._make_net(net_param, caffe_pb2.TEST, state, base, src))
            nets[-1].debug_info = p.debug_info
        return nets

    def _init_monitors(self):
        p = self.param
        self.plateau = None
        self.early_stop = None
        if p.lr_policy == "plateau":
            if not p.plateau_monitor:
                raise self.config_error("lr_policy 'plateau' needs plateau_monitor: the name of a test net output")
            self._check_monitor("plateau", p.plateau_monitor, p.plateau_test_net)
            self.plateau = lr_policy.PlateauState(p.plateau_mode, p.plateau_threshold, p.plateau_patience)
        if p.early_stop_monitor:
            self._check_monitor("early_stop", p.early_stop_monitor, p.early_stop_test_net)
            if p.early_stop_patience < 0:
                raise self.config_error(f"early_stop_patience must be >= 0 (got {p.early_stop_patience})")
            self.early_stop = lr_policy.MonitorState(p.early_stop_mode)

    def _check_monitor(self, what, name, net_id):
        if not 0 <= net_id < len(self.test_nets):
            raise self.config_error(f"{what}_test_net is {net_id} but the solver has {len(self.test_nets)} test net(s)")
        outputs = self.test_nets[net_id].outputs
        if name not in outputs:
            raise self.config_error(f"{what}_monitor {name!r} is not an output of test net #{net_id} "
                                    f"(its outputs: {', '.join(outputs) or 'none'})")

    def copy_weights(self, weights):
        """Initialize the train and test nets from weights files (comma-separated), by layer name."""
        for name in str(weights).split(","):
            name = name.strip()
            if not name:
                continue
            path = self._path(name) if self.source else name
            log.info("Finetuning from %s", path)
            self.net.copy_from(path)
            for net in self.test_nets:
                net.copy_from(path)

    # -- subclass hooks ------------------------------------------------------------------
    def pre_solve(self):
        """Create the history arrays (SGDSolver::PreSolve)."""
        self.history = []

    def apply_update(self):
        raise NotImplementedError

    # -- the loop -----------------------------------------------------------------------
    def get_requested_action(self):
        if self.action_function is None:
            return signals.NONE
        return self.action_function()

    def set_action_function(self, fn):
        """``fn()`` returns 'none', 'stop', 'snapshot' or 'snapshot_stop' (see solvers/signals.py)."""
        self.action_function = fn

    def add_listener(self, listener):
        """Tell ``listener`` the numbers the log shows, as it shows them (solvers/listener.py)."""
        self.listeners.append(listener)
        return listener

    def add_tensorboard(self, logdir, histograms=0):
        """Write TensorBoard event files into ``logdir`` (solvers/tensorboard.py); returns the writer."""
        from numcaffe.solvers.tensorboard import TensorBoardWriter
        return self.add_listener(TensorBoardWriter(logdir, histograms=histograms))

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self.losses[idx]) / average_loss
            self.losses[idx] = loss

    @_quiet_fp
    def step(self, iters):
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        if self._keep_loss_window:
            # Continue the window of the run that was snapshotted (restore()).
            self._keep_loss_window = False
        else:
            self.losses = []
            self.smoothed_loss = 0.0
            self._loss_start_iter = self.iter
        start_iter = self._loss_start_iter
        self.learning_rate = 0.0
        timer = time.perf_counter()
        iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.ClearParamDiffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = p.display and self.iter % p.display == 0
            self.net.debug_info = bool(display and p.debug_info)
            for on_start, _ in self.callbacks:
                on_start()
            loss = 0.0
            for _ in range(p.iter_size):
                loss += self.net.ForwardBackward()
            loss /= p.iter_size
            request = self.get_requested_action()
            loss, bad_ranks, request = self._reduce_gradients(loss, request)
            if bad_ranks:
                self._diverged(loss, bad_ranks)
            self._update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iterations_last) / (lapse if lapse else 1.0)
                log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, fmt(per_s), fmt(lapse),
                         p.display, fmt(self.smoothed_loss))
                timer = time.perf_counter()
                iterations_last = self.iter
                outputs = self._global_outputs(self.net)
                for line in _output_lines(self.net, outputs, self._train_loss_weights, "Train net"):
                    log.info("%s", line)
                notify(self.listeners, "on_display", self, self.smoothed_loss, outputs, per_s)
            notify(self.listeners, "on_gradients_ready", self)
            for _, on_gradients_ready in self.callbacks:
                on_gradients_ready()
            self.apply_update()
            self.iter += 1
            if self.progress is not None:
                self.progress.set_postfix(loss=f"{self.smoothed_loss:.4g}", refresh=False)
                self.progress.update(1)
            if (p.snapshot and self.iter % p.snapshot == 0) or request in (signals.SNAPSHOT, signals.SNAPSHOT_STOP):
                self.snapshot()
            if request in (signals.STOP, signals.SNAPSHOT_STOP):
                self.requested_early_exit = True
                break

    def _gradients_finite(self):
        """Whether every parameter gradient is finite.

        One BLAS dot product per parameter blob (d . d is NaN or inf if any element
        is; 4x cheaper than a float64 sum on LeNet); only if it overflows does the
        element-by-element check decide.
        """
        for blob in self.net.learnable_params:
            d = blob.flat_diff
            if not np.isfinite(np.dot(d, d)) and not np.isfinite(d).all():
                return False
        return True

    def _diverged(self, loss, bad_ranks=(0,)):
        """A NaN or Inf in the forward or backward pass: snapshot the weights as they were, say where, stop.

        The snapshot holds the weights and solver history from just before the
        failing update (nothing has been applied yet); its data position is the
        batch after the one that failed.  With several ranks, the first rank
        that failed looks for the layer, every rank stops, and the message
        (printed by rank 0) names that rank.
        """
        first = bad_ranks[0]
        n = self.comm.size
        where = self.net.locate_nonfinite() if self.comm.rank == first else None
        if n > 1:
            where = self.comm.bcast(where, root=first)
            loss = float(self._grads.tail[first])
        detail = (f"the first non-finite value is the {where[2]} of layer {where[1]!r} ({where[0]} pass)"
                  if where else "the loss or a parameter gradient is not finite")
        try:
            saved = f"; the state just before it is saved in {self.snapshot()}"
        except Exception as e:  # the message about the NaN matters more than a failed snapshot
            saved = f"; the snapshot before it could not be written ({e})"
        on = f" on rank {first}" + (f" (and {len(bad_ranks) - 1} more)" if len(bad_ranks) > 1 else "") \
            if n > 1 else ""
        err = NumericalError(f"iteration {self.iter}{on}: {detail} (training loss {loss}){saved}; lower "
                             f"base_lr (now {fmt(self.param.base_lr)}) or set clip_gradients")
        err.all_ranks = True     # every rank raises it: rank 0 alone reports it
        raise err

    @staticmethod
    def _outputs(net):
        out = []
        for name in net.outputs:
            for v in net.blobs[name].data.ravel():
                out.append((name, float(v)))
        return out

    def solve(self, resume_file=None, progress=None):
        """Train to ``max_iter`` (Caffe's Solver::Solve); ``progress``: show a bar (default: if stderr is a TTY)."""
        from numcaffe.solvers.progress import progress_bar
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        with progress_bar(p.max_iter, self.iter, progress) as bar:
            self.progress = bar
            try:
                self.step(p.max_iter - self.iter)
            finally:
                self.progress = None
        g = self._grads
        if g.calls:
            log.info("Allreduce of the gradients (%d floats, %.2f MB): %.3f ms per iteration over %d iterations "
                     "(waiting for the slowest rank included)", g.flat.size, g.flat.nbytes / 1e6,
                     1e3 * g.seconds / g.calls, g.calls)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0) \
                and (self._last_snapshot or (None,))[0] != self.iter:
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.Forward()
            if self.comm.size > 1:
                loss = float(self.comm.allreduce_sum(np.array([loss]))[0]) / self.comm.size
            self._update_smoothed_loss(loss, self._loss_start_iter, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
            notify(self.listeners, "on_display", self, self.smoothed_loss, [], None)
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    # -- testing ----------------------------------------------------------------------------
    def test_all(self):
        """Run every test net (Caffe's TestAll); then plateau and early stopping look at the results."""
        self._pre_test_state = self._capture_state()
        try:
            if self.comm.size > 1:
                return self._test_all_ranks()
            for i in range(len(self.test_nets)):
                if self.requested_early_exit:
                    break
                self.test(i)
            if self.requested_early_exit:
                # Interrupted: go back to the state before the test, so a snapshot taken
                # later resumes into the very same test.
                self._restore_extra_state(self._pre_test_state, nets=False)
                return
            self._watch_monitors()
        finally:
            self._pre_test_state = None

    def _test_all_ranks(self):
        """With several ranks, rank 0 alone tests (as Caffe's root solver) on the whole test set, so the
        figures are the 1-process ones; the others wait for its scores and the requests that came while
        it tested, then every rank runs the same monitors and takes the same snapshots."""
        root = self.comm.is_root
        self._test_requests = []
        if root:
            for i in range(len(self.test_nets)):
                if self.requested_early_exit:
                    break
                self.test(i)
        scores, stop, requests = self.comm.bcast((self.test_scores, self.requested_early_exit,
                                                  self._test_requests) if root else None)
        if not root:
            self.test_scores = [[(n, float(v)) for n, v in s] for s in scores]
            if requests:
                self.get_requested_action()    # the launcher sent this rank the same signal: taken
        self.requested_early_exit = stop
        if any(r in (signals.SNAPSHOT, signals.SNAPSHOT_STOP) for r in requests):
            self.snapshot()                    # records the state from before the test
        if self.requested_early_exit:
            self._restore_extra_state(self._pre_test_state, nets=False)
            return
        self._watch_monitors()

    def test(self, test_net_id=0):
        """Run test net ``test_net_id`` for its ``test_iter`` batches; log and return the mean outputs."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        net.share_trained_layers_with(self.net)
        n = p.test_iter[test_net_id]
        names, sums = [], None
        loss = 0.0
        for i in range(n):
            request = self.get_requested_action()
            while request != signals.NONE:
                if self.comm.size > 1:
                    self._test_requests.append(request)   # snapshots are taken by all ranks after the test
                elif request in (signals.SNAPSHOT, signals.SNAPSHOT_STOP):
                    self.snapshot()
                if request in (signals.STOP, signals.SNAPSHOT_STOP):
                    self.requested_early_exit = True
                request = self.get_requested_action()
            if self.requested_early_exit:
                break
            iter_loss = net.Forward()
            if p.test_compute_loss:
                loss += iter_loss
            values = self._outputs(net)
            if sums is None:
                names = [name for name, _ in values]
                sums = np.array([v for _, v in values], dtype=np.float64)
            else:
                sums += [v for _, v in values]
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return None
        if p.test_compute_loss and n:
            log.info("Test loss: %s", fmt(loss / n))
        means = [(name, float(s) / n) for name, s in zip(names, sums if sums is not None else [])]
        self.test_scores[test_net_id] = means
        for line in _output_lines(net, means, self._test_loss_weights[test_net_id], "Test net"):
            log.info("%s", line)
        notify(self.listeners, "on_test", self, test_net_id, means)
        return dict(means)

    def _score(self, net_id, name):
        for n, v in self.test_scores[net_id]:
            if n == name:
                return v
        return None

    def _watch_monitors(self):
        p = self.param
        if self.plateau is not None:
            value = self._score(p.plateau_test_net, p.plateau_monitor)
            if value is not None and self.plateau.observe(value, self.iter) == "reduced":
                log.info("Plateau: %s has not improved for %d tests (best %s at iteration %s); "
                         "learning rate multiplied by %s (reduction %d)", p.plateau_monitor,
                         p.plateau_patience, fmt(self.plateau.best), self.plateau.best_iter, fmt(p.gamma),
                         self.plateau.steps)
        if self.early_stop is not None:
            value = self._score(p.early_stop_test_net, p.early_stop_monitor)
            if value is None:
                return
            if self.early_stop.observe(value, self.iter):
                log.info("Best %s so far: %s at iteration %d", p.early_stop_monitor, fmt(value), self.iter)
                self.snapshot(best=True)
            elif p.early_stop_patience and self.early_stop.wait >= p.early_stop_patience:
                log.info("Early stopping: %s has not improved for %d tests (best %s at iteration %s)",
                         p.early_stop_monitor, self.early_stop.wait, fmt(self.early_stop.best),
                         self.early_stop.best_iter)
                self.requested_early_exit = True

    # -- snapshots --------------------------------------------------------------------------------
    def snapshot_filename(self, extension, best=False):
        tag = "best" if best else f"iter_{self.iter}"
        return f"{self.snapshot_prefix}_{tag}{extension}"

    def snapshot(self, best=False):
        """Write PREFIX_iter_N.caffemodel and PREFIX_iter_N.solverstate (or their HDF5 forms)."""
        p = self.param
        hdf5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        # During a test the state to record is the one from before the test (see test_all).
        extra = self._pre_test_state if self._pre_test_state is not None else self._capture_state()
        if self.comm.size > 1:
            # every rank calls this; rank 0 writes, with each rank's data positions and random states
            nets = self.comm.gather(extra["train_net"])
            if not self.comm.is_root:
                return self._note_snapshot(best, self.snapshot_filename(".caffemodel.h5" if hdf5 else
                                                                         ".caffemodel", best),
                                           self.snapshot_filename(".solverstate.h5" if hdf5 else
                                                                  ".solverstate", best))
            extra = dict(extra, ranks={"size": self.comm.size, "train_nets": nets})
        directory = os.path.dirname(os.path.abspath(self.snapshot_prefix))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the snapshot directory {directory}: {e.strerror or e}") from None
        try:
            if hdf5:
                model = self.snapshot_filename(".caffemodel.h5", best)
                log.info("Snapshotting to HDF5 file %s", model)
                from numcaffe.net.hdf5 import save_net_hdf5
                save_net_hdf5(self.net, model, write_diff=p.snapshot_diff)
                state_file = self.snapshot_filename(".solverstate.h5", best)
                log.info("Snapshotting solver state to HDF5 file %s", state_file)
            else:
                model = self.snapshot_filename(".caffemodel", best)
                log.info("Snapshotting to binary proto file %s", model)
                from numcaffe.net.io import atomic_write
                atomic_write(model, self.net.to_proto(write_diff=p.snapshot_diff).SerializeToString())
                state_file = self.snapshot_filename(".solverstate", best)
                log.info("Snapshotting solver state to binary proto file %s", state_file)
            solver_state.write_state(state_file, hdf5, it=self.iter, learned_net=model,
                                     history=self.history_arrays(), current_step=self.current_step, extra=extra,
                                     learned_net_sha256=solver_state.file_sha256(model))
        except OSError as e:
            raise ConfigError(f"cannot write snapshot {getattr(e, 'filename', None) or self.snapshot_prefix}: "
                              f"{e.strerror or e}") from None
        return self._note_snapshot(best, model, state_file)

    def _note_snapshot(self, best, model, state_file):
        if best:
            self.best_snapshot = (self.iter, model, state_file)
        else:
            self._last_snapshot = (self.iter, model, state_file)
        return state_file

    def history_arrays(self):
        return list(self.history)

    # -- the state Caffe does not record -----------------------------------------------------
    def _capture_state(self):
        return {
            "type": self.type_name,
            "iter": self.iter,
            "train_net": self.net.get_state(),
            "test_nets": [n.get_state() for n in self.test_nets],
            "smoothed_loss": {"losses": list(self.losses), "value": self.smoothed_loss,
                              "start_iter": self._loss_start_iter},
            "plateau": self.plateau.get_state() if self.plateau is not None else None,
            "early_stop": self.early_stop.get_state() if self.early_stop is not None else None,
            "test_scores": [[list(x) for x in s] for s in self.test_scores],
        }

    def _restore_extra_state(self, extra, nets=True):
        if nets:
            self.net.set_state(extra.get("train_net", {}))
            sl = extra.get("smoothed_loss") or {}
            self.losses = [float(x) for x in sl.get("losses", [])]
            self.smoothed_loss = float(sl.get("value", 0.0))
            self._loss_start_iter = int(sl.get("start_iter", self.iter))
            self._keep_loss_window = True
        for net, st in zip(self.test_nets, extra.get("test_nets", [])):
            net.set_state(st)
        if self.plateau is not None and extra.get("plateau"):
            self.plateau.set_state(extra["plateau"])
        if self.early_stop is not None and extra.get("early_stop"):
            self.early_stop.set_state(extra["early_stop"])
        scores = extra.get("test_scores")
        if scores and len(scores) == len(self.test_scores):
            self.test_scores = [[(n, float(v)) for n, v in s] for s in scores]

    # -- restoring ------------------------------------------------------------------------------
    def _learned_net_path(self, learned_net, state_path):
        """Caffe opens learned_net as written; if it is not there, look next to the state file."""
        if os.path.isabs(learned_net) or os.path.exists(learned_net):
            if os.path.exists(learned_net):
                return learned_net
        state_dir = os.path.dirname(os.path.abspath(state_path))
        for cand in (os.path.join(state_dir, learned_net), os.path.join(state_dir, os.path.basename(learned_net))):
            if os.path.exists(cand):
                return cand
        raise ModelFileError(f"{state_path}: its weights file {learned_net!r} was not found (looked in the "
                             f"working directory and in {state_dir})")

    def restore(self, state_file):
        """Continue from a .solverstate (or .solverstate.h5): weights, history, iteration, and all the rest."""
        state_file = os.fspath(state_file)
        comm = self.comm
        # with several ranks, rank 0 reads the files and hands them on (no shared file system needed)
        st = solver_state.read_state(state_file, self.history_names()) if comm.is_root else None
        st = comm.bcast(st) if comm.size > 1 else st
        extra = st.extra
        if extra is not None and extra.get("type") and extra["type"] != self.type_name:
            raise ModelFileError(f"{state_file}: was written by a solver of type {extra['type']}; this solver's "
                                 f"type is {self.type_name}")
        self.check_history(st)            # before anything changes: a bad state leaves the solver as it was
        if st.learned_net:
            if comm.is_root:
                model = self._learned_net_path(st.learned_net, state_file)
                solver_state.check_learned_net(st, model)      # the weights written with this state, intact
                self.net.copy_from(model)
            nc_comm.bcast_params(self.net, comm)
        if extra is not None:
            extra = self._this_ranks_state(extra, state_file)
        self.iter = st.iter
        self.current_step = st.current_step
        self.restore_history(st)
        if extra is not None:
            self._restore_extra_state(extra)
        else:
            log.info("%s has no numcaffe state (a Caffe solver state): data positions and random "
                     "states start afresh", state_file)
        self.requested_early_exit = False
        return st

    def _this_ranks_state(self, extra, state_file):
        """The state of this rank's train net: its own when the run had as many ranks, else rank 0's (the
        data layers then start this rank's share from rank 0's position, so the data order changes)."""
        ranks = extra.get("ranks") or {"size": 1}
        n = self.comm.size
        if ranks["size"] == n and "train_nets" in ranks:
            return dict(extra, train_net=ranks["train_nets"][self.comm.rank])
        if ranks["size"] != n:
            log.warning("%s was written by a run of %d rank(s) and this run has %d: training continues, "
                        "but the order of the data changes (each rank starts its share at rank 0's position)",
                        state_file, ranks["size"], n)
        return extra

    def check_history(self, st):
        expected = self.history_arrays()
        if len(st.history) != len(expected):
            raise ModelFileError(f"{st.path}: incorrect length of history blobs: the file has {len(st.history)}, "
                                 f"the {self.type_name} solver for this net needs {len(expected)}")
        names = self.history_names()
        for i, (dst, src) in enumerate(zip(expected, st.history)):
            if dst.size != src.size:
                raise ModelFileError(f"{st.path}: history blob {i} ({names[i]}) has shape {tuple(src.shape)}, "
                                     f"the net's parameter has shape {dst.shape}")

    def restore_history(self, st):
        log.info("%sSolver: restoring history", self.type_name)
        for dst, src in zip(self.history_arrays(), st.history):
            dst[...] = src.reshape(dst.shape)

    def history_names(self):
        return [f"history {i}" for i in range(len(self.history_arrays()))]

    # -- pycaffe's conveniences ------------------------------------------------------------------
    @property
    def type(self):
        return self.type_name

    def add_callback(self, on_start, on_gradients_ready=None):
        """pycaffe's ``solver.add_callback``: ``on_start()`` before every iteration's passes and
        ``on_gradients_ready()`` after them (the gradients already averaged over ranks), before the update.
        One object with both methods (a ``caffe.NCCL``) may be given instead."""
        if on_gradients_ready is None:
            obj = on_start
            on_start, on_gradients_ready = obj.on_start, obj.on_gradients_ready
        self.callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net):
        """pycaffe's ``solver.share_weights(net)``: ``net`` computes with this solver's trained weights."""
        net.share_trained_layers_with(self.net)

    def __repr__(self):
        return f"{type(self).__name__}(net={self.net.name!r}, iter={self.iter})"
