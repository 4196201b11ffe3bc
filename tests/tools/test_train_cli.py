"""`numcaffe train` and `numcaffe test` end to end: train, Ctrl-C, resume, test, fine-tune, the log."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numcaffe.net.proto import caffe_pb2
from numcaffe.tools.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


def copy_example(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(CONFIGS / name, dst, ignore=shutil.ignore_patterns("snapshots", "__pycache__"))
    return dst


def set_fields(path, **fields):
    """Rewrite a prototxt solver with some fields replaced."""
    from google.protobuf import text_format
    from numcaffe.net.config import read_message
    param = read_message(str(path), caffe_pb2.SolverParameter)
    for k, v in fields.items():
        setattr(param, k, v)
    path.write_text(text_format.MessageToString(param))
    return path


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err.splitlines()


def messages(lines):
    return [GLOG.sub("", l) for l in lines if GLOG.match(l)]


def test_xor_example_trains_to_full_accuracy_with_caffes_log(tmp_path, capsys):
    xor = copy_example("xor", tmp_path)
    status, lines = run_cli(capsys, "train", "--solver", str(xor / "solver.yaml"))
    assert status == 0
    msgs = messages(lines)
    tests = [float(m.split("= ")[1]) for m in msgs if m.startswith("    Test net output #0: accuracy = ")]
    assert tests[-1] == 1.0
    for needle in (r"Iteration 100 \([\d.e+-]+ iter/s, [\d.e+-]+s/100 iters\), loss = [\d.e+-]+$",
                   r"    Train net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$",
                   r"Iteration 100, lr = 0.1$",
                   r"Iteration 250, Testing net \(#0\)$",
                   r"    Test net output #0: accuracy = 1$",
                   r"Snapshotting to binary proto file \S+xor_iter_500.caffemodel$",
                   r"Snapshotting solver state to binary proto file \S+xor_iter_500.solverstate$",
                   r"Optimization Done.$"):
        assert any(re.match(needle, m) for m in msgs), needle
    # every log message is a glog line, with its file:line (only the solver parameter dump spans lines)
    keyed = [l for l in lines if re.search(r"Iteration|net output|Snapshotting|Optimization|Solving|lr = ", l)]
    assert keyed and all(GLOG.match(l) for l in keyed)
    for f in ("xor_iter_500.caffemodel", "xor_iter_500.solverstate", "xor_iter_1000.caffemodel"):
        assert (xor / "snapshots" / f).exists()

    # Caffe's own parse_log.py regexes read it
    caffe_train = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
    caffe_lr = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
    assert sum(bool(caffe_train.search(l)) for l in lines) == 10
    assert sum(bool(caffe_lr.search(l)) for l in lines) == 10
    first = next(l for l in lines if "Solving" in l).split()
    assert re.match(r"I\d{4}$", first[0]) and re.match(r"\d\d:\d\d:\d\d\.\d{6}$", first[1])
    # and so does numcaffe's parse-log
    from numcaffe.tools.parse_log import parse_lines
    tables = parse_lines(lines)
    assert [int(r["NumIters"]) for r in tables.test.rows] == [0, 250, 500, 750, 1000]
    assert tables.test.rows[-1]["accuracy"] == 1.0
    assert tables.train.rows[1]["LearningRate"] == pytest.approx(0.1)

    # numcaffe test on the trained weights
    status, lines = run_cli(capsys, "test", "--model", str(xor / "net.prototxt"),
                            "--weights", str(xor / "snapshots" / "xor_iter_1000.caffemodel"), "-iterations=3")
    assert status == 0
    msgs = messages(lines)
    assert "Running for 3 iterations." in msgs
    assert "Batch 2, accuracy = 1" in msgs
    assert "accuracy = 1" in msgs
    assert any(re.match(r"Loss: [\d.e+-]+$", m) for m in msgs)
    assert any(re.match(r"loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$", m) for m in msgs)


def test_finetune_with_weights_and_flag_errors(tmp_path, capsys):
    xor = copy_example("xor", tmp_path)
    set_fields(xor / "solver.prototxt", max_iter=300, snapshot=0)
    assert run_cli(capsys, "train", "-solver", str(xor / "solver.prototxt"))[0] == 0
    trained = xor / "snapshots" / "xor_iter_300.caffemodel"
    set_fields(xor / "solver.prototxt", max_iter=0, snapshot_after_train=False)
    status, lines = run_cli(capsys, "train", f"--solver={xor / 'solver.prototxt'}", f"--weights={trained}")
    assert status == 0
    msgs = messages(lines)
    assert f"Finetuning from {trained}" in msgs
    first_test = msgs.index("Iteration 0, Testing net (#0)")
    assert msgs[first_test + 1] == "    Test net output #0: accuracy = 1"

    wider = (xor / "net.prototxt").read_text().replace("num_output: 4", "num_output: 8")
    (xor / "net.prototxt").write_text(wider)
    status, lines = run_cli(capsys, "train", "--solver", str(xor / "solver.prototxt"), "--weights", str(trained))
    assert status == 1
    assert any(l.startswith("numcaffe: error: ") and "layer 'hidden' parameter 0" in l and "(4, 2)" in l
               and "(8, 2)" in l for l in lines), lines[-3:]

    status, lines = run_cli(capsys, "train", "--solver", str(xor / "solver.prototxt"), "--weights", str(trained),
                            "--snapshot", "x.solverstate")
    assert status == 1 and "numcaffe: error: give a snapshot to resume training or weights to finetune but not both" \
        in lines
    status, lines = run_cli(capsys, "train")
    assert status == 1 and "numcaffe: error: need a solver definition to train (--solver)" in lines
    status, lines = run_cli(capsys, "train", "--solver", str(xor / "solver.prototxt"), "--sigint_effect", "explode")
    assert status == 1 and any("invalid --sigint_effect 'explode'" in l for l in lines)
    status, lines = run_cli(capsys, "test", "--model", str(xor / "net.prototxt"))
    assert status == 1 and "numcaffe: error: need model weights to score (--weights)" in lines


def wait_for(proc, pattern, timeout=120):
    """Read ``proc``'s stderr until a line matches; the lines read."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return seen
    proc.kill()
    raise AssertionError("pattern not seen: " + pattern + "\n" + "".join(seen[-20:]))


