"""Snapshot -> restore -> continue equals the uninterrupted run, bitwise.

For every solver type: N iterations straight, and N/2 iterations, a
snapshot, a *new* solver restored from it, N/2 more, must give identical
weights (np.array_equal), with shuffled HDF5 data, a Dropout layer and a
test net in the loop; and again with MemoryData batches, which need no
optional package.  Also: the HDF5 snapshot format, the atomicity of
snapshot files under a kill, and a real Caffe solverstate.
"""
import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numcaffe.net.errors import ModelFileError
from numcaffe.net.proto import caffe_pb2
from numcaffe.solvers import get_solver, read_solver_param
from tests.solvers.nets import (CLASSIFIER_NET, DROPOUT, MEMORY_CLASSIFIER_NET, SOLVER_TYPES, TYPE_SETTINGS,
                                classifier_arrays, feed_classifier_data, write_classifier_data, write_solver)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "caffe"
REPO = Path(__file__).resolve().parents[2]

@pytest.fixture
def workdir(tmp_path):
    write_classifier_data(tmp_path)
    (tmp_path / "net.prototxt").write_text(CLASSIFIER_NET % dict(middle=DROPOUT))
    return tmp_path


def make_solver(workdir, solver_type, extra=""):
    text = (f'net: "net.prototxt" type: "{solver_type}" {TYPE_SETTINGS[solver_type]} '
            f'base_lr: {1.0 if solver_type == "AdaDelta" else 0.05} lr_policy: "step" gamma: 0.7 stepsize: 4 '
            f'weight_decay: 0.001 test_iter: 2 test_interval: 3 display: 2 average_loss: 3 max_iter: 40 '
            f'snapshot_prefix: "snap/run" snapshot_after_train: false random_seed: 77 iter_size: 2 ' + extra)
    return get_solver(str(write_solver(workdir, text)))


def weights(solver):
    return [b.data.copy() for b in solver.net.learnable_params]


def assert_same_run(a, b):
    assert a.iter == b.iter
    for x, y in zip(weights(a), weights(b)):
        assert np.array_equal(x, y)
    for x, y in zip(a.history, b.history):
        assert np.array_equal(x, y)
    assert a.smoothed_loss == b.smoothed_loss
    assert a.net.get_state() == b.net.get_state()
    assert [n.get_state() for n in a.test_nets] == [n.get_state() for n in b.test_nets]


def check_bitwise_resume(make, n=14, k=7):
    """``make()`` gives a new solver; n iterations straight == k, snapshot, a new solver restored, n - k."""
    straight = make()
    straight.step(n)
    first = make()
    first.step(k)
    state_file = first.snapshot()
    assert state_file.endswith(f"run_iter_{k}.solverstate")
    resumed = make()
    assert not np.array_equal(weights(resumed)[0], weights(first)[0])
    resumed.restore(state_file)
    assert resumed.iter == k
    resumed.step(n - k)
    assert_same_run(straight, resumed)
    # and the run really moved: dropout, data and updates all did something
    assert not np.array_equal(weights(straight)[0], weights(make())[0])


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
def test_resume_is_bitwise_identical(workdir, solver_type):
    check_bitwise_resume(lambda: make_solver(workdir, solver_type))


@pytest.mark.parametrize("solver_type", SOLVER_TYPES)
def test_resume_is_bitwise_identical_on_array_data(tmp_path, solver_type):
    (tmp_path / "net.prototxt").write_text(MEMORY_CLASSIFIER_NET % dict(middle=DROPOUT))
    arrays = classifier_arrays()
    check_bitwise_resume(lambda: feed_classifier_data(make_solver(tmp_path, solver_type), arrays))


def test_resume_through_hdf5_snapshots_with_plateau_and_early_stop_state(workdir):
    extra = ('lr_policy: "plateau" plateau_monitor: "acc" plateau_patience: 1 plateau_mode: "max" '
             'early_stop_monitor: "loss" early_stop_mode: "min" early_stop_patience: 50 '
             'snapshot_format: HDF5 test_compute_loss: true')
    straight = make_solver(workdir, "Adam", extra)
    straight.step(20)
    first = make_solver(workdir, "Adam", extra)
    first.step(9)   # a test iteration: the snapshot must resume into the same test
    state_file = first.snapshot()
    assert state_file.endswith("run_iter_9.solverstate.h5")
    assert os.path.exists(str(workdir / "snap" / "run_iter_9.caffemodel.h5"))
    import h5py
    with h5py.File(state_file, "r") as f:
        assert {"iter", "learned_net", "current_step", "history", "numcaffe_state"} <= set(f)
        assert len(f["history"]) == 8
    resumed = make_solver(workdir, "Adam", extra)
    resumed.restore(state_file)
    resumed.step(11)
    assert_same_run(straight, resumed)
    assert straight.plateau.get_state() == resumed.plateau.get_state()
    assert straight.early_stop.get_state() == resumed.early_stop.get_state()
    assert straight.best_snapshot is not None and os.path.exists(straight.best_snapshot[1])


