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
