"""pycaffe's ``caffe.pycaffe`` and the functions of its ``caffe._caffe``: Net, the solvers, modes, layer types.

numcaffe's :class:`~numcaffe.net.net.Net` already has pycaffe's Python-side
attributes (``blobs``, ``params``, ``layer_dict``, ``forward_all`` ...), and
its solvers are pycaffe's; this module gathers them under pycaffe's names with
the module-level functions pycaffe takes from its C++ extension.
"""
import time

import numcaffe.layers  # noqa: F401  (registers every layer type)
from numcaffe.layers.python_layer import Layer
from numcaffe.net.blob import Blob
from numcaffe.net.log import get_logger, set_min_level
from numcaffe.net.net import TEST, TRAIN, Net
from numcaffe.net.random import set_random_seed
from numcaffe.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                              SGDSolver, get_solver)

__all__ = ["Net", "TRAIN", "TEST", "Layer", "Blob", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "layer_type_list", "has_nccl", "Timer", "init_log", "log"]

_warned_gpu = False


def _cpu_only(what):
    global _warned_gpu
    if not _warned_gpu:
        _warned_gpu = True
        get_logger("numcaffe.pycaffe").warning("%s: numcaffe runs on the CPU only; carrying on with the CPU", what)


def set_mode_cpu():
    """Run on the CPU (what numcaffe always does)."""


def set_mode_gpu():
    """Accepted for pycaffe scripts; numcaffe stays on the CPU (warns once)."""
    _cpu_only("caffe.set_mode_gpu()")


def set_device(device_id):
    """Accepted for pycaffe scripts; numcaffe has no GPU devices (warns once)."""
    _cpu_only(f"caffe.set_device({device_id})")


def layer_type_list():
    """The registered layer type names, sorted (pycaffe's ``caffe.layer_type_list()``)."""
    from numcaffe.layers.base import LAYER_REGISTRY
    return sorted(LAYER_REGISTRY)


def has_nccl():
    """False, always: numcaffe links no NCCL (it runs on the CPU), which is what a CPU-only Caffe reports.

    It does not say whether data-parallel training works: ``caffe.NCCL`` here
    joins MPI ranks (parallel.py), and under ``mpiexec`` the solver averages the
    gradients whether or not a script makes one, so a script that takes its
    ``has_nccl()`` False branch (one solver, no NCCL) still trains data-parallel.
    ``NCCL.new_uid()`` returns bytes, as Caffe's test_nccl asks of a build with NCCL.
    """
    return False


def init_log(level=None, std_out=None):
    """pycaffe's ``caffe.init_log([level[, std_out]])``: log messages of glog level ``level`` and above
    (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL; ``GLOG_minloglevel`` otherwise).  numcaffe always logs to
    stderr, which is what ``std_out=True`` (glog's logtostderr) asks Caffe for."""
    get_logger()
    if level is not None:
        set_min_level(level)


def log(message):
    """pycaffe's ``caffe.log(message)``: one INFO line in the run's log."""
    get_logger("numcaffe.pycaffe").info("%s", message)


class Timer:
    """pycaffe's ``caffe.Timer`` (Caffe's CPU timer): ``start()``, ``stop()``, and ``ms``, the
    milliseconds from the last start to the last stop (reading it stops a running timer, as Caffe)."""

    def __init__(self):
        self._running = False
        self._started = self._stopped = None

    def start(self):
        if not self._running:
            self._started = time.perf_counter()
            self._running = True

    def stop(self):
        if self._running:
            self._stopped = time.perf_counter()
            self._running = False

    @property
    def ms(self):
        if self._started is None:
            get_logger("numcaffe.pycaffe").warning("Timer has never been run before reading time.")
            return 0.0
        self.stop()
        return (self._stopped - self._started) * 1000.0
