"""pycaffe's ``caffe.pycaffe`` and the functions of its ``caffe._caffe``: Net, the solvers, modes, layer types.

numcaffe's :class:`~numcaffe.net.net.Net` already has pycaffe's Python-side
attributes (``blobs``, ``params``, ``layer_dict``, ``forward_all`` ...), and
its solvers are pycaffe's; this module gathers them under pycaffe's names with
the module-level functions pycaffe takes from its C++ extension.
"""
import numcaffe.layers  # noqa: F401  (registers every layer type)
from numcaffe.layers.python_layer import Layer
from numcaffe.net.blob import Blob
from numcaffe.net.log import get_logger
from numcaffe.net.net import TEST, TRAIN, Net
from numcaffe.net.random import set_random_seed
from numcaffe.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                              SGDSolver, get_solver)

__all__ = ["Net", "TRAIN", "TEST", "Layer", "Blob", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "layer_type_list"]

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
