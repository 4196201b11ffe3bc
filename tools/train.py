"""``numcaffe train``: train or fine-tune a net, as Caffe's ``caffe train``.

    numcaffe train --solver S [--snapshot X.solverstate | --weights A.caffemodel[,B.caffemodel]]
                   [--sigint_effect snapshot_stop] [--sighup_effect snapshot] [--level N] [--stage a,b]

Flags are Caffe's (``-solver x`` and ``--solver=x`` work too).  ``--snapshot``
resumes from a solver state; ``--weights`` initialises the train and test nets
from trained weights by layer name (a shape mismatch is an error naming the
layer and both shapes).  Ctrl-C writes a snapshot and stops by default (Caffe's
default is to stop, and then ``snapshot_after_train`` snapshots); SIGHUP
snapshots and goes on.  The effects are ``stop``, ``snapshot``,
``snapshot_stop`` and ``none``.  numcaffe runs on the CPU: ``--gpu`` is
accepted and ignored with a warning.
"""
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
    p.add_argument("--sighup_effect", default="snapshot",
                   help="what SIGHUP does: snapshot (default), stop, snapshot_stop or none")
    p.add_argument("--level", type=int, default=0, help="the train net's state level")
    p.add_argument("--stage", default="", help="the train net's state stages, separated by ','")
    p.add_argument("--gpu", default=None, help="accepted for Caffe compatibility; numcaffe runs on the CPU")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar with ETA: auto (when stderr is a terminal and tqdm is installed)")


def run(args):
    from numcaffe.net.errors import ConfigError
    from numcaffe.net.log import get_logger
    from numcaffe.solvers import get_solver, read_solver_param
    from numcaffe.solvers.signals import SignalHandler, parse_action

    log = get_logger("numcaffe.train")
    if not args.solver:
        raise ConfigError("need a solver definition to train (--solver)")
    if args.snapshot and args.weights:
        raise ConfigError("give a snapshot to resume training or weights to finetune but not both")
    sigint = parse_action(args.sigint_effect, "--sigint_effect")
    sighup = parse_action(args.sighup_effect, "--sighup_effect")
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
    log.info("Use CPU.")
    progress = {"auto": None, "on": True, "off": False}[args.progress]
    with SignalHandler(sigint, sighup) as handler:
        solver = get_solver(param, source=args.solver)
        solver.set_action_function(handler.action)
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        log.info("Starting Optimization")
        solver.solve(progress=progress)
    log.info("Optimization Done.")
    return 0
