"""The examples in configs/xor and configs/logreg: twins agree, data is reproducible, they learn."""
import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from numcaffe.net.config import read_message
from numcaffe.net.proto import caffe_pb2
from numcaffe.solvers import get_solver

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXAMPLES = ["xor", "logreg"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_yaml_and_prototxt_twins_are_the_same_message(name):
    d = CONFIGS / name
    assert read_message(str(d / "net.yaml"), caffe_pb2.NetParameter) == \
        read_message(str(d / "net.prototxt"), caffe_pb2.NetParameter)
    y = read_message(str(d / "solver.yaml"), caffe_pb2.SolverParameter)
    t = read_message(str(d / "solver.prototxt"), caffe_pb2.SolverParameter)
    assert (y.net, t.net) == ("net.yaml", "net.prototxt")
    y.net = t.net
    assert y == t


@pytest.mark.parametrize("name", EXAMPLES)
def test_make_data_reproduces_the_committed_files(name, tmp_path):
    copy = tmp_path / name
    copy.mkdir()
    shutil.copy(CONFIGS / name / "make_data.py", copy)
    spec = importlib.util.spec_from_file_location(f"make_{name}", copy / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    for txt in sorted((CONFIGS / name).glob("*.txt")):
        assert (copy / txt.name).read_text() == txt.read_text()
        for h5 in txt.read_text().split():
            with h5py.File(CONFIGS / name / h5, "r") as a, h5py.File(copy / h5, "r") as b:
                for key in ("data", "label"):
                    assert np.array_equal(a[key][()], b[key][()])


def test_logreg_learns_the_toy_set(tmp_path):
    shutil.copytree(CONFIGS / "logreg", tmp_path / "logreg", ignore=shutil.ignore_patterns("snapshots"))
    solver = get_solver(str(tmp_path / "logreg" / "solver.prototxt"))
    solver.param.snapshot = 0
    solver.param.snapshot_after_train = False
    solver.solve()
    assert dict(solver.test_scores[0])["accuracy"] >= 0.9
    with h5py.File(tmp_path / "logreg" / "test.h5", "r") as f:
        x, y = f["data"][()], f["label"][()]
    w, b = solver.net.params["fc"][0].data, solver.net.params["fc"][1].data
    assert ((x @ w.T + b).argmax(1) == y).mean() == pytest.approx(dict(solver.test_scores[0])["accuracy"])