def test_snapshot_files_are_caffe_messages(workdir):
    solver = make_solver(workdir, "Nesterov")
    solver.step(3)
    state_file = solver.snapshot()
    state = caffe_pb2.SolverState()
    state.ParseFromString(Path(state_file).read_bytes())
    assert state.iter == 3 and state.current_step == 0
    assert state.learned_net.endswith("run_iter_3.caffemodel")
    assert [tuple(h.shape.dim) for h in state.history] == [(6, 4), (6,), (3, 6), (3,)]
    np.testing.assert_array_equal(np.array(state.history[0].data).reshape(6, 4), solver.history[0])
    model = caffe_pb2.NetParameter()
    model.ParseFromString(Path(workdir / "snap" / "run_iter_3.caffemodel").read_bytes())
    ip1 = [l for l in model.layer if l.name == "ip1"][0]
    np.testing.assert_array_equal(np.array(ip1.blobs[0].data).reshape(6, 4), solver.net.params["ip1"][0].data)


def test_restore_rejects_a_state_of_another_solver(workdir):
    solver = make_solver(workdir, "Adam")
    solver.step(1)
    path = solver.snapshot()
    sgd = make_solver(workdir, "SGD")
    before = weights(sgd)
    with pytest.raises(ModelFileError, match="was written by a solver of type Adam; this solver's type is SGD"):
        sgd.restore(path)
    # a state without numcaffe's parts (Caffe's own) is checked by its history, before anything changes
    state = caffe_pb2.SolverState()
    state.ParseFromString(Path(path).read_bytes())
    for name in ("numcaffe_state", "learned_net_sha256", "state_sha256"):
        state.ClearField(name)
    Path(path).write_bytes(state.SerializeToString())
    with pytest.raises(ModelFileError, match="incorrect length of history blobs: the file has 8, the SGD solver "
                                             "for this net needs 4"):
        sgd.restore(path)
    assert sgd.iter == 0 and all(np.array_equal(a, b) for a, b in zip(before, weights(sgd)))


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
os.chdir({workdir!r})
from tests.solvers.test_resume import make_solver
from pathlib import Path
solver = make_solver(Path({workdir!r}), "SGD")
solver.step(2)
solver.snapshot()
print("first", flush=True)
solver.net.params["ip1"][0].data[...] += 1.0
import numcaffe.net.io as io
def die(fd):
    os.kill(os.getpid(), signal.SIGKILL)
io.os.fsync = die   # the process dies in the middle of writing the second snapshot
solver.snapshot()
print("not reached", flush=True)
"""


def test_a_process_killed_mid_snapshot_leaves_the_previous_snapshot_intact(workdir):
    script = KILL_SCRIPT.format(repo=str(REPO), workdir=str(workdir))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "first" in proc.stdout and "not reached" not in proc.stdout
    model = workdir / "snap" / "run_iter_2.caffemodel"
    state = workdir / "snap" / "run_iter_2.solverstate"
    # The first snapshot is still there, whole and loadable, with the weights from before the change.
    solver = make_solver(workdir, "SGD")
    reference = make_solver(workdir, "SGD")
    reference.step(2)
    solver.restore(str(state))
    for x, y in zip(weights(solver), weights(reference)):
        assert np.array_equal(x, y)
    assert model.exists()


# ------------------------------------------------------------------ a real Caffe solverstate

def lenet_without_lmdb(tmp_path):
    """Caffe's LeNet with its LMDB Data layers replaced by DummyData (a test-side copy)."""
    from numcaffe.net.config import read_message
    net = read_message(str(FIXTURES / "lenet_train_test.prototxt"), caffe_pb2.NetParameter)
    layers = [l for l in net.layer if l.type != "Data"]
    del net.layer[:]
    dummy = net.layer.add()
    dummy.name, dummy.type = "mnist", "DummyData"
    dummy.top.extend(["data", "label"])
    dummy.dummy_data_param.shape.add().dim.extend([2, 1, 28, 28])
    dummy.dummy_data_param.shape.add().dim.extend([2])
    net.layer.extend(layers)
    return net


