"""Real MPI jobs: ``numcaffe train --procs 2`` (the pip-installed mpiexec, 2 ranks) on a small LeNet.

* 2 ranks at batch 8 give the weights of 1 process at batch 16 (50 iterations, relative difference
  of all weights <= 1e-5; float summation order is the only difference);
* two 2-rank runs give bitwise identical snapshots; resuming a 2-rank run from its snapshot is
  bitwise identical to the uninterrupted run;
* rank 0 alone writes files and logs; the test figures are the 1-process ones;
* a rank killed with SIGKILL ends the job within seconds with one line naming it;
* a NaN on one rank stops every rank, naming the layer, the iteration and the rank;
* Ctrl-C (SIGINT to ``numcaffe train --procs``) snapshots once, from rank 0, and every rank stops.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numcaffe.net.data.db import array_datum, open_writer
from numcaffe.net.proto import caffe_pb2

NET = """
name: "small_lenet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: %(batch)d backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "test_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 32 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """net: "%(net)s"
test_iter: 4 test_interval: 25 base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
lr_policy: "inv" gamma: 0.0001 power: 0.75 display: 10 max_iter: %(max_iter)d
snapshot: %(snapshot)d snapshot_prefix: "%(prefix)s" random_seed: 1701 solver_mode: CPU
"""


def write_images(path, n, seed):
    """n 12x12 grey images of 10 classes: a class pattern plus noise."""
    rs = np.random.RandomState(seed)
    patterns = np.random.RandomState(0).randint(0, 256, (10, 1, 12, 12))
    labels = rs.randint(0, 10, n)
    with open_writer(path, "lmdb") as w:
        for i in range(n):
            img = np.clip(patterns[labels[i]] + rs.randint(-60, 60, (1, 12, 12)), 0, 255).astype(np.uint8)
            w.put(f"{i:08d}".encode(), array_datum(img, int(labels[i])).SerializeToString())


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("mpi")
    write_images(str(d / "train_lmdb"), 320, 1)
    write_images(str(d / "test_lmdb"), 64, 2)
    for batch in (8, 16):
        (d / f"net{batch}.prototxt").write_text(NET % {"batch": batch})
    return d


def solver_file(d, name, batch, prefix, max_iter=50, snapshot=25):
    os.makedirs(d / os.path.dirname(prefix), exist_ok=True)
    path = d / f"{name}.prototxt"
    path.write_text(SOLVER % {"net": f"net{batch}.prototxt", "max_iter": max_iter, "snapshot": snapshot,
                              "prefix": prefix})
    return path.name


def train(d, solver, *args, procs=2, timeout=240):
    cmd = [sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", solver, *args]
    if procs > 1:
        cmd += ["--procs", str(procs)]
    return subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)


def weights(path):
    m = caffe_pb2.NetParameter()
    with open(path, "rb") as f:
        m.ParseFromString(f.read())
    return np.concatenate([np.array(b.data, dtype=np.float64) for layer in m.layer for b in layer.blobs])


@pytest.fixture(scope="module")
def runs(job):
    """Two identical 2-rank runs of 50 iterations (snapshots at 25 and 50) and the 1-process run at batch 16."""
    out = {}
    for name, extra in (("a", ()), ("b", ("--tensorboard", "tb_b"))):
        out[name] = train(job, solver_file(job, name, 8, f"{name}/run"), *extra)
        assert out[name].returncode == 0, out[name].stderr[-3000:]
    out["one"] = train(job, solver_file(job, "one", 16, "one/run"), procs=1)
    assert out["one"].returncode == 0, out["one"].stderr[-3000:]
    return out


def test_two_ranks_give_the_weights_of_one_process_at_the_global_batch(job, runs):
    one, two = weights(job / "one/run_iter_50.caffemodel"), weights(job / "a/run_iter_50.caffemodel")
    assert np.linalg.norm(two - one) / np.linalg.norm(one) <= 1e-5
    assert not np.array_equal(one, weights(job / "one/run_iter_25.caffemodel"))      # it did train


def test_test_figures_and_losses_are_the_one_process_ones(runs):
    def lines(log, what):
        return [ln.split("] ", 1)[1] for ln in log.splitlines() if what in ln]
    for what in ("Test net output", "Iteration 40 ("):
        got, want = lines(runs["a"].stderr, what), lines(runs["one"].stderr, what)
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):   # the figures to the printed 6 digits, but for the speed
            g, w = g.split("), loss")[-1], w.split("), loss")[-1]
            assert g == w or np.allclose([float(x) for x in g.replace("(", " ").split() if _num(x)],
                                         [float(x) for x in w.replace("(", " ").split() if _num(x)], rtol=1e-4)


