"""`numcaffe train --snapshot` with damaged or mismatched snapshot files (issue 12, section 2).

numcaffe seals the states it writes (a SHA-256 of the state and of the caffemodel written with it):
a flipped byte or another run's caffemodel ends in one line, exit status 1, no traceback, and the
files left as they were.  Caffe's own solverstate, without those fields, still resumes, and
``--weights`` (a caffemodel alone, nothing to compare it with) checks nothing.
"""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from numcaffe.net.proto import caffe_pb2
from tests.tools.test_hostile_inputs import assert_one_clean_line, digests, run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "caffe"

NET = """name: "fit"
layer { name: "data" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""

SOLVER = ('net: "net.prototxt" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 6 snapshot: 3 '
          'display: 0 solver_mode: CPU snapshot_prefix: "{prefix}" random_seed: {seed}\n')


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs of the same net side by side: snapshots a/run_iter_{3,6}, b/run_iter_{3,6}."""
    folder = tmp_path_factory.mktemp("runs")
    (folder / "net.prototxt").write_text(NET)
    for name, seed in (("a", 1), ("b", 2)):
        (folder / f"{name}.prototxt").write_text(SOLVER.format(prefix=f"{name}/run", seed=seed))
        status, _, err = run(folder, "train", "--solver", f"{name}.prototxt", timeout=180)
        assert status == 0, err
    return folder


@pytest.fixture
def runs(two_runs, tmp_path):
    shutil.copytree(two_runs, tmp_path / "runs")
    return tmp_path / "runs"


def test_a_sealed_state_resumes(runs):
    status, _, err = run(runs, "train", "--solver", "a.prototxt", "--snapshot", "a/run_iter_3.solverstate",
                         timeout=180)
    assert status == 0, err


def test_a_state_with_a_flipped_byte_is_one_clean_line(runs):
    state = runs / "a" / "run_iter_3.solverstate"
    raw = bytearray(state.read_bytes())
    parsed = caffe_pb2.SolverState()
    parsed.ParseFromString(bytes(raw))
    first_blob = np.asarray(parsed.history[0].data, dtype="<f4").tobytes()
    at = bytes(raw).index(first_blob) + 6                         # inside a float of the first history blob
    raw[at] ^= 0x20
    state.write_bytes(bytes(raw))
    check = caffe_pb2.SolverState()
    check.ParseFromString(bytes(raw))                             # protobuf alone takes it
    before = digests(runs)
    status, _, err = run(runs, "train", "--solver", "a.prototxt", "--snapshot", "a/run_iter_3.solverstate")
    assert_one_clean_line(status, err, "a/run_iter_3.solverstate: the solver state is corrupt: its content does "
                                       "not match the SHA-256 written with it (written ",
                          "; resume from another snapshot")
    assert digests(runs) == before


def test_a_state_protobuf_cannot_parse_is_one_clean_line(runs):
    state = runs / "a" / "run_iter_3.solverstate"
    state.write_bytes(state.read_bytes()[:-40])                   # cut inside the last field
    before = digests(runs)
    status, _, err = run(runs, "train", "--solver", "a.prototxt", "--snapshot", "a/run_iter_3.solverstate")
    assert_one_clean_line(status, err, "a/run_iter_3.solverstate: not a valid binary SolverState")
    assert digests(runs) == before


def test_another_runs_caffemodel_under_the_states_name_is_one_clean_line(runs):
    shutil.copyfile(runs / "b" / "run_iter_3.caffemodel", runs / "a" / "run_iter_3.caffemodel")
    before = digests(runs)
    status, _, err = run(runs, "train", "--solver", "a.prototxt", "--snapshot", "a/run_iter_3.solverstate")
    assert_one_clean_line(status, err, "a/run_iter_3.solverstate: its weights file a/run_iter_3.caffemodel is not "
                                       "the one written with it (SHA-256 ",
                          "(another run with the same snapshot_prefix?) or is corrupt")
    assert digests(runs) == before


def test_weights_alone_are_not_checked(runs):
    # run b's caffemodel, named like run a's, fine-tunes: --weights has no state to compare it with
    shutil.copyfile(runs / "b" / "run_iter_3.caffemodel", runs / "a" / "run_iter_3.caffemodel")
    status, _, err = run(runs, "train", "--solver", "a.prototxt", "--weights", "a/run_iter_3.caffemodel",
                         timeout=180)
    assert status == 0, err


def test_caffes_own_solverstate_still_resumes(tmp_path):
    from google.protobuf import text_format
    from tests.solvers.test_resume import lenet_without_lmdb
    for name in ("lenet_iter_10000.solverstate", "lenet_iter_10000.caffemodel"):
        shutil.copyfile(FIXTURES / name, tmp_path / name)
    (tmp_path / "lenet.prototxt").write_text(text_format.MessageToString(lenet_without_lmdb(tmp_path)))
    (tmp_path / "solver.prototxt").write_text(
        'net: "lenet.prototxt" base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 '
        'power: 0.75 display: 1 max_iter: 10002 solver_mode: CPU snapshot_prefix: "out/lenet" random_seed: 1701')
    before = digests(tmp_path)
    status, _, err = run(tmp_path, "train", "--solver", "solver.prototxt", "--snapshot",
                         "lenet_iter_10000.solverstate", timeout=180, env={"GLOG_minloglevel": "0"})
    assert status == 0, err
    assert "Iteration 10001, lr = " in err and "Iteration 10000, lr = " in err
    assert (tmp_path / "out" / "lenet_iter_10002.solverstate").is_file()
    after = digests(tmp_path)
    assert {k: after[k] for k in before} == before


def test_a_sealed_state_converts_to_yaml_and_back_unchanged(runs):
    # the digests are hex text (the caffemodel's as sha256sum prints it), so YAML and prototxt hold them
    state = runs / "a" / "run_iter_3.solverstate"
    parsed = caffe_pb2.SolverState()
    parsed.ParseFromString(state.read_bytes())
    assert parsed.learned_net_sha256 == hashlib.sha256((runs / "a" / "run_iter_3.caffemodel").read_bytes()).hexdigest()
    for syntax in ("yaml", "prototxt"):
        status, _, err = run(runs, "convert", "a/run_iter_3.solverstate", f"state.{syntax}")
        assert status == 0, err
        assert parsed.state_sha256 in (runs / f"state.{syntax}").read_text()
        status, _, err = run(runs, "convert", "--type", "solverstate", f"state.{syntax}", "back.solverstate")
        assert status == 0, err
        assert (runs / "back.solverstate").read_bytes() == state.read_bytes()


@pytest.mark.parametrize("damage", ["flipped byte", "another caffemodel"])
def test_under_mpi_a_damaged_pair_is_one_clean_line_too(runs, damage):
    # rank 0 reads the files and finds the damage while rank 1 waits for them: the job still ends at once
    state = runs / "a" / "run_iter_3.solverstate"
    if damage == "flipped byte":
        raw = bytearray(state.read_bytes())
        raw[len(raw) // 3] ^= 0x01
        state.write_bytes(bytes(raw))
        needle = "a/run_iter_3.solverstate: the solver state is corrupt"
    else:
        shutil.copyfile(runs / "a" / "run_iter_6.caffemodel", runs / "a" / "run_iter_3.caffemodel")
        needle = "a/run_iter_3.solverstate: its weights file a/run_iter_3.caffemodel is not the one written with it"
    before = digests(runs)
    status, _, err = run(runs, "train", "--solver", "a.prototxt", "--snapshot", "a/run_iter_3.solverstate",
                         "--procs", "2", timeout=120)
    assert_one_clean_line(status, err, needle)
    assert digests(runs) == before
