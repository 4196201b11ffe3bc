"""The exceptions numcaffe raises for bad input.

Every user-facing failure is a :class:`NumcaffeError` carrying one readable
message (which file, which line or layer, what was expected).  The command line
prints that message and exits with status 1; anything else is a bug and keeps
its traceback.
"""


class NumcaffeError(Exception):
    """Base class: a failure caused by the user's input, not by numcaffe."""


class ConfigError(NumcaffeError):
    """A net, solver or other config that cannot be read or does not make sense."""


class ModelFileError(NumcaffeError):
    """A weights, mean or solver-state file that is missing, corrupt or does not fit."""


class ShapeError(NumcaffeError, ValueError):
    """Blob shapes that a layer cannot work with; also a ValueError, which numpy and pycaffe raise
    for shapes that do not fit, so code written for them catches it."""


class NumericalError(NumcaffeError):
    """A NaN or Inf appeared where a finite value was expected."""


class DataError(NumcaffeError):
    """A data file (database, list file, IDX file, image) that is missing, corrupt or does not fit."""


class Terminated(BaseException):
    """SIGTERM ended the command: what KeyboardInterrupt is to SIGINT.  Not a NumcaffeError (nothing the
    user gave was wrong); the command line prints ``numcaffe: terminated`` and exits with status 143."""


_KEEPING_TYPE = {}


def _init_message(self, message):
    Exception.__init__(self, message)


def _str_message(self):
    return BaseException.__str__(self)


def error_keeping_type(exc, message):
    """A :class:`NumcaffeError` saying ``message`` that is also an instance of ``type(exc)``.

    For errors raised by user code that numcaffe runs (a Python layer's ``setup`` or
    ``forward``): the caller catches them by their own type, as pycaffe users do
    (``except RuntimeError``), and the command line, which catches NumcaffeError,
    still prints the one-line message with numcaffe's context.  The class is made
    once per original type (named like it); a type that cannot be combined with
    NumcaffeError (a built-in with its own memory layout) gives a plain NumcaffeError.
    """
    base = type(exc)
    cls = _KEEPING_TYPE.get(base)
    if cls is None:
        try:
            cls = type(base.__name__, (base, NumcaffeError),
                       {"__init__": _init_message, "__str__": _str_message, "__module__": __name__,
                        "__qualname__": base.__qualname__, "__doc__": f"{base.__name__} with numcaffe's context"})
        except TypeError:
            cls = NumcaffeError
        _KEEPING_TYPE[base] = cls
    return cls(message)
