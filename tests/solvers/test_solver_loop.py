"""The training loop: Caffe's Step/Solve order, tests, snapshots, signals, early stopping, net forms."""
import os
import re
import sys

import numpy as np
import pytest

from numcaffe.net.errors import ConfigError, ModelFileError
from numcaffe.net.proto import caffe_pb2
from numcaffe.solvers import AdamSolver, SGDSolver, get_solver
from tests.solvers.nets import (CLASSIFIER_NET, DROPOUT, least_squares_solver, solver_param, write_classifier_data,
                                write_solver)

BASE = ('net: "net.prototxt" type: "SGD" momentum: 0.9 base_lr: 0.05 lr_policy: "fixed" test_iter: 2 '
        'test_interval: 4 display: 2 max_iter: 8 snapshot_prefix: "snap/run" random_seed: 3 ')


@pytest.fixture
def workdir(tmp_path):
    write_classifier_data(tmp_path)
    (tmp_path / "net.prototxt").write_text(CLASSIFIER_NET % dict(middle=""))
    return tmp_path


def make(workdir, extra="", base=BASE, **kw):
    return get_solver(str(write_solver(workdir, base + extra)), **kw)


def test_solve_logs_caffes_messages_in_caffes_order(workdir, numcaffe_log):
    solver = make(workdir, "snapshot: 6")
    solver.solve()
    msgs = numcaffe_log.messages
    keep = [m for m in msgs if re.match(r"(Iteration \d+|    (Train|Test) net output|Snapshotting|Optimization)", m)]
    pattern = [
        r"Iteration 0, Testing net \(#0\)",
        r"    Test net output #0: acc = [\d.]+$",
        r"    Test net output #1: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$",
        r"Iteration 0 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = [\d.e+-]+$",
        r"    Train net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$",
        r"Iteration 0, lr = 0.05$",
        r"Iteration 2 \(", r"    Train net output #0: loss", r"Iteration 2, lr = 0.05$",
        r"Iteration 4, Testing net \(#0\)", r"    Test net output #0: acc", r"    Test net output #1: loss",
        r"Iteration 4 \(", r"    Train net output #0: loss", r"Iteration 4, lr = 0.05$",
        r"Snapshotting to binary proto file \S*snap/run_iter_6.caffemodel$",
        r"Snapshotting solver state to binary proto file \S*snap/run_iter_6.solverstate$",
        r"Iteration 6 \(", r"    Train net output #0: loss", r"Iteration 6, lr = 0.05$",
        r"Snapshotting to binary proto file \S*snap/run_iter_8.caffemodel$",
        r"Snapshotting solver state to binary proto file \S*snap/run_iter_8.solverstate$",
        r"Iteration 8, loss = [\d.e+-]+$",
        r"Iteration 8, Testing net \(#0\)", r"    Test net output #0: acc", r"    Test net output #1: loss",
        r"Optimization Done.$",
    ]
    assert len(keep) == len(pattern), "\n".join(keep)
    for line, pat in zip(keep, pattern):
        assert re.match(pat, line), (pat, line)
    assert msgs.index("Solving classifier") < msgs.index("Learning Rate Policy: fixed") < msgs.index(keep[0])
    for f in ("run_iter_6.caffemodel", "run_iter_6.solverstate", "run_iter_8.caffemodel", "run_iter_8.solverstate"):
        assert (workdir / "snap" / f).exists()


def test_test_initialization_false_and_test_compute_loss(workdir, numcaffe_log):
    solver = make(workdir, "test_initialization: false test_compute_loss: true snapshot_after_train: false")
    solver.solve()
    tests = [m for m in numcaffe_log.messages if "Testing net" in m]
    assert tests == ["Iteration 4, Testing net (#0)", "Iteration 8, Testing net (#0)"]
    assert sum(m.startswith("Test loss: ") for m in numcaffe_log.messages) == 2
    assert not (workdir / "snap").exists() or not os.listdir(workdir / "snap")


