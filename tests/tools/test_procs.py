"""``numcaffe train --procs N`` (tools/procs.py) and a rank started without mpi4py: commands, environment,
Open MPI's reports turned into one line, and the one-line refusals."""
import importlib.util
import io
import os
import subprocess
import sys

import pytest

from numcaffe.tools import procs
from numcaffe.tools.cli import main


def test_strip_procs_keeps_everything_else():
    argv = ["train", "--solver", "s.prototxt", "--procs", "2", "--weights=w", "--procs=4", "--debug"]
    assert procs.strip_procs(argv) == ["train", "--solver", "s.prototxt", "--weights=w", "--debug"]


def test_command_uses_the_mpiexec_next_to_python_one_thread_per_rank_and_root(monkeypatch):
    monkeypatch.setattr(procs, "cores", lambda: 2)
    env = {"PATH": "/usr/bin"}
    cmd, child, notes = procs.command(2, ["train", "--solver", "s"], env)
    assert cmd[0] == os.path.join(os.path.dirname(sys.executable), "mpiexec") and cmd[1:3] == ["-n", "2"]
    assert cmd[-6:] == [sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", "s"]
    assert "--oversubscribe" not in cmd
    assert all(child[v] == "1" for v in procs.THREAD_VARIABLES)
    assert all(["-x", v] == cmd[i:i + 2] for v in procs.THREAD_VARIABLES for i in [cmd.index(v) - 1])
    if os.geteuid() == 0:
        assert child["OMPI_ALLOW_RUN_AS_ROOT"] == "1" == child["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"]
        assert len(notes) == 1 and "root" in notes[0]
    assert env == {"PATH": "/usr/bin"}              # the caller's environment is left alone


def test_user_thread_settings_win_and_more_ranks_than_cores_oversubscribe(monkeypatch):
    monkeypatch.setattr(procs, "cores", lambda: 2)
    cmd, child, _ = procs.command(3, ["train"], {"OMP_NUM_THREADS": "2"})
    assert child["OMP_NUM_THREADS"] == "2" and "OPENBLAS_NUM_THREADS" not in child
    assert "--oversubscribe" in cmd


def test_without_mpi4py_procs_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mpi4py" else real(name, *a))
    assert main(["train", "--solver", "x.prototxt", "--procs", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["numcaffe: error: --procs runs the ranks over MPI, which needs mpi4py and Open MPI: "
                   "pip install 'numcaffe[mpi]'"]


@pytest.mark.parametrize("flag", [["--procs", "0"], ["--procs", "-1"], ["--procs=-2"], ["-procs", "0"]])
def test_procs_takes_one_or_more(flag, capsys):
    assert main(["train", "--solver", "x.prototxt"] + flag) == 1
    value = flag[-1].split("=")[-1]
    assert capsys.readouterr().err.splitlines() == [
        f"numcaffe: error: --procs takes a number of processes N >= 1 (got {value})"]


def test_more_procs_than_cores_is_a_warning_not_a_refusal(monkeypatch, capsys):
    monkeypatch.setattr(procs, "cores", lambda: 2)
    started = []
    monkeypatch.setattr(procs, "launch", lambda n, argv, log: started.append((n, argv)) or 0)
    assert main(["train", "--solver", "x.prototxt", "--procs", "3"]) == 0
    assert started == [(3, ["train", "--solver", "x.prototxt", "--procs", "3"])]
    warnings = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines() if line.startswith("W")]
    assert warnings == ["--procs 3: more processes than the 2 core(s) this machine gives numcaffe; they take turns "
                        "(oversubscribed), which works but is usually slower than --procs 2"]
    started.clear()
    assert main(["train", "--solver", "x.prototxt", "--procs", "2"]) == 0 and started
    assert "more processes than" not in capsys.readouterr().err


V1_NET = """name: "v1"
layers { name: "d" type: DUMMY_DATA top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } data_filler { type: "gaussian" } } }
layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "ip" blobs_lr: 1 blobs_lr: 2
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layers { name: "loss" type: EUCLIDEAN_LOSS bottom: "ip" bottom: "y" top: "loss" }
"""
OLD_SOLVER = ('net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 display: 1 solver_type: SGD '
              'snapshot: 3 snapshot_prefix: "snap/x" random_seed: 1 solver_mode: CPU')


def test_a_real_oversubscribed_job_warns_once_and_rank_0_alone_says_the_upgrades(tmp_path):
    """2 ranks on one core (this process's affinity): the warning, and each upgrade notice, said once."""
    (tmp_path / "net.prototxt").write_text(V1_NET)
    (tmp_path / "solver.prototxt").write_text(OLD_SOLVER)
    (tmp_path / "snap").mkdir()
    res = subprocess.run([sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", "solver.prototxt",
                          "--procs", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                         preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert err.count("more processes than the 1 core(s)") == 1
    assert "--oversubscribe" in err and "Data parallel over 2 ranks" in err
    assert err.count("numcaffe: solver.prototxt: upgraded deprecated solver_type") == 1
    assert err.count("numcaffe: net.prototxt: upgraded 3 layer(s) from the deprecated V1") == 1
    assert sorted(os.listdir(tmp_path / "snap")) == ["x_iter_3.caffemodel", "x_iter_3.solverstate"]


def test_a_rank_of_a_launcher_without_mpi4py_refuses_instead_of_training_alone(tmp_path):
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0",
               PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", "missing.prototxt"],
                         env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "numcaffe: error: started by an MPI launcher as one of 2 ranks, but mpi4py is not installed, and 2 "
        "separate trainings would overwrite each other's snapshots; pip install 'numcaffe[mpi]'"]


BOX = "-" * 74 + "\n"


@pytest.mark.parametrize("report, seen, expected", [
    ("prterun noticed that process rank 1 with PID 9715 on node vm exited on\nsignal 9 (Killed).\n", False,
     "numcaffe: error: rank 1 (pid 9715 on vm) was killed by signal 9 (Killed); every rank stopped\n"),
    ("prterun detected that one or more processes exited with non-zero status,\nthus causing the job to be "
     "terminated. The first process to do so was:\n\n   Process name: [prterun-vm-13329@1,1]\n"
     "   Exit code:    1\n", False, "numcaffe: error: rank 1 exited with status 1; every rank stopped\n"),
    ("prterun detected that one or more processes exited with non-zero status,\nthus causing the job to be "
     "terminated. The first process to do so was:\n\n   Process name: [prterun-vm-13329@1,1]\n"
     "   Exit code:    1\n", True, ""),
    ("something else Open MPI says\n", False, "something else Open MPI says\n"),   # kept, less the rules
])
def test_open_mpi_reports_become_one_line(report, seen, expected):
    lines = ("numcaffe: error: rank 1: bad\n" if seen else "") + "I1203 log line\n" + BOX + report + BOX
    out = io.StringIO()
    procs.relay(io.BytesIO(lines.encode()), out)
    head = ("numcaffe: error: rank 1: bad\n" if seen else "") + "I1203 log line\n"
    assert out.getvalue() == head + expected


def test_procs_refuses_a_plot_format_in_the_launcher_before_any_rank_starts(monkeypatch, capsys):
    started = []
    monkeypatch.setattr(procs, "launch", lambda n, argv, log: started.append((n, argv)) or 0)
    assert main(["train", "--solver", "x.prototxt", "--procs", "2", "--plot", "curves.xyz"]) == 1
    assert not started
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("numcaffe: error: curves.xyz: unsupported plot format '.xyz'")
    assert main(["train", "--solver", "x.prototxt", "--procs", "2", "--plot", "curves.png"]) == 0 and started
