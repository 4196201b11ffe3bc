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
``proto`` (``from numcaffe.net.pycaffe.proto import caffe_pb2`` works).

Not provided: GPU and multi-GPU parts (NCCL, ``solver.add_callback``), ``Detector``,
pydot's ``get_pydot_graph`` and ``caffe.coord_map``.
"""
from numcaffe.net.pycaffe.pycaffe import (TEST, TRAIN, AdaDeltaSolver, AdaGradSolver, AdamSolver, Blob, Layer,
                                          NesterovSolver, Net, RMSPropSolver, SGDSolver, get_solver,
                                          layer_type_list, set_device, set_mode_cpu, set_mode_gpu,
                                          set_random_seed)
from numcaffe.net.pycaffe.classifier import Classifier
from numcaffe.net.pycaffe import draw, io, proto
from numcaffe.net.pycaffe.net_spec import NetSpec, layers, params, to_proto

__all__ = ["Net", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
           "Layer", "Blob", "NetSpec", "layers", "params", "to_proto", "get_solver", "SGDSolver",
           "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "proto",
           "io", "draw", "Classifier", "layer_type_list"]
