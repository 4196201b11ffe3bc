"""pycaffe's solver behaviours: where snapshots go, apply_update, nets outliving their solver."""
import os

import numpy as np
import pytest

import numcaffe.net.pycaffe as caffe

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: "uniform" } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _solver_file(folder, prefix_line, extra=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.prototxt").write_text(NET)
    path = folder / "tiny_solver.prototxt"
    path.write_text(f'net: "{folder / "tiny.prototxt"}" base_lr: 0.1 lr_policy: "fixed" max_iter: 3 '
                    f'snapshot_after_train: false {prefix_line} {extra}')
    return str(path)


def test_snapshot_prefix_without_a_folder_is_in_the_working_directory(tmp_path, monkeypatch):
    solver_dir, work = tmp_path / "solvers", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    solver = caffe.SGDSolver(_solver_file(solver_dir, 'snapshot_prefix: "model"'))
    solver.snapshot()
    assert sorted(os.listdir(work)) == ["model_iter_0.caffemodel", "model_iter_0.solverstate"]
    assert sorted(os.listdir(solver_dir)) == ["tiny.prototxt", "tiny_solver.prototxt"]


def test_snapshot_prefix_with_a_folder_keeps_the_solvers_folder(tmp_path, monkeypatch):
    solver_dir, work = tmp_path / "solvers", tmp_path / "work"
    (solver_dir / "snaps").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    solver = caffe.SGDSolver(_solver_file(solver_dir, 'snapshot_prefix: "snaps/run"'))
    solver.snapshot()
    assert sorted(os.listdir(solver_dir / "snaps")) == ["run_iter_0.caffemodel", "run_iter_0.solverstate"]
    assert os.listdir(work) == []


def test_no_snapshot_prefix_takes_the_solver_files_name_beside_it(tmp_path, monkeypatch):
    solver_dir, work = tmp_path / "solvers", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    solver = caffe.SGDSolver(_solver_file(solver_dir, ""))
    solver.snapshot()
    assert (solver_dir / "tiny_solver_iter_0.caffemodel").is_file()


def test_apply_update_is_one_sgd_step_on_the_held_diffs(tmp_path):
    solver = caffe.SGDSolver(_solver_file(tmp_path, 'snapshot_prefix: "unused"'))
    weights = solver.net.params["ip"][0]
    weights.data[...] = 0.5
    weights.diff[...] = 2.0
    solver.apply_update()
    np.testing.assert_allclose(weights.data, 0.5 - 0.1 * 2.0, rtol=1e-6)


def test_nets_outlive_their_solver(tmp_path):
    solver = caffe.SGDSolver(_solver_file(tmp_path, 'snapshot_prefix: "unused"',
                                          'test_iter: 1 test_interval: 10'))
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    del solver
    for net in nets:
        out = net.forward()
        assert np.isfinite(out["loss"]).all()


@pytest.mark.parametrize("prefix", ["model", "snaps/run"])
def test_solver_reports_the_prefix_it_resolved(tmp_path, monkeypatch, prefix):
    (tmp_path / "solvers" / "snaps").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver(_solver_file(tmp_path / "solvers", f'snapshot_prefix: "{prefix}"'))
    expected = tmp_path / ("model" if prefix == "model" else "solvers/snaps/run")
    assert os.path.abspath(solver.snapshot_prefix) == str(expected)
