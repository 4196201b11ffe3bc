"""What a signal asks the solver to do (Caffe's SolverAction and SignalHandler).

A handler only records that the signal arrived; the solver asks for the
pending action between iterations and between test batches (Caffe's
``GetRequestedAction``), so a snapshot is always taken at a consistent point.

Actions: ``none``, ``stop``, ``snapshot`` (Caffe's) and ``snapshot_stop``
(numcaffe's default for SIGINT and SIGTERM: snapshot, then stop, so no work is
lost).  Caffe handles SIGINT and SIGHUP only; SIGTERM, which ``kill``,
schedulers and container runtimes send, has its own effect here
(``--sigterm_effect``).  A second SIGINT while the first is still pending raises
KeyboardInterrupt, a second SIGTERM :class:`~numcaffe.net.errors.Terminated`,
for when the sender really means it; snapshots are written atomically, so even
that never leaves a broken file behind (a stale temporary file at most, which
the next ``numcaffe train`` with that prefix removes).
"""
import signal

from numcaffe.net.errors import Terminated
from numcaffe.net.log import get_logger

log = get_logger("numcaffe.signals")

NONE = "none"
STOP = "stop"
SNAPSHOT = "snapshot"
SNAPSHOT_STOP = "snapshot_stop"
ACTIONS = (NONE, STOP, SNAPSHOT, SNAPSHOT_STOP)


def parse_action(value, flag="signal effect"):
    from numcaffe.net.errors import ConfigError
    v = str(value).strip().lower().replace("-", "_")
    if v in ("snapshot_then_stop", "snapshotstop"):
        v = SNAPSHOT_STOP
    if v not in ACTIONS:
        raise ConfigError(f"invalid {flag} {value!r}; expected one of {', '.join(ACTIONS)}")
    return v


#: what the log says when a signal's action is taken
_SAYS = {STOP: "stopping", SNAPSHOT: "snapshotting", SNAPSHOT_STOP: "snapshotting, then stopping"}


class SignalHandler:
    """Install SIGINT/SIGTERM/SIGHUP handlers for the lifetime of a ``with`` block.

    ``handler.action()`` returns the action for the signal received since the
    last call (SIGINT first, then SIGTERM, then SIGHUP), or ``none``.
    """

    def __init__(self, sigint_effect=SNAPSHOT_STOP, sighup_effect=SNAPSHOT, launcher=False,
                 sigterm_effect=SNAPSHOT_STOP):
        self.sigint_effect = parse_action(sigint_effect, "sigint_effect")
        self.sighup_effect = parse_action(sighup_effect, "sighup_effect")
        self.sigterm_effect = parse_action(sigterm_effect, "sigterm_effect")
        self._got_sigint = False
        self._got_sigterm = False
        self._got_sighup = False
        self._previous = {}
        # Under MPI a SIGINT or SIGTERM to mpiexec ends the ranks at once; SIGUSR1, SIGALRM and SIGUSR2 are
        # forwarded to every rank and stand for SIGINT, SIGTERM and SIGHUP (`numcaffe train --procs` sends
        # them when it gets those, tools/procs.py).  A rank also takes SIGTERM itself (a scheduler that
        # signals every process of the job).
        self.launcher = launcher

    def _on_sigint(self, signum, frame):
        if self._got_sigint:
            raise KeyboardInterrupt
        self._got_sigint = True

    def _on_usr1(self, signum, frame):
        self._got_sigint = True

    def _on_sigterm(self, signum, frame):
        if self._got_sigterm:
            raise Terminated
        self._got_sigterm = True

    def _on_sighup(self, signum, frame):
        self._got_sighup = True

    def __enter__(self):
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        if hasattr(signal, "SIGHUP"):
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_sighup)
        if self.launcher and hasattr(signal, "SIGUSR1"):
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_usr1)
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_sigterm)
            self._previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._on_sighup)
        return self

    def __exit__(self, *exc):
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()
        return False

    def action(self):
        for flag, name, effect in (("_got_sigint", "SIGINT", self.sigint_effect),
                                   ("_got_sigterm", "SIGTERM", self.sigterm_effect),
                                   ("_got_sighup", "SIGHUP", self.sighup_effect)):
            if getattr(self, flag):
                setattr(self, flag, False)
                if effect != NONE:
                    log.info("%s: %s", name, _SAYS[effect])
                return effect
        return NONE