def test_real_caffe_solverstate_restores_iter_and_history(tmp_path, monkeypatch):
    param = read_solver_param(str(FIXTURES / "lenet_solver.prototxt"))
    param.ClearField("net")
    param.net_param.CopyFrom(lenet_without_lmdb(tmp_path))
    param.snapshot_prefix = str(tmp_path / "lenet")
    monkeypatch.chdir(FIXTURES)       # Caffe opens learned_net relative to the working directory
    solver = get_solver(param)
    assert solver.type == "SGD"
    solver.restore("lenet_iter_10000.solverstate")
    assert solver.iter == 10000
    state = caffe_pb2.SolverState()
    state.ParseFromString((FIXTURES / "lenet_iter_10000.solverstate").read_bytes())
    for h, mine in zip(state.history, solver.history):
        np.testing.assert_array_equal(np.array(h.data, dtype=np.float32).reshape(mine.shape), mine)
    model = caffe_pb2.NetParameter()
    model.ParseFromString((FIXTURES / "lenet_iter_10000.caffemodel").read_bytes())
    conv1 = [l for l in model.layer if l.name == "conv1"][0]
    np.testing.assert_array_equal(np.array(conv1.blobs[0].data, dtype=np.float32).reshape(20, 1, 5, 5),
                                  solver.net.params["conv1"][0].data)
    # Caffe continues from there: momentum from the restored history, lr from iteration 10000
    before = solver.net.params["ip2"][1].data.copy()
    solver.step(1)
    assert solver.iter == 10001
    assert solver.learning_rate == pytest.approx(0.01 * (1 + 0.0001 * 10000) ** -0.75, rel=1e-6)
    assert not np.array_equal(before, solver.net.params["ip2"][1].data)


def test_learned_net_is_found_next_to_the_state_file(tmp_path):
    param = read_solver_param(str(FIXTURES / "lenet_solver.prototxt"))
    param.ClearField("net")
    param.net_param.CopyFrom(lenet_without_lmdb(tmp_path))
    param.snapshot_prefix = str(tmp_path / "lenet")
    solver = get_solver(param)
    solver.restore(str(FIXTURES / "lenet_iter_10000.solverstate"))   # cwd is elsewhere
    assert solver.iter == 10000


# ------------------------------------------------------------------ sealed states: numcaffe's checksums

def snapshot_pair(workdir, iters=3, extra="", solver_type="SGD"):
    solver = make_solver(workdir, solver_type, extra)
    solver.step(iters)
    state_file = solver.snapshot()
    return solver, state_file, solver._last_snapshot[1]


def test_every_single_flipped_byte_of_a_state_is_an_error(workdir):
    from numcaffe.solvers.state import read_state
    _, state_file, _ = snapshot_pair(workdir)
    raw = Path(state_file).read_bytes()
    assert len(raw) > 1000
    bad = workdir / "bad.solverstate"
    seen = {"sha": 0, "missing": 0, "parse": 0}
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            flipped = bytearray(raw)
            flipped[i] ^= bit
            bad.write_bytes(bytes(flipped))
            with pytest.raises(ModelFileError) as e:
                read_state(str(bad))
            msg = str(e.value)
            assert msg.startswith(str(bad) + ": "), msg
            if "the solver state is corrupt: its content does not match the SHA-256 written with it" in msg:
                seen["sha"] += 1
            elif "it was written with a SHA-256 of its content, which is missing now" in msg:
                seen["missing"] += 1                 # the digest field's own tag was hit
            else:
                assert "not a valid binary SolverState" in msg, msg   # protobuf's own refusal
                seen["parse"] += 1
    assert seen["sha"] > 10 * seen["parse"] > 0 and seen["missing"] > 0   # most flips parse: the digest catches them