def test_test_scores_are_means_over_test_iter_with_shared_weights(workdir):
    solver = make(workdir, "test_interval: 100 test_initialization: false")
    solver.step(3)
    test_net = solver.test_nets[0]
    # no test has run yet, and the test net already reads the trained weights (pycaffe-style use)
    assert np.array_equal(test_net.params["ip1"][0].data, solver.net.params["ip1"][0].data)
    scores = solver.test(0)
    # the test net reads the train net's weights
    for name in ("ip1", "ip2"):
        for mine, theirs in zip(test_net.params[name], solver.net.params[name]):
            assert mine.shares_data_with(theirs)
    # recompute by hand: two batches of the 12 test rows (after the two batches this test read, it wraps)
    import h5py
    with h5py.File(workdir / "test0.h5", "r") as f:
        x, y = f["data"][()], f["label"][()]
    w1, b1 = solver.net.params["ip1"][0].data, solver.net.params["ip1"][1].data
    w2, b2 = solver.net.params["ip2"][0].data, solver.net.params["ip2"][1].data
    logits = (x @ w1.T + b1) @ w2.T + b2
    acc = (logits.argmax(1) == y).reshape(2, 6).mean(1)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -logp[np.arange(12), y.astype(int)].reshape(2, 6).mean(1)
    assert scores["acc"] == pytest.approx(acc.mean(), abs=1e-6)
    assert scores["loss"] == pytest.approx(loss.mean(), rel=1e-5)


def test_several_test_nets_with_test_state_and_net_forms(workdir):
    staged = (CLASSIFIER_NET % dict(middle="")).replace(
        'layer { name: "acc"', 'layer { name: "acc2" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc2" '
        'accuracy_param { top_k: 2 } include { phase: TEST stage: "top2" } }\nlayer { name: "acc"')
    (workdir / "staged.prototxt").write_text(staged)
    solver = get_solver(str(write_solver(workdir, (
        'train_net: "net.prototxt" test_net: "staged.prototxt" test_net: "staged.prototxt" '
        'test_iter: 1 test_iter: 2 test_state { stage: "top2" } test_state { } test_interval: 5 '
        'base_lr: 0.1 lr_policy: "fixed" max_iter: 5 display: 0 snapshot_after_train: false'))))
    assert len(solver.test_nets) == 2
    assert solver.test_nets[0].outputs == ["acc", "acc2", "loss"]
    assert solver.test_nets[1].outputs == ["acc", "loss"]
    solver.solve()
    assert [n for n, _ in solver.test_scores[0]] == ["acc", "acc2", "loss"]
    assert dict(solver.test_scores[0])["acc2"] >= dict(solver.test_scores[0])["acc"]

    # inline forms: train_net_param + test_net_param; data paths resolve against the solver's directory
    from numcaffe.net.config import read_message
    net = read_message(str(workdir / "net.prototxt"), caffe_pb2.NetParameter)
    param = solver_param('test_iter: 1 test_interval: 2 base_lr: 0.1 lr_policy: "fixed" max_iter: 2 '
                         'snapshot_after_train: false')
    param.train_net_param.CopyFrom(net)
    param.test_net_param.add().CopyFrom(net)
    inline = get_solver(param, base_dir=str(workdir))
    inline.solve()
    assert inline.iter == 2 and len(inline.test_scores[0]) == 2


def test_each_config_file_is_read_and_upgraded_once(workdir, monkeypatch, capsys):
    from numcaffe.net import upgrade
    upgraded = []
    real = upgrade.upgrade_message

    def counting(msg, path="<config>"):
        upgraded.append((msg.DESCRIPTOR.name, os.path.basename(path)))
        return real(msg, path)

    monkeypatch.setattr(upgrade, "upgrade_message", counting)
    monkeypatch.setattr(upgrade, "NOTICES", True)
    monkeypatch.setattr(upgrade, "_told", set())
    # an old solver file whose net file makes the train net and two test nets
    path = write_solver(workdir, BASE.replace('type: "SGD"', "solver_type: NESTEROV").replace(
        "test_iter: 2", "test_iter: 2 test_iter: 1"))
    solver = get_solver(str(path))
    assert type(solver).__name__ == "NesterovSolver" and len(solver.test_nets) == 2
    assert upgraded == [("SolverParameter", path.name), ("NetParameter", "net.prototxt")]
    assert capsys.readouterr().err.count("upgraded deprecated solver_type") == 1


def test_deprecated_solver_type_enum_and_class_constructors(workdir):
    text = BASE.replace('type: "SGD"', "solver_type: ADAM")
    path = write_solver(workdir, text)
    assert type(get_solver(str(path))) is AdamSolver
    assert type(SGDSolver(str(path))) is SGDSolver      # pycaffe: the class you call is the solver you get
    with pytest.raises(ConfigError, match="unknown solver type 'Adamm'.*did you mean 'Adam'"):
        make(workdir, 'type: "Adamm"')


