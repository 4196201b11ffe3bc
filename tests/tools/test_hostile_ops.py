"""Operator habits (issue 12, section 2): SIGTERM, two runs on one snapshot prefix, snapshots killed mid-write.

Every test runs the real command line in a subprocess, signals it as ``kill``, a scheduler or a
container runtime would, and checks the message, the exit status and that nothing on disk was lost:

* SIGTERM snapshots and stops, as Ctrl-C does (``--sigterm_effect``, default ``snapshot_stop``),
  also under ``--procs 2`` and also when it comes while the ranks are still starting;
* SIGTERM before training starts is one line, ``numcaffe: terminated``, status 143;
* a second training on the same ``snapshot_prefix`` is refused with one line naming the prefix and
  the first run's pid and host, exit 1, the first run's files untouched; ``kill -9`` of the first
  leaves no lock behind; resuming from the prefix after the first run ended works;
* the hidden temporary files of snapshots killed mid-write are removed at the next start, one log
  line each, and nothing else is.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile

from numcaffe.net.proto import caffe_pb2
from tests.tools.test_hostile_inputs import digests
from tests.tools.test_train_cli import wait_for

NET = """name: "tiny"
layer { name: "in" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: %(max_iter)d
display: %(display)d
snapshot: 0
snapshot_after_train: %(after)s
snapshot_prefix: "snap/run"
random_seed: 1
solver_mode: CPU
"""

ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
HOST = socket.gethostname()


def setup_run(d, max_iter=10 ** 8, display=1000, after=True):
    (d / "net.prototxt").write_text(NET)
    (d / "solver.prototxt").write_text(SOLVER % {"max_iter": max_iter, "display": display,
                                                 "after": "true" if after else "false"})
    os.makedirs(d / "snap", exist_ok=True)


def cmd(*argv):
    return [sys.executable, "-m", "numcaffe.tools.cli", *argv]


def env(**extra):
    return {**os.environ, **ROOT_ENV, **extra}


def start(d, *argv):
    return subprocess.Popen(cmd(*argv), cwd=d, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env())


def finish(proc, timeout=120):
    """The rest of ``proc``'s stderr and its exit status (killed if it does not end)."""
    try:
        _, rest = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, rest


def run(d, *argv, timeout=180, **extra_env):
    res = subprocess.run(cmd(*argv), cwd=d, capture_output=True, text=True, timeout=timeout,
                         env=env(**extra_env))
    return res.returncode, res.stdout, res.stderr


def snapshot_pairs(snap, *keep):
    """{iteration: {caffemodel, solverstate}} of the snapshots in ``snap``; every other file must be in
    ``keep`` (no lock file left, no temporary file)."""
    pairs = {}
    for name in set(os.listdir(snap)) - set(keep):
        m = re.fullmatch(r"run_iter_(\d+)\.(caffemodel|solverstate)", name)
        assert m, f"unexpected file {name} in {sorted(os.listdir(snap))}"
        pairs.setdefault(int(m.group(1)), set()).add(m.group(2))
    assert all(kinds == {"caffemodel", "solverstate"} for kinds in pairs.values()), pairs
    return pairs


def check_snapshot(snap, it):
    """The pair of iteration ``it`` is whole: the state names the model, both parse."""
    state = caffe_pb2.SolverState()
    state.ParseFromString((snap / f"run_iter_{it}.solverstate").read_bytes())
    assert state.iter == it and state.learned_net.endswith(f"run_iter_{it}.caffemodel")
    model = caffe_pb2.NetParameter()
    model.ParseFromString((snap / f"run_iter_{it}.caffemodel").read_bytes())
    assert [layer.name for layer in model.layer if layer.blobs] == ["ip"]


def errors(text):
    return [ln for ln in text.splitlines() if ln.startswith("numcaffe: error")]


# ----------------------------------------------------------------------------- SIGTERM

def test_sigterm_snapshots_and_stops_like_ctrl_c_and_the_run_resumes(tmp_path):
    setup_run(tmp_path)
    (tmp_path / "snap" / "notes.txt").write_text("the operator's own file\n")
    before = digests(tmp_path)
    proc = start(tmp_path, "train", "--solver", "solver.prototxt")
    wait_for(proc, r"\] Iteration 2000 \(")
    proc.send_signal(signal.SIGTERM)
    status, rest = finish(proc)
    assert status == 0, rest[-3000:]           # as Ctrl-C: the run stopped as asked, not killed
    assert "Traceback" not in rest and not errors(rest)
    assert "SIGTERM: snapshotting, then stopping" in rest
    assert "Optimization stopped early." in rest and rest.rstrip().endswith("Optimization Done.")
    assert rest.count("Snapshotting solver state") == 1
    pairs = snapshot_pairs(tmp_path / "snap", "notes.txt")
    (it,) = pairs
    assert it > 2000
    check_snapshot(tmp_path / "snap", it)
    after = digests(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before      # nothing the user had changed
    assert sorted(set(after) - set(before)) == [f"snap/run_iter_{it}.caffemodel", f"snap/run_iter_{it}.solverstate"]

    # the same prefix, resumed, once that run ended: the lock is gone with it
    setup_run(tmp_path, max_iter=it + 5, display=1)
    status, _, err = run(tmp_path, "train", "--solver", "solver.prototxt", "--snapshot",
                         f"snap/run_iter_{it}.solverstate")
    assert status == 0, err[-3000:]
    assert f"Resuming from snap/run_iter_{it}.solverstate" in err
    assert set(snapshot_pairs(tmp_path / "snap", "notes.txt")) == {it, it + 5}
    check_snapshot(tmp_path / "snap", it + 5)
    assert digests(tmp_path)[f"snap/run_iter_{it}.caffemodel"] == after[f"snap/run_iter_{it}.caffemodel"]


def test_sigterm_effect_stop_stops_without_a_snapshot(tmp_path):
    setup_run(tmp_path, after=False)
    proc = start(tmp_path, "train", "--solver", "solver.prototxt", "--sigterm_effect", "stop")
    wait_for(proc, r"\] Iteration 2000 \(")
    proc.send_signal(signal.SIGTERM)
    status, rest = finish(proc)
    assert status == 0, rest[-3000:]
    assert "SIGTERM: stopping" in rest and "Optimization stopped early." in rest
    assert "Snapshotting" not in rest and not errors(rest)
    assert os.listdir(tmp_path / "snap") == []          # no snapshot, and the lock file is gone


def test_sigterm_effect_none_ignores_it_and_the_run_ends_normally(tmp_path):
    setup_run(tmp_path, max_iter=30000)
    proc = start(tmp_path, "train", "--solver", "solver.prototxt", "--sigterm_effect", "none")
    wait_for(proc, r"\] Iteration 2000 \(")
    proc.send_signal(signal.SIGTERM)
    status, rest = finish(proc)
    assert status == 0, rest[-3000:]
    assert "SIGTERM" not in rest and "stopped early" not in rest and not errors(rest)
    assert "Iteration 30000, loss = " in rest          # it trained to max_iter after the signal
    assert set(snapshot_pairs(tmp_path / "snap")) == {30000}
    check_snapshot(tmp_path / "snap", 30000)


def test_an_invalid_sigterm_effect_is_one_line(tmp_path):
    setup_run(tmp_path)
    status, out, err = run(tmp_path, "train", "--solver", "solver.prototxt", "--sigterm_effect", "explode",
                           GLOG_minloglevel="1")
    assert status == 1 and out == ""
    assert err.splitlines() == ["numcaffe: error: invalid --sigterm_effect 'explode'; expected one of none, "
                                "stop, snapshot, snapshot_stop"], err


TERMINATE = "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)   # as `kill` would, right here\n"


def test_sigterm_during_start_up_is_one_line_and_status_143(tmp_path):
    """A layer plugin (entry point group numcaffe.layers) is imported before any command runs; one that
    sends its process SIGTERM stands for `kill` during those first seconds (importing numpy and Numba)."""
    dist = tmp_path / "terminating_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: terminating-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[numcaffe.layers]\nStop = terminating_plugin:Stop\n")
    (tmp_path / "terminating_plugin.py").write_text(TERMINATE + "Stop = None\n")
    setup_run(tmp_path)
    before = digests(tmp_path)
    path = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    for argv in (["train", "--solver", "solver.prototxt"], ["time", "--model", "net.prototxt"]):
        status, out, err = run(tmp_path, *argv, **path)
        assert (status, err, out) == (143, "numcaffe: terminated\n", ""), argv
    assert digests(tmp_path) == before


# ----------------------------------------------------------------------------- SIGTERM under --procs

def test_sigterm_under_procs_snapshots_once_from_rank_0_and_every_rank_stops(tmp_path):
    setup_run(tmp_path, display=100)
    proc = start(tmp_path, "train", "--solver", "solver.prototxt", "--procs", "2")
    wait_for(proc, r"\] Iteration 200 \(")
    proc.send_signal(signal.SIGTERM)
    status, rest = finish(proc)
    assert status == 0, rest[-3000:]
    assert not errors(rest) and "Traceback" not in rest
    assert rest.count("SIGTERM: snapshotting, then stopping") == 1      # rank 0's signal decides, and logs
    assert rest.count("Snapshotting solver state") == 1
    assert "Optimization stopped early." in rest
    (it,) = snapshot_pairs(tmp_path / "snap")
    assert it > 200
    check_snapshot(tmp_path / "snap", it)


def test_sighup_under_procs_snapshots_once_per_signal(tmp_path):
    """Every rank gets the forwarded signal, but not always before the same iteration: when each rank's
    copy counted, one SIGHUP gave two snapshots, at iterations k and k + 1.  Rank 0's copy decides."""
    setup_run(tmp_path, display=100)
    proc = start(tmp_path, "train", "--solver", "solver.prototxt", "--procs", "2")
    seen = wait_for(proc, r"\] Iteration 200 \(")
    for _ in range(3):
        proc.send_signal(signal.SIGHUP)
        seen += wait_for(proc, r"Snapshotting solver state")
        seen += wait_for(proc, r"\] Iteration \d+ \(")          # it trains on
    proc.send_signal(signal.SIGTERM)
    status, rest = finish(proc)
    log = "".join(seen) + rest
    assert status == 0, log[-3000:]
    assert not errors(log) and log.count("SIGHUP: snapshotting") == 3
    assert log.count("Snapshotting solver state") == 4                  # three SIGHUPs and the SIGTERM
    pairs = snapshot_pairs(tmp_path / "snap")
    assert len(pairs) == 4
    for it in pairs:
        check_snapshot(tmp_path / "snap", it)


def test_sigterm_while_the_ranks_start_waits_for_their_handlers(tmp_path):
    """The launcher is signalled right after it started mpiexec, while the ranks import numpy: before,
    SIGUSR1's default action killed them (exit 138, 'rank 0 was killed by signal 10').  Now the signal
    waits until every rank has its handlers, and the run snapshots and stops (at its first iteration).
    Deliberately no sleep: the ranks need a second or more to import numpy, so the signal comes early."""
    setup_run(tmp_path)
    proc = start(tmp_path, "train", "--solver", "solver.prototxt", "--procs", "2")
    wait_for(proc, r"Starting 2 ranks: ")
    proc.send_signal(signal.SIGTERM)
    status, rest = finish(proc)
    assert status == 0, rest[-3000:]
    assert not errors(rest) and "signal 10" not in rest and "Traceback" not in rest
    assert "Optimization stopped early." in rest
    (it,) = snapshot_pairs(tmp_path / "snap")     # iteration 1 unless the machine is very slow to forward
    check_snapshot(tmp_path / "snap", it)


# ----------------------------------------------------------------------------- one run per prefix

def stale_temp(folder, target):
    """A temporary file named as net/io.py's atomic_write names the one for ``target``."""
    fd, path = tempfile.mkstemp(prefix="." + target + ".", suffix=".tmp", dir=folder)
    os.write(fd, b"half a snapshot")
    os.close(fd)
    return os.path.basename(path)


def test_a_second_training_on_the_same_prefix_is_refused_naming_the_first(tmp_path):
    setup_run(tmp_path)
    first = start(tmp_path, "train", "--solver", "solver.prototxt")
    try:
        wait_for(first, r"\] Iteration 1000 \(")
        assert (tmp_path / "snap" / "run.lock").read_text() == f"{first.pid} {HOST}\n"
        writing = stale_temp(tmp_path / "snap", "run_iter_1500.caffemodel")   # as if the first were writing
        before = digests(tmp_path)
        expected = (f"numcaffe: error: snapshot_prefix 'snap/run' is in use by another training (pid {first.pid} "
                    f"on {HOST}, which holds snap/run.lock); wait for it to end, stop it, or give this run "
                    f"another snapshot_prefix")
        for extra in (("--tensorboard", "tb"), ("--procs", "2")):
            status, out, err = run(tmp_path, "train", "--solver", "solver.prototxt", *extra, GLOG_minloglevel="1")
            assert status == 1, (extra, err)
            assert errors(err) == [expected], (extra, err)
            assert "Traceback" not in err and out == ""
            assert digests(tmp_path) == before, extra      # the first run's temporary file included
        assert os.listdir(tmp_path / "tb") == []            # no event file from the refused run
        assert first.poll() is None                         # the first run trains on
        (tmp_path / "snap" / writing).unlink()
        first.send_signal(signal.SIGTERM)
        status, rest = finish(first)
        assert status == 0, rest[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    (it,) = snapshot_pairs(tmp_path / "snap")
    check_snapshot(tmp_path / "snap", it)


def test_kill_9_of_the_holder_leaves_no_lock_and_the_next_run_removes_its_stale_temp_files(tmp_path):
    setup_run(tmp_path)
    first = start(tmp_path, "train", "--solver", "solver.prototxt")
    try:
        wait_for(first, r"\] Iteration 1000 \(")
    finally:
        first.kill()                                        # SIGKILL: no handler, no clean-up
        first.wait()
    snap = tmp_path / "snap"
    assert (snap / "run.lock").exists()                     # the file stays; the kernel dropped the lock
    stale = [stale_temp(snap, "run_iter_1500.caffemodel"), stale_temp(snap, "run_iter_1500.solverstate"),
             stale_temp(snap, "run_best.caffemodel.h5")]
    others = [stale_temp(snap, "other_iter_1500.caffemodel"),   # another prefix's
              stale_temp(snap, "run_b_iter_3.caffemodel"),      # prefix "run_b", not "run"
              ".run_iter_5.caffemodel.tmp",                     # not a name mkstemp gives
              "run_notes.txt", ".run_iter_5.caffemodel.abcdefgh.bak"]
    for name in others[2:]:
        (snap / name).write_text("keep me\n")
    kept = {k: v for k, v in digests(tmp_path).items() if os.path.basename(k) in others}
    assert len(kept) == len(others)

    setup_run(tmp_path, max_iter=20, display=10)
    status, _, err = run(tmp_path, "train", "--solver", "solver.prototxt")
    assert status == 0, err[-3000:]
    removed = re.findall(r"Removed (\S+), left by an interrupted snapshot", err)
    assert sorted(removed) == sorted(os.path.join("snap", n) for n in stale)
    after = digests(tmp_path)
    assert {k: v for k, v in after.items() if os.path.basename(k) in others} == kept
    assert sorted(os.listdir(snap)) == sorted(others + ["run_iter_20.caffemodel", "run_iter_20.solverstate"])
    check_snapshot(snap, 20)