def test_a_corrupt_state_names_the_file_and_both_digests_and_changes_nothing(workdir):
    _, state_file, _ = snapshot_pair(workdir)
    state = caffe_pb2.SolverState()
    state.ParseFromString(Path(state_file).read_bytes())
    written = state.state_sha256[:12]
    state.history[0].data[3] += 1e-3               # parses, looks plausible: the silent case
    Path(state_file).write_bytes(state.SerializeToString(deterministic=True))
    fresh = make_solver(workdir, "SGD")
    before = weights(fresh)
    with pytest.raises(ModelFileError, match=re.escape(
            f"{state_file}: the solver state is corrupt: its content does not match the SHA-256 written with it "
            f"(written {written}, now ")) as e:
        fresh.restore(state_file)
    assert re.search(r"now [0-9a-f]{12}\); resume from another snapshot$", str(e.value))
    assert fresh.iter == 0 and all(np.array_equal(a, b) for a, b in zip(before, weights(fresh)))


def test_a_sealed_state_that_lost_its_digest_is_an_error(workdir):
    _, state_file, _ = snapshot_pair(workdir)
    state = caffe_pb2.SolverState()
    state.ParseFromString(Path(state_file).read_bytes())
    state.ClearField("state_sha256")
    Path(state_file).write_bytes(state.SerializeToString())
    with pytest.raises(ModelFileError, match="it was written with a SHA-256 of its content, which is missing now"):
        make_solver(workdir, "SGD").restore(state_file)


def test_a_caffemodel_from_another_run_is_an_error_naming_both_files(workdir):
    _, state_a, model_a = snapshot_pair(workdir, iters=3)
    other = make_solver(workdir, "SGD", 'snapshot_prefix: "other/run"')
    other.step(5)
    other.snapshot()
    model_b = other._last_snapshot[1]
    Path(model_a).write_bytes(Path(model_b).read_bytes())       # run B's weights under run A's name
    fresh = make_solver(workdir, "SGD")
    before = weights(fresh)
    with pytest.raises(ModelFileError) as e:
        fresh.restore(state_a)
    msg = str(e.value)
    assert msg.startswith(f"{state_a}: its weights file {model_a} is not the one written with it (SHA-256 "), msg
    assert msg.endswith("the file was replaced or overwritten (another run with the same snapshot_prefix?) "
                        "or is corrupt")
    assert fresh.iter == 0 and all(np.array_equal(a, b) for a, b in zip(before, weights(fresh)))
    # one flipped byte in the weights is the same error
    good = make_solver(workdir, "SGD")
    good.step(3)
    good.snapshot()
    raw = bytearray(Path(model_a).read_bytes())
    raw[len(raw) // 2] ^= 0x04
    Path(model_a).write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="is not the one written with it"):
        make_solver(workdir, "SGD").restore(state_a)


