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
    text_format.Merge(text, p)   # later settings override earlier ones
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


HDF5_DATA = """
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
  hdf5_data_param { source: "train.txt" batch_size: 5 shuffle: true } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
  hdf5_data_param { source: "test.txt" batch_size: 6 } }"""

MEMORY_DATA = """
layer { name: "data" type: "MemoryData" top: "data" top: "label" include { phase: TRAIN }
  memory_data_param { batch_size: 5 channels: 4 height: 1 width: 1 } }
layer { name: "data" type: "MemoryData" top: "data" top: "label" include { phase: TEST }
  memory_data_param { batch_size: 6 channels: 4 height: 1 width: 1 } }"""

CLASSIFIER_LAYERS = """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
%(middle)s
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
"""

#: a 3-class classifier of 4 features, reading the HDF5 files :func:`write_classifier_data` writes;
#: ``%(middle)s`` is put between its two InnerProduct layers
CLASSIFIER_NET = 'name: "classifier"' + HDF5_DATA + CLASSIFIER_LAYERS
#: the same net on MemoryData (no optional package), fed by :func:`feed_classifier_data`
MEMORY_CLASSIFIER_NET = 'name: "classifier"' + MEMORY_DATA + CLASSIFIER_LAYERS

DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }'


def write_classifier_data(directory, seed=5):
    """train.txt (two shuffled HDF5 files of 13 rows) and test.txt (one file of 12) in ``directory``."""
    import h5py
    rs = np.random.RandomState(seed)
    for name, n_files, rows in (("train", 2, 13), ("test", 1, 12)):
        files = []
        for i in range(n_files):
            path = directory / f"{name}{i}.h5"
            with h5py.File(path, "w") as f:
                f["data"] = rs.standard_normal((rows, 4)).astype(np.float32)
                f["label"] = rs.randint(0, 3, rows).astype(np.float32)
            files.append(path.name)
        (directory / f"{name}.txt").write_text("\n".join(files) + "\n")


def classifier_arrays(seed=5):
    """{phase: (data (N, 4, 1, 1), labels (N))} for MEMORY_CLASSIFIER_NET: 25 train rows, 12 test rows."""
    rs = np.random.RandomState(seed)
    return {phase: (rs.standard_normal((rows, 4, 1, 1)).astype(np.float32),
                    rs.randint(0, 3, rows).astype(np.float32))
            for phase, rows in (("train", 25), ("test", 12))}


def feed_classifier_data(solver, arrays):
    """Give a solver on MEMORY_CLASSIFIER_NET its batches (before ``restore``, which moves them on)."""
    solver.net.layers[0].reset(*arrays["train"])
    for net in solver.test_nets:
        net.layers[0].reset(*arrays["test"])
    return solver


def write_solver(directory, text, name="solver.prototxt"):
    """Write the SolverParameter ``text`` (later settings override earlier ones) to ``directory/name``."""
    path = directory / name
    path.write_text(text_format.MessageToString(solver_param(text)))
    return path