def test_smoothed_loss_is_caffes_running_window():
    solver, _, _ = least_squares_solver("SGD")
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for i, v in enumerate(values):
        solver.iter = i
        solver._update_smoothed_loss(v, 0, 3)
        assert solver.smoothed_loss == pytest.approx(np.mean(values[max(0, i - 2):i + 1]))


def test_same_seed_same_run_different_seed_different_run(workdir):
    a, b = make(workdir), make(workdir)
    c = make(workdir, "random_seed: 4")
    for s in (a, b, c):
        s.step(5)
    for x, y in zip(a.net.learnable_params, b.net.learnable_params):
        assert np.array_equal(x.data, y.data)
    assert not np.array_equal(a.net.learnable_params[0].data, c.net.learnable_params[0].data)


def test_snapshot_interval_and_after_train(workdir):
    make(workdir, "snapshot: 3 test_interval: 100 max_iter: 7").solve()
    names = sorted(os.listdir(workdir / "snap"))
    assert names == [f"run_iter_{i}.{ext}" for i in (3, 6, 7) for ext in ("caffemodel", "solverstate")]


def test_snapshot_prefix_rules(workdir):
    s = get_solver(str(write_solver(workdir, BASE.replace('snapshot_prefix: "snap/run"', ""), name="mysolver.yaml")))
    assert os.path.abspath(s.snapshot_prefix) == str(workdir / "mysolver")
    (workdir / "snaps").mkdir()
    s = make(workdir, 'snapshot_prefix: "snaps/"')
    assert os.path.abspath(s.snapshot_prefix) == str(workdir / "snaps" / "solver")
    (workdir / "blocker").write_text("a file, not a directory")
    with pytest.raises(ConfigError, match="cannot write snapshots with prefix"):
        make(workdir, 'snapshot: 2 snapshot_prefix: "blocker/sub/run"')


class Actions:
    """An action function that answers ``action`` on its ``at``-th call."""

    def __init__(self, at, action):
        self.calls, self.at, self.action = 0, at, action

    def __call__(self):
        self.calls += 1
        return self.action if self.calls == self.at else "none"


@pytest.mark.parametrize("action,files,stopped", [
    ("snapshot_stop", [3], True),
    ("stop", [3], True),            # Caffe: stop early, then snapshot_after_train writes the snapshot
    ("snapshot", [3, 8], False),
])
def test_signal_actions_between_iterations(workdir, numcaffe_log, action, files, stopped):
    solver = make(workdir, "test_interval: 100 test_initialization: false")
    solver.set_action_function(Actions(3, action))     # asked once per iteration: the 3rd call ends iteration 2
    solver.solve()
    names = sorted(f for f in os.listdir(workdir / "snap") if f.endswith(".solverstate"))
    assert names == sorted(f"run_iter_{i}.solverstate" for i in files)
    assert ("Optimization stopped early." in numcaffe_log.messages) == stopped
    assert solver.iter == (3 if stopped else 8)


def test_interrupted_test_resumes_into_the_identical_run(workdir, numcaffe_log):
    extra = ('lr_policy: "plateau" plateau_monitor: "acc" plateau_patience: 1 gamma: 0.5 '
             'test_interval: 3 max_iter: 12 snapshot_after_train: false')
    base = BASE.replace("test_iter: 2", "test_iter: 3")      # 3 batches of 6 of the 12 test rows
    (workdir / "net.prototxt").write_text(CLASSIFIER_NET % dict(middle=DROPOUT))
    straight = make(workdir, extra, base)
    straight.solve()
    interrupted = make(workdir, extra, base)
    # The action function is asked before every test batch and after every iteration: the test at 0 asks
    # three times (calls 1-3), iterations 0..2 once each (4-6), the test at 3 before its batches (7, 8, 9).
    # Call 8 comes after the first test batch moved the test data on; the snapshot must record the state
    # from before the test, so that the resumed run repeats that very test.
    interrupted.set_action_function(Actions(8, "snapshot_stop"))
    interrupted.solve()
    assert "Test interrupted." in numcaffe_log.messages
    assert interrupted.iter == 3
    state = str(workdir / "snap" / "run_iter_3.solverstate")
    resumed = make(workdir, extra, base)
    resumed.solve(resume_file=state)
    assert resumed.iter == 12
    for x, y in zip(straight.net.learnable_params, resumed.net.learnable_params):
        assert np.array_equal(x.data, y.data)
    assert straight.plateau.get_state() == resumed.plateau.get_state()


