"""The ``numcaffe`` command line: ``numcaffe <command> [flags]``.

Each command lives in its own module of this package and declares::

    COMMAND = "train"                 # the subcommand name
    HELP = "one line for --help"
    def add_arguments(parser): ...    # argparse flags, Caffe's names
    def run(args): ...                # returns the exit status (0 or None for success)

The modules are found by walking the package, so adding a command touches no
other file.  Caffe's gflags spellings work too: ``-solver x``, ``-solver=x``
and ``--solver=x`` all mean ``--solver x``.  Flags are never abbreviated
(argparse would take ``--proc 2`` for ``--procs 2``, and silently for another
flag once a longer one is added): a flag must be written out in full.

Every failure caused by the user's input is a :class:`NumcaffeError`: it is
printed as one line, ``numcaffe: error: ...``, with exit status 1 and no
traceback; ``--debug`` shows the traceback.
"""
import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading

import numcaffe.tools as _pkg
from numcaffe.net import threads
from numcaffe.net.errors import NumcaffeError, Terminated


def _commands():
    found = {}
    for info in pkgutil.iter_modules(_pkg.__path__):
        if info.name in ("cli",) or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"numcaffe.tools.{info.name}")
        name = getattr(mod, "COMMAND", None)
        if name:
            found[name] = mod
    return dict(sorted(found.items()))


class _Parser(argparse.ArgumentParser):
    """Flags are never abbreviated: ``--proc 2`` is an error, not ``--procs 2`` (nor a future ``--procfile``)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message):
        # One line, as every other failure: the usage is one `--help` away.
        print(f"numcaffe: error: {message}{_abbreviated(self, message)} (see `{self.prog} --help`)",
              file=sys.stderr)
        sys.exit(1)


def _long_options(parser):
    """Every ``--flag`` of ``parser`` and of its subcommands' parsers."""
    found = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                found |= _long_options(p)
    return found


def _abbreviated(parser, message):
    """For ``unrecognized arguments: --proc 2``: which flags ``--proc`` abbreviates, as a hint."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    options = _long_options(parser)
    hints = []
    for word in message.split(":", 1)[1].split():
        typed = word.split("=", 1)[0]
        name = "--" + typed.lstrip("-")
        full = sorted(o for o in options if o.startswith(name) and o != name)
        if typed.startswith("-") and len(name) > 3 and full:
            hints.append(f"{typed} is not {' or '.join(full)}")
    return f"; flags are not abbreviated: {', '.join(hints)}" if hints else ""


def _threads(text):
    try:
        return threads.parse(text, "--threads")
    except NumcaffeError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--threads ")) from None


def build_parser(commands=None):
    commands = _commands() if commands is None else commands
    parser = _Parser(prog="numcaffe", description="numcaffe: Caffe, done right in Python. "
                     "Train, test and time nets defined in prototxt or YAML.")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, mod in commands.items():
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", None))
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show a traceback on errors")
        p.add_argument("--threads", type=_threads, default=None, metavar="N",
                       help="threads for Numba's loops and BLAS together (default: NUMCAFFE_THREADS, "
                            "else OMP/OPENBLAS/NUMBA_NUM_THREADS, else every core; docs/threads.md)")
        mod.add_arguments(p)
    return parser


def _gflags_to_argparse(argv, parser):
    """Accept Caffe's single-dash long flags (``-solver x``, ``-solver=x``)."""
    long_opts = _long_options(parser)
    out = []
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and len(a) > 2:
            name = a.split("=", 1)[0]
            if "-" + name in long_opts:
                a = "-" + a
        out.append(a)
    return out


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv=None):
    """Run one command; its exit status.  Ctrl-C at any point, start-up included (importing numpy and
    Numba, reading and building the net), is one line and status 130, as a shell reports a process
    that SIGINT ended (Caffe's own start-up dies of the signal itself); SIGTERM likewise is
    ``numcaffe: terminated`` and status 143 (128 + 15), except while ``train`` trains, where it is
    ``--sigterm_effect`` (snapshot, then stop, by default)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("numcaffe: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("numcaffe: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    _early_threads(argv)
    commands = _commands()
    parser = build_parser(commands)
    argv = _gflags_to_argparse(argv, parser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:     # said by the subcommand's parser, whose --help lists its flags
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        which = subparsers[0].choices.get(args.command, parser) if subparsers else parser
        which.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.command:
        parser.print_help()
        return 0
    args.argv = argv
    try:
        threads.request(threads.resolve(args.threads))
    except NumcaffeError as e:
        print(f"numcaffe: error: {e}", file=sys.stderr)
        return 1
    from numcaffe.net import comm
    if comm.launcher_size() > 1:
        return _run_rank(commands[args.command], args)
    try:
        status = commands[args.command].run(args)
    except NumcaffeError as e:
        if getattr(args, "debug", False):
            raise
        print(f"numcaffe: error: {e}", file=sys.stderr)
        return 1
    return int(status or 0)


def _early_threads(argv):
    """The thread budget into the environment before numpy and Numba load (they size their pools
    then); a bad value is left for the parser or ``threads.resolve`` to refuse in one line.  Not when
    numpy is already loaded (``main`` called in-process): the environment would change for nothing."""
    if "numpy" in sys.modules:
        return
    flag = threads.argv_threads(argv)
    try:
        n = threads.resolve(flag)
    except NumcaffeError:
        return
    threads.prepare_environment(n, explicit=flag is not None or bool(os.environ.get(threads.ENV, "").strip()))


def _run_rank(command, args):
    """One rank of an MPI job: a failure must end the whole job, reported once.

    An error every rank raises together (a NaN the ranks agreed on) is printed
    by rank 0 and every rank returns normally.  Any other failure may be this
    rank's alone while the others wait in a collective, so the rank prints it
    (naming itself) and leaves at once without MPI's finalize; the launcher
    then ends the job.  Ranks other than 0 wait two seconds first: an error
    that every rank meets (a bad config) is then reported by rank 0 alone.
    """
    import os
    import time
    import traceback
    from numcaffe.net import comm
    rank = comm.launcher_rank()
    try:
        return int(command.run(args) or 0)
    except BaseException as e:
        if isinstance(e, NumcaffeError) and getattr(e, "all_ranks", False):
            if rank == 0:
                print(f"numcaffe: error: {e}", file=sys.stderr)
            return 1
        if rank != 0:
            time.sleep(2.0)
        who = f"rank {rank}: " if rank else ""
        if isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, int) else 1
        elif isinstance(e, NumcaffeError) and not getattr(args, "debug", False):
            print(f"numcaffe: error: {who}{e}", file=sys.stderr)
            code = 1
        elif isinstance(e, KeyboardInterrupt):
            print(f"numcaffe: {who}interrupted", file=sys.stderr)
            code = 130
        elif isinstance(e, Terminated):
            print(f"numcaffe: {who}terminated", file=sys.stderr)
            code = 143
        else:
            traceback.print_exc()
            print(f"numcaffe: error: {who}{type(e).__name__}: {e}", file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