def test_ctrl_c_snapshots_and_resume_continues_the_identical_run(tmp_path, capsys):
    logreg = copy_example("logreg", tmp_path)
    long_run = set_fields(logreg / "solver.prototxt", max_iter=10 ** 7, snapshot=0, display=100, test_interval=400,
                          snapshot_prefix="snapshots/long")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", str(long_run)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    wait_for(proc, r"\] Iteration 300 \(")
    proc.send_signal(signal.SIGHUP)          # SIGHUP: snapshot and go on
    seen = wait_for(proc, r"Snapshotting solver state to binary proto file \S+long_iter_\d+\.solverstate")
    hup_iter = int(re.search(r"long_iter_(\d+)\.solverstate", seen[-1]).group(1))
    wait_for(proc, rf"\] Iteration {(hup_iter // 100 + 1) * 100} \(")
    proc.send_signal(signal.SIGINT)          # Ctrl-C: snapshot, then stop
    _, rest = proc.communicate(timeout=90)
    assert proc.returncode == 0, rest
    assert os.path.exists(tmp_path / "logreg" / "snapshots" / f"long_iter_{hup_iter}.solverstate")
    assert "Optimization stopped early." in rest
    m = re.search(r"Snapshotting solver state to binary proto file (\S+long_iter_(\d+)\.solverstate)", rest)
    assert m, rest
    state, k = m.group(1), int(m.group(2))
    assert k > hup_iter >= 300
    state = state if os.path.isabs(state) else str(tmp_path / state)
    assert os.path.exists(state) and os.path.exists(state.replace(".solverstate", ".caffemodel"))
    assert rest.count("Snapshotting solver state") == 1    # snapshot_stop: one snapshot, not two

    # resume from it to k + 30, and compare with a straight run to k + 30: the same bytes
    end = k + 30
    set_fields(logreg / "solver.prototxt", max_iter=end, snapshot=0, snapshot_prefix="snapshots/resumed")
    status, lines = run_cli(capsys, "train", "--solver", str(logreg / "solver.prototxt"), "--snapshot", state)
    assert status == 0
    msgs = messages(lines)
    assert f"Resuming from {state}" in msgs and "SGDSolver: restoring history" in msgs
    set_fields(logreg / "solver.prototxt", snapshot_prefix="snapshots/straight")
    assert run_cli(capsys, "train", "--solver", str(logreg / "solver.prototxt"))[0] == 0
    resumed = (logreg / "snapshots" / f"resumed_iter_{end}.caffemodel").read_bytes()
    straight = (logreg / "snapshots" / f"straight_iter_{end}.caffemodel").read_bytes()
    assert resumed == straight
    a, b = caffe_pb2.SolverState(), caffe_pb2.SolverState()
    a.ParseFromString((logreg / "snapshots" / f"resumed_iter_{end}.solverstate").read_bytes())
    b.ParseFromString((logreg / "snapshots" / f"straight_iter_{end}.solverstate").read_bytes())
    assert a.iter == b.iter == end
    assert [list(h.data) for h in a.history] == [list(h.data) for h in b.history]


def test_gpu_flag_is_accepted_with_a_warning(tmp_path, capsys):
    xor = copy_example("xor", tmp_path)
    set_fields(xor / "solver.prototxt", max_iter=1, snapshot_after_train=False, test_interval=1000)
    status, lines = run_cli(capsys, "train", "--solver", str(xor / "solver.prototxt"), "--gpu", "0")
    assert status == 0
    assert any(l.startswith("W") and "--gpu 0 ignored: numcaffe runs on the CPU" in l for l in lines)


def test_solver_mode_gpu_is_accepted_with_a_warning(tmp_path, capsys):
    # without --gpu, Caffe takes the mode (and device_id) from the solver; numcaffe says it runs on the CPU
    xor = copy_example("xor", tmp_path)
    set_fields(xor / "solver.prototxt", max_iter=1, snapshot_after_train=False, test_interval=1000,
               solver_mode=caffe_pb2.SolverParameter.GPU, device_id=1)
    status, lines = run_cli(capsys, "train", "--solver", str(xor / "solver.prototxt"))
    assert status == 0
    assert any(l.startswith("W") and "solver_mode: GPU (device_id 1) ignored: numcaffe runs on the CPU" in l
               for l in lines)


def test_iterations_flag_is_accepted_with_a_warning(tmp_path, capsys):
    # Caffe's flags are global: a script may pass --iterations to train, which Caffe ignores there
    xor = copy_example("xor", tmp_path)
    set_fields(xor / "solver.prototxt", max_iter=3, snapshot_after_train=False, test_interval=1000, display=1)
    status, lines = run_cli(capsys, "train", "--solver", str(xor / "solver.prototxt"), "--iterations", "50")
    assert status == 0
    assert any(l.startswith("W") and "--iterations 50 ignored: train runs to the solver's max_iter (3)" in l
               for l in lines)
    assert any("Iteration 3, loss" in l for l in lines) and not any("Iteration 4," in l for l in lines)