def test_early_stopping_keeps_best_and_last(workdir, numcaffe_log):
    # base_lr 0: the monitored loss never improves after the first test
    solver = make(workdir, 'base_lr: 0 early_stop_monitor: "loss" early_stop_mode: "min" early_stop_patience: 2 '
                           'test_interval: 2 max_iter: 100')
    solver.solve()
    assert solver.iter == 4                  # tests at 0 (best), then 2 and 4 without improvement: stop
    msgs = numcaffe_log.messages
    assert any(m.startswith("Early stopping: loss has not improved for 2 tests") for m in msgs)
    assert "Optimization stopped early." in msgs
    snaps = sorted(os.listdir(workdir / "snap"))
    assert "run_best.caffemodel" in snaps and "run_best.solverstate" in snaps
    assert "run_iter_4.caffemodel" in snaps
    assert solver.best_snapshot[0] == 0


def test_plateau_reduces_the_rate(workdir, numcaffe_log):
    solver = make(workdir, 'lr_policy: "plateau" gamma: 0.1 plateau_monitor: "loss" plateau_mode: "min" '
                           'plateau_patience: 1 base_lr: 0 test_interval: 2 max_iter: 7 display: 1')
    solver.param.base_lr = 0.0
    solver.solve()
    assert solver.plateau.steps == 3          # tests at 2, 4, 6 see no improvement on test 0
    assert any(m.startswith("Plateau: loss has not improved for 1 tests") for m in numcaffe_log.messages)


def test_finetuning_weights_by_layer_name_and_shape_errors(workdir):
    source = make(workdir)
    source.step(2)
    source.snapshot()
    model = str(workdir / "snap" / "run_iter_2.caffemodel")
    target = make(workdir, f'weights: "{model}"')
    for name in ("ip1", "ip2"):
        for a, b in zip(target.net.params[name], source.net.params[name]):
            assert np.array_equal(a.data, b.data)
        for a, b in zip(target.test_nets[0].params[name], source.net.params[name]):
            assert np.array_equal(a.data, b.data)
    (workdir / "net.prototxt").write_text((CLASSIFIER_NET % dict(middle="")).replace("num_output: 6", "num_output: 5"))
    other = make(workdir)
    with pytest.raises(ModelFileError, match=r"layer 'ip1' parameter 0: the file has shape \(6, 4\), "
                                             r"the net expects \(5, 4\)"):
        other.copy_weights(model)


def test_weights_in_hdf5_round_trip(workdir):
    solver = make(workdir)
    solver.step(2)
    path = str(workdir / "w.caffemodel.h5")
    solver.net.save(path)
    import h5py
    with h5py.File(path, "r") as f:
        assert sorted(f["data"]) == sorted(l.name for l in solver.net.layers)
        assert f["data/ip1/0"].shape == (6, 4) and len(f["data/loss"]) == 0
    fresh = make(workdir)
    fresh.copy_weights(path)
    for a, b in zip(fresh.net.learnable_params, solver.net.learnable_params):
        assert np.array_equal(a.data, b.data)


@pytest.mark.parametrize("text,needle", [
    ('base_lr: 0.1 lr_policy: "fixed"', "names no train net"),
    ('net: "net.prototxt" train_net: "net.prototxt" lr_policy: "fixed"', "more than one train net"),
    ('train_net: "net.prototxt" test_iter: 2 test_interval: 1 lr_policy: "fixed"', "test_iter must be given once"),
    ('net: "net.prototxt" test_iter: 2 lr_policy: "fixed"', "no test_interval > 0"),
    ('net: "net.prototxt" lr_policy: "plateau"', "needs plateau_monitor"),
    ('net: "net.prototxt" test_iter: 1 test_interval: 1 lr_policy: "fixed" early_stop_monitor: "accuracy"',
     r"early_stop_monitor 'accuracy' is not an output of test net #0 \(its outputs: acc, loss\)"),
    ('net: "missing.prototxt" lr_policy: "fixed"', "missing.prototxt"),
    ('net: "net.prototxt" lr_policy: "fixed" average_loss: 0', "average_loss must be >= 1"),
])
def test_bad_solver_configs(workdir, text, needle):
    with pytest.raises(ConfigError, match=needle):
        get_solver(str(write_solver(workdir, text)))


