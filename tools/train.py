"""``numcaffe train``: train or fine-tune a net, as Caffe's ``caffe train``.

    numcaffe train --solver S [--snapshot X.solverstate | --weights A.caffemodel[,B.caffemodel]]
                   [--sigint_effect snapshot_stop] [--sigterm_effect snapshot_stop] [--sighup_effect snapshot]
                   [--level N] [--stage a,b]
                   [--tensorboard DIR [--tensorboard-histograms N]] [--plot curves.png]

Flags are Caffe's (``-solver x`` and ``--solver=x`` work too).  ``--snapshot``
resumes from a solver state; ``--weights`` initialises the train and test nets
from trained weights by layer name (a shape mismatch is an error naming the
layer and both shapes).  Ctrl-C writes a snapshot and stops by default (Caffe's
default is to stop, and then ``snapshot_after_train`` snapshots), and so does
SIGTERM (which Caffe leaves deadly); SIGHUP snapshots and goes on.  The effects
are ``stop``, ``snapshot``, ``snapshot_stop`` and ``none``.  One training at a
time writes a snapshot prefix: a second one is refused, naming the first
(solvers/snapshot_lock.py).  numcaffe runs on the CPU: ``--gpu`` is
accepted and ignored with a warning.  ``--tensorboard DIR`` also writes
TensorBoard event files (solvers/tensorboard.py); a run resumed into the same
directory continues the same curves.
"""
import logging
import os

COMMAND = "train"
HELP = "train or fine-tune a net from a solver definition (Caffe's `caffe train`)"


def add_arguments(p):
    p.add_argument("--solver", default="", help="the solver definition (prototxt or YAML)")
    p.add_argument("--snapshot", default="",
                   help="a .solverstate (or .solverstate.h5) to resume training from")
    p.add_argument("--weights", default="",
                   help="trained weights to initialise fine-tuning, separated by ','; not with --snapshot")
    p.add_argument("--sigint_effect", default="snapshot_stop",
                   help="what Ctrl-C (SIGINT) does: snapshot_stop (default), stop, snapshot or none")
    p.add_argument("--sigterm_effect", default="snapshot_stop",
                   help="what SIGTERM (kill, schedulers, containers) does: snapshot_stop (default), stop, "
                        "snapshot or none (ignore it)")
    p.add_argument("--sighup_effect", default="snapshot",
                   help="what SIGHUP does: snapshot (default), stop, snapshot_stop or none")
    p.add_argument("--level", type=int, default=0, help="the train net's state level")
    p.add_argument("--stage", default="", help="the train net's state stages, separated by ','")
    p.add_argument("--gpu", default=None, help="accepted for Caffe compatibility; numcaffe runs on the CPU")
    p.add_argument("--iterations", type=int, default=None,
                   help="accepted for Caffe compatibility (a test/time flag); train runs to the solver's max_iter")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar with ETA: auto (when stderr is a terminal and tqdm is installed)")
    p.add_argument("--procs", type=int, default=None, metavar="N",
                   help="train data-parallel on N >= 1 processes of this machine: numcaffe starts the "
                        "mpiexec that pip installed (needs numcaffe[mpi]); see docs/mpi.md")
    p.add_argument("--log_all_ranks", action="store_true",
                   help="with several MPI ranks, every rank logs (by default only rank 0 does)")
    p.add_argument("--plot", default="",
                   help="also draw the training curves into this .png/.svg after every test and at the end, "
                        "so a long run can be watched (needs matplotlib)")
    p.add_argument("--tensorboard", default="", metavar="DIR",
                   help="write TensorBoard event files into DIR: the log's numbers, the learning rate, "
                        "iter/s and the net's graph (needs tensorboardX); resuming into DIR continues the curves")
    p.add_argument("--tensorboard-histograms", "--tensorboard_histograms", type=int, default=0, metavar="N",
                   help="with --tensorboard: parameter and gradient histograms every N iterations (default 0: none)")


class LivePlot(logging.Handler):
    """Keeps the run's log lines and redraws the training curves after every test (and at the end)."""

    def __init__(self, out):
        super().__init__()
        from numcaffe.net.log import GlogFormatter
        from numcaffe.tools.plot import check_format
        check_format(out)   # before training, not at the first test
        self.out = out
        self.lines = []
        self.setFormatter(GlogFormatter(with_year=True))

    def emit(self, record):
        self.lines.append(self.format(record))
        msg = record.getMessage()
        if msg.startswith("    Test net output #") or msg == "Optimization Done.":
            self.draw()

    def draw(self):
        from numcaffe.tools.parse_log import parse_lines
        from numcaffe.tools.plot import plot_tables
        tables = parse_lines(self.lines, path=self.out)
        if tables.train.rows or tables.test.rows:
            plot_tables([tables], self.out)


