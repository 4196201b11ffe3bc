"""``--threads N`` on every command; bad counts, from the flag or NUMCAFFE_THREADS, are one line and exit 1."""
import os
import subprocess
import sys

import pytest

from numcaffe.net import threads
from numcaffe.tools.cli import _commands, build_parser
from tests.net.test_threads import restore_budget  # noqa: F401 (autouse: each test leaves the budget as it found it)
from tests.tools.test_errors import assert_clean_error, cli

COMMANDS = sorted(_commands())


def test_every_command_has_the_threads_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == COMMANDS
    for name, p in sub.choices.items():
        flags = {o for a in p._actions for o in a.option_strings}
        assert "--threads" in flags, name


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "two"])
def test_a_bad_thread_count_is_one_line_and_exit_1_for_every_command(command, bad, capsys):
    status, _, err = cli([command, f"--threads={bad}"], capsys)
    assert_clean_error(status, err, "--threads", "positive whole number", repr(bad))


def test_caffe_spelling_and_a_good_count_set_the_budget(tmp_path, capsys):
    status, out, _ = cli(["layers", "-threads", "1"], capsys)
    assert status == 0 and "Convolution" in out
    assert threads.count() == 1


def run(args, **env):
    return subprocess.run([sys.executable, "-m", "numcaffe.tools.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_a_bad_numcaffe_threads_is_one_line_and_exit_1():
    res = run(["layers"], NUMCAFFE_THREADS="0")
    assert res.returncode == 1
    assert res.stderr.strip() == "numcaffe: error: NUMCAFFE_THREADS must be a positive whole number of threads, got '0'"


def test_the_flag_sizes_the_pools_before_numpy_loads_and_the_users_variables_stay_otherwise():
    probe = ("import os, sys; from numcaffe.tools import cli; cli._early_threads(sys.argv[1:]); "
             "print('numpy' in sys.modules, *(os.environ.get(v) for v in "
             "('OPENBLAS_NUM_THREADS', 'NUMBA_NUM_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_THREAD_TIMEOUT')))")
    env = {k: v for k, v in os.environ.items() if k not in (*threads.POOL_VARIABLES, threads.ENV, *threads.QUIET_POOLS)}

    def probed(*argv, **extra):
        res = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                             env={**env, **extra}, timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()
    assert probed("train", "--threads", "3") == ["False", "3", "3", "3", "4"]
    assert probed("train", NUMCAFFE_THREADS="2") == ["False", "2", "2", "2", "4"]
    # not asked for: the user's own variables (``--procs`` gives each rank 1 only when none is set)
    assert probed("train", OPENBLAS_NUM_THREADS="1") == ["False", "1", "None", "None", "4"]