def _num(x):
    try:
        float(x)
        return True
    except ValueError:
        return False


def assert_same_state(x, y):
    """Two solver states alike but for the weights file they name."""
    from numcaffe.solvers.state import read_state
    x, y = read_state(x), read_state(y)
    assert x.iter == y.iter and len(x.history) == len(y.history)
    assert all(h.tobytes() == g.tobytes() for h, g in zip(x.history, y.history))
    assert x.extra == y.extra


def test_two_runs_with_the_same_ranks_are_bitwise_identical(job, runs):
    for f in ("run_iter_25.caffemodel", "run_iter_50.caffemodel"):
        assert (job / "a" / f).read_bytes() == (job / "b" / f).read_bytes(), f
    assert_same_state(job / "a/run_iter_50.solverstate", job / "b/run_iter_50.solverstate")


def test_rank_0_alone_writes_and_logs(job, runs):
    assert sorted(os.listdir(job / "a")) == ["run_iter_25.caffemodel", "run_iter_25.solverstate",
                                             "run_iter_50.caffemodel", "run_iter_50.solverstate"]
    log = runs["a"].stderr
    assert log.count("] Iteration 10 (") == 1
    assert log.count("Snapshotting to binary proto file a/run_iter_25.caffemodel") == 1
    assert log.count("Network initialization done.") == 2        # rank 0's train and test nets
    assert "Data parallel over 2 ranks" in log
    assert len(os.listdir(job / "tb_b")) == 1             # run b's TensorBoard events: rank 0's writer alone


def test_resume_under_mpi_is_bitwise_identical(job, runs):
    os.makedirs(job / "r", exist_ok=True)
    for ext in ("caffemodel", "solverstate"):
        (job / "r" / f"run_iter_25.{ext}").write_bytes((job / "a" / f"run_iter_25.{ext}").read_bytes())
    solver = solver_file(job, "r", 8, "r/run")
    res = train(job, solver, "--snapshot", "r/run_iter_25.solverstate")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "order of the data changes" not in res.stderr
    assert (job / "r/run_iter_50.caffemodel").read_bytes() == (job / "a/run_iter_50.caffemodel").read_bytes()
    assert_same_state(job / "r/run_iter_50.solverstate", job / "a/run_iter_50.solverstate")