def test_hdf5_states_are_sealed_too(workdir):
    import h5py
    _, state_file, model = snapshot_pair(workdir, extra="snapshot_format: HDF5", solver_type="Adam")
    with h5py.File(state_file, "r") as f:
        assert re.fullmatch(b"[0-9a-f]{64}", f["state_sha256"][()])
        assert f["learned_net_sha256"][()] == hashlib.sha256(Path(model).read_bytes()).hexdigest().encode()
        history0 = np.asarray(f["history"]["0"][()], dtype=np.float32).tobytes()
        json_bytes = np.asarray(f["numcaffe_state"][()]).tobytes()
    raw = Path(state_file).read_bytes()
    assert raw.count(history0) == 1 and raw.count(json_bytes) == 1
    for at in (raw.index(history0) + 5, raw.index(json_bytes) + len(json_bytes) // 2):
        flipped = bytearray(raw)
        flipped[at] ^= 0x01                      # a value in a dataset: HDF5 reads it without complaint
        Path(state_file).write_bytes(bytes(flipped))
        with pytest.raises(ModelFileError, match=re.escape(f"{state_file}: the solver state is corrupt: its "
                                                           f"content does not match the SHA-256 written with it")):
            make_solver(workdir, "Adam", "snapshot_format: HDF5").restore(state_file)
    Path(state_file).write_bytes(raw)
    fresh = make_solver(workdir, "Adam", "snapshot_format: HDF5")
    fresh.restore(state_file)
    assert fresh.iter == 3
    raw_model = bytearray(Path(model).read_bytes())
    weights_bytes = fresh.net.params["ip1"][0].data.tobytes()
    raw_model[raw_model.index(weights_bytes) + 2] ^= 0x10
    Path(model).write_bytes(bytes(raw_model))
    with pytest.raises(ModelFileError, match=re.escape(f"{state_file}: its weights file {model} is not the one "
                                                       f"written with it")):
        make_solver(workdir, "Adam", "snapshot_format: HDF5").restore(state_file)


def test_a_damaged_history_blob_names_the_file_the_blob_its_parameter_and_the_sizes(workdir):
    _, state_file, _ = snapshot_pair(workdir)
    state = caffe_pb2.SolverState()
    state.ParseFromString(Path(state_file).read_bytes())
    for name in ("numcaffe_state", "learned_net_sha256", "state_sha256"):   # as a Caffe state: no digest
        state.ClearField(name)
    del state.history[2].data[5:]
    Path(state_file).write_bytes(state.SerializeToString())
    with pytest.raises(ModelFileError, match=re.escape(
            f"{state_file}: history blob 2 (ip2[0]) is corrupt (blob holds 5 values but its shape (3, 6) needs 18)")):
        make_solver(workdir, "SGD").restore(state_file)


def test_a_flipped_byte_in_an_hdf5_state_is_an_error_or_changes_nothing(workdir):
    # HDF5 files hold unused bytes; a flip there reads back the same values.  Anywhere else it is an
    # error naming the file (the digest, or HDF5's own structures), never another exception.
    from numcaffe.solvers.state import read_state
    _, state_file, _ = snapshot_pair(workdir, extra="snapshot_format: HDF5", solver_type="Adam")
    original = read_state(state_file)
    raw = Path(state_file).read_bytes()
    bad = workdir / "bad.solverstate.h5"
    outcomes = {"same": 0, "digest": 0, "other error": 0}
    for i in range(0, len(raw), 4):
        flipped = bytearray(raw)
        flipped[i] ^= 0x04
        bad.write_bytes(bytes(flipped))
        try:
            st = read_state(str(bad))
        except ModelFileError as e:
            assert str(e).startswith(str(bad) + ": "), e
            outcomes["digest" if "SHA-256" in str(e) else "other error"] += 1
            continue
        assert (st.iter, st.learned_net, st.current_step, st.extra, st.learned_net_sha256) == \
            (original.iter, original.learned_net, original.current_step, original.extra,
             original.learned_net_sha256)
        assert all(np.array_equal(a, b) for a, b in zip(st.history, original.history))
        outcomes["same"] += 1
    assert min(outcomes.values()) > 50, outcomes


def test_a_caffe_state_whose_learned_net_is_not_utf8_is_an_error(tmp_path):
    from numcaffe.solvers.state import read_state
    raw = bytearray((FIXTURES / "lenet_iter_10000.solverstate").read_bytes())
    at = raw.index(b"lenet_iter_10000.caffemodel")
    raw[at] ^= 0x80                                  # Caffe's state has no digest: protobuf parses this
    (tmp_path / "bad.solverstate").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"bad.solverstate: its learned_net is not UTF-8 text "
                                             r"\(b'\\xecenet_iter_10000.caffemodel'\); the file is corrupt$"):
        read_state(str(tmp_path / "bad.solverstate"))


def test_an_hdf5_state_without_numcaffes_datasets_loads_as_caffes(workdir):
    import h5py
    solver, state_file, _ = snapshot_pair(workdir, extra="snapshot_format: HDF5")
    with h5py.File(state_file, "a") as f:
        for name in ("numcaffe_state", "learned_net_sha256", "state_sha256"):
            del f[name]
        f["history"]["0"][0, 0] += 1.0             # no digest: nothing to tell this from a real change
    fresh = make_solver(workdir, "SGD", "snapshot_format: HDF5")
    fresh.restore(state_file)
    assert fresh.iter == 3 and fresh.history[0][0, 0] == solver.history[0][0, 0] + 1.0
    assert all(np.array_equal(a, b) for a, b in zip(weights(fresh), weights(solver)))


def test_a_hand_edited_state_resealed_as_docs_solver_md_says_loads(workdir):
    _, state_file, _ = snapshot_pair(workdir)
    state = caffe_pb2.SolverState()
    state.ParseFromString(Path(state_file).read_bytes())
    state.current_step = 5
    state.ClearField("state_sha256")
    state.state_sha256 = hashlib.sha256(state.SerializeToString(deterministic=True)).hexdigest()
    Path(state_file).write_bytes(state.SerializeToString())
    fresh = make_solver(workdir, "SGD")
    fresh.restore(state_file)
    assert fresh.iter == 3 and fresh.current_step == 5
