"""pycaffe's ``caffe`` module on numcaffe: change ``import caffe`` into

    import numcaffe.net.pycaffe as caffe

and a pycaffe script runs as it did: ``caffe.Net(model, weights, caffe.TEST)``,
``caffe.SGDSolver(path)``, ``caffe.io.Transformer``, ``caffe.Classifier``,
``caffe.NetSpec`` / ``caffe.layers`` / ``caffe.params``, ``caffe.proto.caffe_pb2``,
``caffe.Layer`` for Python layers.  numcaffe runs on the CPU: ``set_mode_gpu`` and
``set_device`` log one warning and carry on.

``caffe.draw.draw_net_to_file`` / ``draw_net`` draw a NetParameter with Graphviz,
as ``numcaffe draw`` does.

The submodules are Caffe's (python/caffe/): ``pycaffe`` (Net, the solvers, the
mode and device functions), ``io``, ``net_spec``, ``classifier``, ``draw`` and
``proto`` (``from numcaffe.net.pycaffe.proto import caffe_pb2`` works), and
``parallel``: multi-device training as MPI ranks (``solver_count``, ``solver_rank``,
``set_solver_count``, ``set_solver_rank``, ``set_multiprocess``, ``caffe.NCCL``; with
``solver.add_callback`` and the nets' ``before_forward`` ... ``after_backward``
callbacks); run such a script with ``mpiexec -n N python script.py``, one solver per
rank (docs/mpi.md).

``coord_map`` (``from numcaffe.net.pycaffe.coord_map import crop``) aligns tops for FCN-style
crops; ``Detector`` classifies image windows; ``Timer``, ``init_log``, ``log``, ``has_nccl``
(False) and ``__version__`` (numcaffe's) are pycaffe's too.

Not provided: GPU parts (``has_nccl()`` stays False: ``NCCL`` here joins MPI ranks, not GPUs) and
pydot's ``get_pydot_graph``.
"""
from numcaffe.net.pycaffe.pycaffe import (TEST, TRAIN, AdaDeltaSolver, AdaGradSolver, AdamSolver, Blob, Layer,
                                          NesterovSolver, Net, RMSPropSolver, SGDSolver, Timer, get_solver,
                                          has_nccl, init_log, layer_type_list, log, set_device, set_mode_cpu,
                                          set_mode_gpu, set_random_seed)
from numcaffe.net.pycaffe.classifier import Classifier
from numcaffe.net.pycaffe.detector import Detector
from numcaffe.net.pycaffe import draw, io, proto
from numcaffe.net.pycaffe.net_spec import NetSpec, layers, params, to_proto
from numcaffe.net.pycaffe.parallel import (NCCL, set_multiprocess, set_solver_count, set_solver_rank,
                                           solver_count, solver_rank)

__all__ = ["Net", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
           "Layer", "Blob", "NetSpec", "layers", "params", "to_proto", "get_solver", "SGDSolver",
           "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "proto",
           "io", "draw", "Classifier", "Detector", "layer_type_list", "has_nccl", "Timer", "init_log", "log",
           "__version__", "NCCL", "solver_count", "solver_rank", "set_solver_count", "set_solver_rank",
           "set_multiprocess"]


def _version():
    from importlib import metadata
    try:
        return metadata.version("numcaffe")
    except metadata.PackageNotFoundError:      # run from a source tree that was never installed
        return "0+unknown"


#: numcaffe's version (pycaffe's ``caffe.__version__`` gives Caffe's).
__version__ = _version()