def _rank_pid(marker, rank):
    """The pid of the process of MPI rank ``rank`` whose command line names ``marker``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"OMPI_COMM_WORLD_RANK={rank}".encode() in f.read().split(b"\0"):
                    return int(entry)
        except OSError:
            continue
    return None


def _start_long_run(job, name):
    solver = solver_file(job, name, 8, f"{name}/run", max_iter=10 ** 7, snapshot=0)
    cmd = [sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", solver, "--procs", "2"]
    proc = subprocess.Popen(cmd, cwd=job, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:                 # until the ranks train
        lines.append(line)
        if "] Iteration 20 (" in line:
            break
    return proc, solver, lines


def test_a_killed_rank_ends_the_job_in_seconds_naming_it(job):
    proc, solver, _ = _start_long_run(job, "killed")
    try:
        pid = _rank_pid(solver, 1)
        assert pid is not None
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        rest = proc.stderr.read()
        proc.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    errors = [ln for ln in rest.splitlines() if ln.startswith("numcaffe: error")]
    assert errors == [f"numcaffe: error: rank 1 (pid {pid} on {os.uname().nodename.split('.')[0]}) was killed "
                      f"by signal 9 (Killed); every rank stopped"] or \
        (len(errors) == 1 and f"rank 1 (pid {pid}" in errors[0] and "signal 9" in errors[0]), rest[-2000:]
    assert proc.returncode != 0
    assert took < 10


def test_ctrl_c_snapshots_once_from_rank_0_and_every_rank_stops(job):
    proc, solver, _ = _start_long_run(job, "sigint")
    try:
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest[-2000:]
    files = os.listdir(job / "sigint")
    assert len(files) == 2 and {f.rsplit(".", 1)[1] for f in files} == {"caffemodel", "solverstate"}
    assert rest.count("Snapshotting to binary proto file") == 1
    assert "Optimization stopped early." in rest


def test_a_nan_on_one_rank_stops_every_rank_naming_layer_iteration_and_rank(job):
    d = job / "nan"
    os.makedirs(d, exist_ok=True)
    rs = np.random.RandomState(0)
    with open_writer(str(d / "lmdb"), "lmdb") as w:
        for i in range(16):
            x = rs.standard_normal((3, 1, 1)).astype(np.float32)
            if i == 5:                         # item 5: rank 1's at iteration 1 (batch 2 per rank)
                x[1] = np.inf
            w.put(f"{i:04d}".encode(), array_datum(x, i % 2).SerializeToString())
    (d / "net.prototxt").write_text("""
      layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "lmdb" batch_size: 2 backend: LMDB } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }""")
    (d / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 10 '
                                       'display: 1 snapshot_prefix: "snap/x" random_seed: 3 solver_mode: CPU')
    res = train(d, "solver.prototxt")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("numcaffe: error")]
    assert res.returncode == 1
    assert len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith("numcaffe: error: iteration 1 on rank 1: the first non-finite value is the "
                                "top blob 'ip' data of layer 'ip' (forward pass)"), errors[0]
    assert "snap/x_iter_1.solverstate" in errors[0]
    assert sorted(os.listdir(d / "snap")) == ["x_iter_1.caffemodel", "x_iter_1.solverstate"]


PYCAFFE_SCRIPT = '''
import os
import numcaffe.net.pycaffe as caffe


def solve(proto, rank, count):
    # python/train.py's solve(), with only the import changed
    assert caffe.has_nccl() is False and isinstance(caffe.NCCL.new_uid(), bytes)   # BVLC's test_nccl holds
    if os.environ.get("PLAIN"):   # a script that takes the has_nccl() False branch: one solver, no NCCL
        solver = caffe.SGDSolver(proto)
        assert (caffe.solver_count(), caffe.solver_rank()) == (count, rank)
        solver.step(solver.param.max_iter)
        return
    caffe.set_solver_count(count)
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.SGDSolver(proto)
    nccl = caffe.NCCL(solver, caffe.NCCL.new_uid())
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    solver.step(solver.param.max_iter)


solve("p.prototxt", int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"]))
'''


@pytest.mark.parametrize("plain", ["", "1"])
def test_a_pycaffe_nccl_loop_under_mpiexec_trains_as_numcaffe_train_procs(job, runs, plain):
    """With caffe.NCCL as python/train.py uses it, and without it (the branch a script takes on
    has_nccl() False): under mpiexec the solver averages the gradients either way."""
    from numcaffe.tools.procs import command
    (job / "p.py").write_text(PYCAFFE_SCRIPT)
    solver_file(job, "p", 8, "p/run")
    cmd, env, _ = command(2, [], dict(os.environ, PLAIN=plain))
    cmd = cmd[:cmd.index(sys.executable)] + ["-x", "PLAIN", sys.executable, "p.py"]
    res = subprocess.run(cmd, cwd=job, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (job / "p/run_iter_50.caffemodel").read_bytes() == (job / "a/run_iter_50.caffemodel").read_bytes()
    os.remove(job / "p/run_iter_50.caffemodel")


def test_one_process_resumes_a_two_rank_state_with_a_warning(job, runs, numcaffe_log, monkeypatch):
    from numcaffe.solvers import get_solver
    monkeypatch.chdir(job)
    solver = get_solver(str(job / "a.prototxt"))
    solver.restore(str(job / "a/run_iter_25.solverstate"))
    assert solver.iter == 25
    assert any("written by a run of 2 rank(s) and this run has 1" in m and "order of the data changes" in m
               for m in numcaffe_log.messages)
    np.testing.assert_array_equal(np.concatenate([b.data.ravel() for b in solver.net.learnable_params]),
                                  weights(job / "a/run_iter_25.caffemodel").astype(np.float32))
    solver.step(2)
    assert solver.iter == 27


def test_an_error_in_one_rank_ends_the_job_with_one_line_naming_the_rank(job):
    d = job / "corrupt"
    os.makedirs(d, exist_ok=True)
    with open_writer(str(d / "lmdb"), "lmdb") as w:
        for i in range(16):
            value = b"\xff\xff not a Datum" if i == 5 else array_datum(np.zeros((3, 1, 1), np.float32), 0)\
                .SerializeToString()
            w.put(f"{i:04d}".encode(), value)
    (d / "net.prototxt").write_text("""
      layer { name: "data" type: "Data" top: "data" top: "label"
              data_param { source: "lmdb" batch_size: 2 backend: LMDB } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }""")
    (d / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 10 '
                                       'display: 1 snapshot_prefix: "snap/x" random_seed: 3 solver_mode: CPU')
    start = time.monotonic()
    res = train(d, "solver.prototxt")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("numcaffe: error")]
    assert res.returncode != 0
    assert len(errors) == 1 and errors[0].startswith("numcaffe: error: rank 1: "), res.stderr[-3000:]
    assert "'0005'" in errors[0]                       # the record that rank 1 could not read
    assert time.monotonic() - start < 120
