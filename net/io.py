"""Files: output that never leaves a half-written file behind, and config-relative paths."""
import os
import tempfile

from numcaffe.net.errors import DataError


def atomic_write(path, data):
    """Write ``data`` (bytes) to ``path`` via a temporary file and ``os.replace``.

    A crash mid-write leaves the previous file at ``path`` untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())   # mkstemp makes 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_path(path, base_dir=None, what="file", must_exist=True):
    """The path to open for a config's relative ``path``.

    Caffe resolves relative paths against the working directory; numcaffe also
    looks next to the config file (``base_dir``) when the path is not found
    there.  With ``must_exist`` a missing path is a DataError naming the places looked in.
    """
    path = os.fspath(path)
    if not path:
        raise DataError(f"no {what} given")
    path = os.path.expanduser(path)
    if os.path.isabs(path) or os.path.exists(path):
        if must_exist and not os.path.exists(path):
            raise DataError(f"{what} {path!r} does not exist")
        return path
    if base_dir:
        alt = os.path.join(base_dir, path)
        if os.path.exists(alt):
            return alt
    if must_exist:
        places = [os.getcwd()]
        if base_dir and os.path.abspath(base_dir) != places[0]:
            places.append(os.path.abspath(base_dir))
        where = " (looked in " + " and ".join(map(repr, places)) + ")"
        raise DataError(f"{what} {path!r} does not exist{where}")
    return path
