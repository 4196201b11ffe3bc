"""What a signal asks the solver to do (Caffe's SolverAction and SignalHandler).

A handler only records that the signal arrived; the solver asks for the
pending action between iterations and between test batches (Caffe's
``GetRequestedAction``), so a snapshot is always taken at a consistent point.

Actions: ``none``, ``stop``, ``snapshot`` (Caffe's) and ``snapshot_stop``
(numcaffe's default for SIGINT: snapshot, then stop, so no work is lost).
A second SIGINT while the first is still pending raises KeyboardInterrupt, for
when the user really means it; snapshots are written atomically, so even that
never leaves a broken file behind.
"""
import signal

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


class SignalHandler:
    """Install SIGINT/SIGHUP handlers for the lifetime of a ``with`` block.

    ``handler.action()`` returns the action for the signal received since the
    last call (SIGINT first), or ``none``.
    """

    def __init__(self, sigint_effect=SNAPSHOT_STOP, sighup_effect=SNAPSHOT, launcher=False):
        self.sigint_effect = parse_action(sigint_effect, "sigint_effect")
        self.sighup_effect = parse_action(sighup_effect, "sighup_effect")
        self._got_sigint = False
        self._got_sighup = False
        self._previous = {}
        # Under MPI a SIGINT or SIGTERM to mpiexec ends the ranks at once; SIGUSR1 and SIGUSR2 are forwarded
        # to every rank and stand for SIGINT and SIGHUP (`numcaffe train --procs` sends them on Ctrl-C).
        self.launcher = launcher

    def _on_sigint(self, signum, frame):
        if self._got_sigint:
            raise KeyboardInterrupt
        self._got_sigint = True

    def _on_usr1(self, signum, frame):
        self._got_sigint = True

    def _on_sighup(self, signum, frame):
        self._got_sighup = True

    def __enter__(self):
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        if hasattr(signal, "SIGHUP"):
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_sighup)
        if self.launcher and hasattr(signal, "SIGUSR1"):
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_usr1)
            self._previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._on_sighup)
        return self

    def __exit__(self, *exc):
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()
        return False

    def action(self):
        if self._got_sigint:
            self._got_sigint = False
            return self.sigint_effect
        if self._got_sighup:
            self._got_sighup = False
            return self.sighup_effect
        return NONE
