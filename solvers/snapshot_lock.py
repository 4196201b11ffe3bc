"""One training per snapshot prefix, and no stale temporary files under it.

Two trainings started with the same ``snapshot_prefix`` would interleave their
files: a .caffemodel of one run next to the .solverstate of the other, and a
resume from that pair gives the weights of neither.  ``numcaffe train`` holds
an OS lock on ``PREFIX.lock`` (``fcntl.flock``) while it runs; a second
training is refused at once with one line naming the prefix and the process
(pid and host) that holds it.  The kernel drops the lock when its process
ends, however it ends: ``kill -9`` leaves the lock file behind, but not the
lock, and the next run takes it.  A run that ends normally removes the file.

Snapshots are written to a hidden temporary file and renamed into place
(net/io.py, net/hdf5.py); a process killed mid-write leaves
``.PREFIX_iter_N.caffemodel.XXXXXXXX.tmp`` behind.  Holding the lock means no
other live run writes under the prefix, so the temporary files of that prefix
found then are stale: they are removed, one log line each.

Under MPI, rank 0 alone writes snapshots, so it alone takes the lock; the
other ranks learn the outcome from it.  pycaffe's solvers take no lock (a
script may hold several solvers of one prefix, as Caffe's tests do);
``numcaffe test`` and ``time`` write no snapshots and take none.
"""
import contextlib
import os
import re
import socket
import time

from numcaffe.net.errors import ConfigError
from numcaffe.net.log import get_logger

log = get_logger("numcaffe.train")


def lock_path(prefix):
    return f"{prefix}.lock"


def stale_temp_pattern(prefix):
    """The names atomic_write / atomic_h5_file give the temporary files of this prefix's snapshots:
    ``.`` + ``PREFIX_iter_N`` or ``PREFIX_best`` + ``.caffemodel`` / ``.solverstate`` (``.h5``) +
    ``.`` + mkstemp's random letters + ``.tmp``."""
    base = re.escape(os.path.basename(prefix))
    return re.compile(rf"^\.{base}_(?:iter_\d+|best)\.(?:caffemodel|solverstate)(?:\.h5)?\.[A-Za-z0-9_]+\.tmp$")


def _holder(f):
    """(pid, host) written in the lock file, or (None, None) when not yet written."""
    for _ in range(20):
        f.seek(0)
        fields = f.read().split()
        if len(fields) >= 2:
            return fields[0], fields[1]
        time.sleep(0.05)          # the holder has the lock and is about to write its pid
    return None, None


def acquire(prefix):
    """Lock ``PREFIX.lock``; returns the open file holding the lock (None, with a warning, on a file
    system that has no locks).  A ConfigError if another process holds it (naming it) or the prefix's
    folder cannot be written."""
    import fcntl
    path = lock_path(prefix)
    full = os.path.abspath(path)          # the same file at release, whatever the working directory then
    folder = os.path.dirname(full)
    made = _missing_folders(folder)       # removed again at release if the run left them empty
    while True:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot write snapshots with prefix {prefix!r}: {e.strerror or e}; "
                              f"make sure {folder} is a writable directory") from None
        try:
            f = open(full, "a+")
        except OSError as e:
            raise ConfigError(f"cannot open {path} to lock the snapshot prefix {prefix!r}: {e.strerror or e}"
                              ) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, host = _holder(f)
            f.close()
            who = f"pid {pid} on {host}" if pid else "another process"
            raise ConfigError(f"snapshot_prefix {prefix!r} is in use by another training ({who}, which "
                              f"holds {path}); wait for it to end, stop it, or give this run another "
                              f"snapshot_prefix") from None
        except OSError as e:          # a file system without locks (some network mounts)
            f.close()
            log.warning("Cannot lock %s (%s): a second training on snapshot_prefix %r would not be noticed, "
                        "and temporary files of interrupted snapshots are left alone", path, e.strerror or e,
                        prefix)
            return None
        # A run that ended may have removed the file between our open and our lock: then the lock is on
        # a file no one else will open; take the one at the path now.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(full))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()} {socket.gethostname()}\n")
    f.flush()
    f.made_folders = made
    return f


def _missing_folders(folder):
    """The folders, deepest first, that making ``folder`` creates."""
    made = []
    while folder and not os.path.exists(folder):
        made.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return made


def release(f):
    """Remove the lock file (while still holding the lock), then drop the lock."""
    with contextlib.suppress(OSError):
        os.unlink(f.name)
    f.close()
    for folder in getattr(f, "made_folders", ()):   # a run refused before any snapshot leaves no folder
        try:
            os.rmdir(folder)
        except OSError:
            break


def remove_stale_temps(prefix):
    """Remove the snapshot temporary files of ``prefix`` (call with the lock held); their paths."""
    folder = os.path.dirname(prefix) or "."
    pattern = stale_temp_pattern(prefix)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    removed = []
    for name in names:
        if pattern.match(name):
            path = os.path.join(folder, name)
            try:
                os.unlink(path)
            except OSError as e:
                log.warning("Could not remove %s, left by an interrupted snapshot: %s", path, e.strerror or e)
                continue
            log.info("Removed %s, left by an interrupted snapshot", path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def hold_prefix(prefix, comm=None):
    """``with hold_prefix(prefix, comm):`` the lock on ``prefix`` (rank 0's) for the block, stale temporary
    files removed first.  Every rank raises the same ConfigError when the prefix is taken."""
    root = comm is None or comm.is_root
    f, error = None, None
    if root:
        try:
            f = acquire(prefix)
        except ConfigError as e:
            error = str(e)
    if comm is not None and comm.size > 1:
        error = comm.bcast(error)
    if error:
        err = ConfigError(error)
        err.all_ranks = True         # every rank raises it: rank 0 alone reports it
        raise err
    try:
        if f is not None:
            remove_stale_temps(prefix)
        yield
    finally:
        if f is not None:
            release(f)