def run(args):
    from numcaffe.net.errors import ConfigError
    from numcaffe.net.log import get_logger
    from numcaffe.solvers import get_solver, read_solver_param
    from numcaffe.solvers.signals import SignalHandler, parse_action
    from numcaffe.solvers.snapshot_lock import hold_prefix
    from numcaffe.solvers.solver import snapshot_prefix
    from numcaffe.tools.procs import mark_ready

    from numcaffe.net import comm as nc_comm

    if args.log_all_ranks:
        os.environ["NUMCAFFE_LOG_ALL_RANKS"] = "1"
    log = get_logger("numcaffe.train")
    if args.procs is not None and args.procs < 1:
        raise ConfigError(f"--procs takes a number of processes N >= 1 (got {args.procs})")
    if args.procs is not None and args.procs > 1:
        if nc_comm.launcher_size() > 1:
            raise ConfigError("--procs starts its own mpiexec; under an MPI launcher, leave --procs out")
        from numcaffe.tools.procs import cores, launch
        if not args.solver:
            raise ConfigError("need a solver definition to train (--solver)")
        if args.tensorboard:  # rank 0 will write there: a directory it cannot write fails now, in one line
            from numcaffe.solvers.tensorboard import TensorBoardWriter
            TensorBoardWriter(args.tensorboard, histograms=args.tensorboard_histograms)
        elif args.tensorboard_histograms:
            raise ConfigError("--tensorboard-histograms needs --tensorboard DIR")
        if args.plot:         # rank 0 will draw it: a format matplotlib cannot write fails now, in one line
            from numcaffe.tools.plot import check_format
            check_format(args.plot)
        if args.procs > cores():
            log.warning("--procs %d: more processes than the %d core(s) this machine gives numcaffe; they take turns "
                        "(oversubscribed), which works but is usually slower than --procs %d", args.procs, cores(),
                        cores())
        return launch(args.procs, getattr(args, "argv", None) or ["train", "--solver", args.solver], log)
    comm = nc_comm.world()    # under a launcher: which rank this is (and no mpi4py, no N separate runs)
    if not args.solver:
        raise ConfigError("need a solver definition to train (--solver)")
    if args.snapshot and args.weights:
        raise ConfigError("give a snapshot to resume training or weights to finetune but not both")
    sigint = parse_action(args.sigint_effect, "--sigint_effect")
    sigterm = parse_action(args.sigterm_effect, "--sigterm_effect")
    sighup = parse_action(args.sighup_effect, "--sighup_effect")
    tensorboard = None
    if args.tensorboard:
        if comm.is_root:      # with several MPI ranks, one writer: rank 0, which logs
            from numcaffe.solvers.tensorboard import TensorBoardWriter
            tensorboard = TensorBoardWriter(args.tensorboard, histograms=args.tensorboard_histograms)
    elif args.tensorboard_histograms:
        raise ConfigError("--tensorboard-histograms needs --tensorboard DIR")
    param = read_solver_param(args.solver)
    param.train_state.level = args.level
    param.train_state.stage.extend(s for s in args.stage.split(",") if s)
    if args.snapshot:
        param.ClearField("weights")
    elif args.weights:
        param.ClearField("weights")
        param.weights.append(",".join(os.path.abspath(w.strip()) for w in args.weights.split(",") if w.strip()))
    if args.gpu is not None:
        log.warning("--gpu %s ignored: numcaffe runs on the CPU", args.gpu)
    elif param.solver_mode == param.GPU:  # Caffe's choice when --gpu is not given
        log.warning("solver_mode: GPU (device_id %d) ignored: numcaffe runs on the CPU", param.device_id)
    log.info("Use CPU.")
    if args.iterations is not None:
        log.warning("--iterations %d ignored: train runs to the solver's max_iter (%d)", args.iterations,
                    param.max_iter)
    progress = {"auto": None, "on": True, "off": False}[args.progress] if comm.is_root else False
    if args.plot and not comm.is_root:
        args.plot = ""        # rank 0 draws
    if args.plot:
        plot = LivePlot(args.plot)
        get_logger().addHandler(plot)
    prefix = snapshot_prefix(param, args.solver)
    with hold_prefix(prefix, comm), SignalHandler(sigint, sighup, launcher=comm.size > 1,
                                                   sigterm_effect=sigterm) as handler:
        mark_ready(comm.rank)        # --procs: the launcher may forward signals to this rank now
        solver = get_solver(param, source=args.solver)
        solver.set_action_function(handler.action)
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        if tensorboard is not None:
            solver.add_listener(tensorboard)
            log.info("TensorBoard event files in %s (view: tensorboard --logdir %s)", args.tensorboard,
                     args.tensorboard)
        if not solver.net.layers:
            raise ConfigError(f"{args.solver}: its train net has no layers in the TRAIN phase; nothing to train")
        log.info("Starting Optimization")
        try:
            solver.solve(progress=progress)
        finally:
            if tensorboard is not None:
                tensorboard.close()
    log.info("Optimization Done.")
    if args.plot:
        get_logger().removeHandler(plot)
        log.info("Training curves in %s", args.plot)
    return 0