def test_a_diverging_loss_is_a_clear_error(workdir):
    from numcaffe.net.errors import NumericalError
    solver = make(workdir, "base_lr: 1e30 test_interval: 100 test_initialization: false")
    with pytest.raises(NumericalError, match=r"iteration \d+: the first non-finite value is the .* of layer '\w+' "
                                             r".*\(training loss (nan|inf)\).*saved in .*lower base_lr \(now 1e\+30\)"):
        with np.errstate(all="ignore"):
            solver.step(20)


def test_debug_info_lines_on_display_iterations(workdir, numcaffe_log):
    solver = make(workdir, "debug_info: true display: 2 test_interval: 100 test_initialization: false")
    solver.step(2)
    msgs = numcaffe_log.messages
    assert any(m.startswith("    [Forward] Layer ip1, top blob ip1 data: ") for m in msgs)
    assert any(m.startswith("    [Backward] Layer ip2, param blob 0 diff: ") for m in msgs)
    assert any(m.startswith("    [Update] Layer ip1, param ") for m in msgs)
    # only on display iterations: iteration 1 adds no lines
    per_iter = sum(m.startswith("    [Forward] Layer ip1, top") for m in msgs)
    assert per_iter == 1


def test_progress_bar_when_asked(workdir, capsys):
    solver = make(workdir, "test_interval: 100 max_iter: 6 snapshot_after_train: false")
    solver.solve(progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "iter" in err
    assert "Optimization Done." in err         # the log still gets through, around the bar
    solver = make(workdir, "test_interval: 100 max_iter: 6 snapshot_after_train: false")
    solver.solve()                             # stderr is not a terminal here: no bar
    assert "6/6" not in capsys.readouterr().err


def test_hdf5_snapshots_without_h5py_fail_at_once(workdir, monkeypatch):
    from numcaffe.net.errors import NumcaffeError
    param = _with(make(workdir).param, snapshot_format=caffe_pb2.SolverParameter.HDF5)
    monkeypatch.setitem(sys.modules, "h5py", None)     # as if h5py were not installed
    with pytest.raises(NumcaffeError, match=r"snapshot_format: HDF5 need the h5py package.*pip install"):
        get_solver(param, base_dir=str(workdir))


def _with(param, **fields):
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(param)
    for k, v in fields.items():
        setattr(out, k, v)
    return out


def test_relative_net_path_is_opened_from_the_working_directory_first(workdir, tmp_path_factory, monkeypatch):
    """As Caffe: the working directory's net.prototxt wins; the solver's folder is the fallback."""
    elsewhere = tmp_path_factory.mktemp("cwd")
    write_classifier_data(elsewhere)
    (elsewhere / "net.prototxt").write_text(CLASSIFIER_NET % dict(middle=DROPOUT))
    monkeypatch.chdir(elsewhere)
    assert "Dropout" in [layer.type for layer in make(workdir).net.layers]
    (elsewhere / "net.prototxt").unlink()
    assert "Dropout" not in [layer.type for layer in make(workdir).net.layers]


@pytest.mark.parametrize("text", [
    'net: "net.prototxt" lr_policy: "fixed" average_loss: 0',
    'net: "net.prototxt" lr_policy: "fixed" iter_size: 0',
    'net: "net.prototxt" lr_policy: "fixed" display: -1',
    'net: "net.prototxt" lr_policy: "fixed" regularization_type: "L3"',
    'base_lr: 0.1 lr_policy: "fixed"',
    'net: "net.prototxt" test_iter: 2 lr_policy: "fixed"',
    'net: "net.prototxt" lr_policy: "plateau"',
    'net: "net.prototxt" lr_policy: "fixed" type: "Adam2"',
    'net: "net.prototxt" lr_policy: "fixed" type: "AdaGrad" momentum: 0.9',
    'net: "net.prototxt" lr_policy: "fixed" type: "RMSProp" rms_decay: 1.5',
    'net: "net.prototxt" test_iter: 1 test_interval: 1 lr_policy: "fixed" early_stop_monitor: "acc" '
    'early_stop_patience: -1',
])
def test_every_bad_solver_setting_names_the_solver_file(workdir, text):
    path = write_solver(workdir, text)
    with pytest.raises(ConfigError) as err:
        get_solver(str(path)).step(1)
    assert str(err.value).startswith(f"{path}: ")
    assert str(err.value).count(str(path)) == 1
