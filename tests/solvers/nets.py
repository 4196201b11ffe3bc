"""Tiny nets and solver parameters shared by the solver tests."""
import numpy as np
from google.protobuf import text_format

from numcaffe.net.proto import caffe_pb2

SOLVER_TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]

#: hyper-parameters that make each rule do something non-trivial
TYPE_SETTINGS = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "delta: 1e-6",
    "RMSProp": "rms_decay: 0.95 delta: 1e-6",
    "AdaDelta": "momentum: 0.95 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.999 delta: 1e-6",
}

LEAST_SQUARES_NET = """
name: "least_squares"
layer { name: "data" type: "MemoryData" top: "data" top: "targets"
  memory_data_param { batch_size: %(batch)d channels: %(dim)d height: 1 width: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param { lr_mult: %(lr_w)g decay_mult: %(decay_w)g } param { lr_mult: %(lr_b)g decay_mult: %(decay_b)g }
  inner_product_param { num_output: 1
    weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "targets" top: "loss" }
"""


def solver_param(text, net_text=None):
    p = caffe_pb2.SolverParameter()
    text_format.Parse(text, p)
    if net_text is not None:
        text_format.Parse(net_text, p.net_param)
    return p


def least_squares_data(n, dim, seed=3):
    rs = np.random.RandomState(seed)
    x = rs.standard_normal((n, dim, 1, 1)).astype(np.float32)
    y = rs.standard_normal(n).astype(np.float32)
    return x, y


def least_squares_solver(solver_type, settings="", batch=4, dim=3, n=8, lr_w=1.0, lr_b=2.0, decay_w=1.0,
                         decay_b=0.0, seed=1701, base_lr=0.1):
    """A solver on min ||Xw + b - y||^2 / (2 batch) with MemoryData batches; returns (solver, x, y)."""
    from numcaffe.solvers import get_solver
    net = LEAST_SQUARES_NET % dict(batch=batch, dim=dim, lr_w=lr_w, lr_b=lr_b, decay_w=decay_w, decay_b=decay_b)
    text = (f'type: "{solver_type}" base_lr: {base_lr} lr_policy: "fixed" max_iter: 100 display: 0 '
            f'snapshot_after_train: false random_seed: {seed} ' + settings)
    solver = get_solver(solver_param(text, net))
    x, y = least_squares_data(n, dim)
    solver.net.layers[0].reset(x, y)
    return solver, x, y
