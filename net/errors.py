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


class ShapeError(NumcaffeError):
    """Blob shapes that a layer cannot work with."""


class NumericalError(NumcaffeError):
    """A NaN or Inf appeared where a finite value was expected."""


class DataError(NumcaffeError):
    """A data file (database, list file, IDX file, image) that is missing, corrupt or does not fit."""
