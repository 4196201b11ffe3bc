"""A progress bar with ETA while training, when stderr is a terminal and tqdm is installed.

tqdm is an optional dependency (``numcaffe[tools]``).  While the bar is shown,
numcaffe's log goes through tqdm (``logging_redirect_tqdm``) so that log lines
and the bar do not overwrite each other; the glog line format is kept.
"""
import contextlib
import logging
import sys


def wanted(stream=None):
    """Whether to show a bar: ``stream`` (stderr) is a terminal and tqdm is importable."""
    stream = sys.stderr if stream is None else stream
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def progress_bar(total, initial=0, enabled=None):
    """Yield a tqdm bar over iterations ``initial..total``, or None when no bar is wanted."""
    if enabled is None:
        enabled = wanted()
    if not enabled:
        yield None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm(loggers=[logging.getLogger("numcaffe")]):
        bar = tqdm(total=total, initial=initial, unit="iter", dynamic_ncols=True, file=sys.stderr)
        try:
            yield bar
        finally:
            bar.close()
