"""``numcaffe parse-log``: Caffe's and numcaffe's logs become Caffe's train/test CSV tables."""
import csv
import math
import os
from pathlib import Path

import pytest

from numcaffe.tools.cli import main
from numcaffe.tools.parse_log import parse_lines, parse_log

LOG = Path(__file__).resolve().parents[1] / "fixtures" / "caffe" / "lenet_train.log"

# numcaffe's own log: glog's classic prefix (no year), a resumed run, two test nets, a NaN.
NUMCAFFE_LOG = """\
I1231 23:59:58.000000  4242 solver.py:120] Solving mlp
I1231 23:59:58.500000  4242 solver.py:300] Iteration 0, Testing net (#0)
I1231 23:59:58.600000  4242 solver.py:340]     Test net output #0: accuracy = 0.1
I1231 23:59:58.600000  4242 solver.py:340]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1231 23:59:58.700000  4242 solver.py:300] Iteration 0, Testing net (#1)
I1231 23:59:58.800000  4242 solver.py:340]     Test net output #0: accuracy = 0.12
I1231 23:59:59.000000  4242 solver.py:210] Iteration 0 (0 iter/s, 1.0s/10 iters), loss = 2.31
I1231 23:59:59.000000  4242 solver.py:220]     Train net output #0: loss = 2.31 (* 1 = 2.31 loss)
I1231 23:59:59.000000  4242 solver.py:220]     Train net output #1: aux = 0.5
I1231 23:59:59.000000  4242 sgd.py:90] Iteration 0, lr = 0.1
I0101 00:00:01.000000  4242 solver.py:210] Iteration 10 (5 iter/s, 2.0s/10 iters), loss = nan
I0101 00:00:01.000000  4242 solver.py:220]     Train net output #0: loss = nan (* 1 = nan loss)
I0101 00:00:01.000000  4242 solver.py:220]     Train net output #1: aux = 0.25
I0101 00:00:01.000000  4242 sgd.py:90] Iteration 10, lr = 0.05
I0101 00:00:02.000000  4242 solver.py:300] Iteration 20, Testing net (#0)
I0101 00:00:02.500000  4242 solver.py:340]     Test net output #0: accuracy = 0.5
I0101 00:00:02.500000  4242 solver.py:340]     Test net output #1: loss = 1.5 (* 1 = 1.5 loss)
"""


def test_caffe_fixture_log_tables():
    t = parse_log(LOG)
    assert t.train.columns == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert t.test.columns == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [r["NumIters"] for r in t.train.rows] == list(range(0, 10000, 100))
    assert [r["NumIters"] for r in t.test.rows] == list(range(0, 10001, 500))
    first, second = t.train.rows[0], t.train.rows[1]
    assert first["loss"] == 2.33144 and first["LearningRate"] == 0.01
    assert second["loss"] == 0.673964 and second["LearningRate"] == 0.00992565
    # seconds since the "Solving LeNet" line at 23:18:35.208741
    assert first["Seconds"] == pytest.approx(37.938161 - 35.208741, abs=1e-6)
    acc = {r["NumIters"]: r["accuracy"] for r in t.test.rows}
    assert acc[500] == 0.8184 and acc[1000] == 0.8599 and acc[2000] == 0.8763 and acc[10000] == 0.9005
    last = t.test.rows[-1]
    assert last["loss"] == 0.308913 and last["LearningRate"] == 0.00596843  # rate of iteration 9900
    assert all(b["Seconds"] >= a["Seconds"] for a, b in zip(t.train.rows, t.train.rows[1:]))


def test_numcaffe_log_with_two_test_nets_and_new_year():
    t = parse_lines(NUMCAFFE_LOG.splitlines(), year=2025)
    assert t.test.columns == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss", "net1/accuracy"]
    assert t.test.rows[0]["net1/accuracy"] == 0.12 and t.test.rows[0]["accuracy"] == 0.1
    assert "net1/accuracy" not in t.test.rows[1]
    assert t.train.columns == ["NumIters", "Seconds", "LearningRate", "loss", "aux"]
    r0, r1 = t.train.rows
    assert r0["Seconds"] == pytest.approx(1.0) and r1["Seconds"] == pytest.approx(3.0)  # over new year
    assert math.isnan(r1["loss"]) and r1["aux"] == 0.25 and r1["LearningRate"] == 0.05
    assert t.test.rows[1]["LearningRate"] == 0.05


def test_cli_writes_caffe_named_csvs(tmp_path, capsys):
    assert main(["parse-log", str(LOG), str(tmp_path)]) == 0
    train = tmp_path / "lenet_train.log.train"
    test = tmp_path / "lenet_train.log.test"
    with open(train) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert rows[1][0] == "0" and float(rows[1][3]) == 2.33144 and len(rows) == 101
    with open(test) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["accuracy"]) == 0.9005
    assert "lenet_train.log.train" in capsys.readouterr().out


def test_cli_default_outdir_is_beside_the_log(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(NUMCAFFE_LOG)
    assert main(["parse-log", str(log), "--delimiter", ";"]) == 0
    assert (tmp_path / "run.log.train").read_text().splitlines()[0] == "NumIters;Seconds;LearningRate;loss;aux"
    assert os.path.exists(tmp_path / "run.log.test")


def test_cli_makes_a_missing_outdir(tmp_path, capsys):
    out = tmp_path / "curves" / "run1"
    assert main(["parse-log", str(LOG), str(out)]) == 0
    assert (out / "lenet_train.log.train").read_text().startswith("NumIters,Seconds,LearningRate,loss\n")
    assert (out / "lenet_train.log.test").exists()
    assert str(out / "lenet_train.log.train") in capsys.readouterr().out


@pytest.mark.parametrize("argv_tail,needle", [
    (["missing.log"], "no such log file"),
    (["empty.log"], "no training or test output"),
    (["good.log", "good.log"], "cannot create the output directory"),     # a file in the way
    (["good.log", "good.log/sub"], "cannot create the output directory"),
])
def test_cli_errors(tmp_path, monkeypatch, capsys, argv_tail, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.log").write_text("hello\nworld\n")
    (tmp_path / "good.log").write_text(NUMCAFFE_LOG)
    assert main(["parse-log"] + argv_tail) == 1
    err = capsys.readouterr().err
    assert err.startswith("numcaffe: error: ") and needle in err and "Traceback" not in err


TINY_NET = """name: "tiny"
layer { name: "d" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""
TINY_SOLVER = """net: "net.prototxt"
test_iter: 2 test_interval: 10 base_lr: 0.01 display: 5 max_iter: 20
lr_policy: "step" stepsize: 10 gamma: 0.5 snapshot_after_train: false random_seed: 1
"""


def test_a_real_numcaffe_training_log(tmp_path, monkeypatch, capsys):
    from numcaffe.tools.cli import _commands
    if "train" not in _commands():
        pytest.skip("numcaffe train is not available")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    (tmp_path / "solver.prototxt").write_text(TINY_SOLVER)
    capsys.readouterr()
    assert main(["train", "--solver", "solver.prototxt", "--progress", "off"]) == 0
    log = tmp_path / "train.log"
    log.write_text(capsys.readouterr().err)
    t = parse_log(log)
    assert [r["NumIters"] for r in t.train.rows] == [0, 5, 10, 15]
    assert [r["NumIters"] for r in t.test.rows] == [0, 10, 20]
    assert [r["LearningRate"] for r in t.train.rows] == [0.01, 0.01, 0.005, 0.005]
    assert t.train.outputs == ["loss"] and t.test.outputs == ["loss"]
    assert all(r["Seconds"] >= 0 for r in t.train.rows + t.test.rows)
