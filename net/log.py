"""Logging in glog's line format, so Caffe's log parsers read numcaffe's logs.

A line looks like Caffe's::

    I1123 08:55:01.123456 12345 solver.py:218] Iteration 100, lr = 0.01

(severity letter, month and day, time with microseconds, thread id, source
file and line, then the message).  :func:`get_logger` returns the shared
``numcaffe`` logger; the first call attaches a stderr handler with that format
and takes the level from ``GLOG_minloglevel``, as glog does.
"""
import logging
import os
import sys
import threading
import time

#: glog's GLOG_minloglevel (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL), which Caffe users set to quiet a run.
_LEVELS = {"0": logging.INFO, "1": logging.WARNING, "2": logging.ERROR, "3": logging.CRITICAL}
_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
           logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    """Formats records as glog does (``IMMDD HH:MM:SS.uuuuuu tid file:line] msg``)."""

    def __init__(self, with_year=False):
        super().__init__()
        self.with_year = with_year

    def format(self, record):
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        date = time.strftime("%Y%m%d" if self.with_year else "%m%d", t)
        head = (f"{_LETTER.get(record.levelno, 'I')}{date} {time.strftime('%H:%M:%S', t)}.{micros:06d} "
                f"{threading.get_native_id() if record.thread == threading.get_ident() else record.thread % 100000:>5} "
                f"{os.path.basename(record.pathname)}:{record.lineno}] ")
        text = record.getMessage()
        return "\n".join(head + line if i == 0 else line for i, line in enumerate(text.split("\n")))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirection and capture work)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def get_logger(name="numcaffe"):
    logger = logging.getLogger(name)
    root = logging.getLogger("numcaffe")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(GlogFormatter())
        root.addHandler(handler)
        root.setLevel(_LEVELS.get(os.environ.get("GLOG_minloglevel", "0").strip(), logging.INFO))
        root.propagate = False
    return logger


def fmt(x):
    """A number as C++'s ``ostream << float`` prints it (``%g``, six significant digits), as Caffe's logs show them."""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{float(x):g}"


def add_log_file(path):
    """Also write the log to ``path`` (as glog's --log_dir would)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(GlogFormatter())
    get_logger().addHandler(handler)
    return handler


def set_min_level(level):
    """Log only messages of glog level ``level`` and above (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL),
    as ``GLOG_minloglevel`` / Caffe's ``FLAGS_minloglevel`` do."""
    from numcaffe.net.errors import ConfigError
    key = str(level).strip()
    if key not in _LEVELS:
        raise ConfigError(f"log level {level!r}: expected 0 (INFO), 1 (WARNING), 2 (ERROR) or 3 (FATAL), "
                          f"as GLOG_minloglevel")
    get_logger().setLevel(_LEVELS[key])
