"""A NaN or Inf in training stops it with the layer, blob and iteration named, and a snapshot kept."""
import os

import numpy as np
import pytest
from google.protobuf import text_format

from numcaffe.net.errors import NumericalError
from numcaffe.net.proto import caffe_pb2
from numcaffe.solvers import get_solver

HEAD = """
layer { name: "x" type: "DummyData" top: "x" top: "t"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
                     data_filler { type: "constant" value: %s } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: %s } } }
"""
FORWARD_NAN = HEAD % (-1, 1) + """
layer { name: "log" type: "Log" bottom: "h" top: "y" }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
BACKWARD_INF = HEAD % (0, 0) + """
layer { name: "root" type: "Power" bottom: "h" top: "y" power_param { power: 0.5 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def solve(net_text, tmp_path):
    sp = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=5, display=1, snapshot_prefix=str(tmp_path / "run"),
                                   random_seed=1)
    text_format.Parse(net_text, sp.net_param)
    solver = get_solver(sp)
    with pytest.raises(NumericalError) as e, np.errstate(all="ignore"):
        solver.solve()
    return str(e.value)


def test_nan_in_forward_names_layer_blob_iteration_and_keeps_a_snapshot(tmp_path):
    msg = solve(FORWARD_NAN, tmp_path)
    assert "iteration 0" in msg and "layer 'log'" in msg and "top blob 'y' data" in msg and "forward" in msg
    assert os.path.exists(tmp_path / "run_iter_0.caffemodel") and "run_iter_0.solverstate" in msg
    saved = caffe_pb2.NetParameter.FromString(open(tmp_path / "run_iter_0.caffemodel", "rb").read())
    weights = [l for l in saved.layer if l.name == "ip"][0].blobs[0].data
    np.testing.assert_array_equal(weights, 1.0)  # the weights from before the failing update


def test_inf_in_backward_with_a_finite_loss_is_caught_at_the_gradient(tmp_path):
    msg = solve(BACKWARD_INF, tmp_path)
    assert "iteration 0" in msg and "layer 'root'" in msg and "bottom blob 'h' diff" in msg and "backward" in msg


@pytest.mark.parametrize("value,finite", [(1e30, True), (-3e19, True), (np.nan, False), (np.inf, False),
                                          (-np.inf, False)])
def test_gradient_check_tells_huge_finite_values_from_nan_and_inf(tmp_path, value, finite):
    """1e30 squared overflows the quick dot-product test; the element check must then keep training."""
    sp = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=1, random_seed=1,
                                   snapshot_prefix=str(tmp_path / "run"))
    text_format.Parse(HEAD % (1, 1) + 'layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" '
                      'top: "loss" }', sp.net_param)
    solver = get_solver(sp)
    diff = solver.net.learnable_params[0].flat_diff
    diff[...] = 1.0
    diff[1] = value
    with np.errstate(all="ignore"):
        assert solver._gradients_finite() is finite
