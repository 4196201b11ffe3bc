"""TensorBoard event files (solvers/tensorboard.py), read back with TensorBoard's own reader.

The scalars must be the log's numbers at the log's iterations, through a stop
and a resume into the same directory; histograms at the requested interval,
equal to the weights and gradients; the graph the net's layers.
"""
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorboardX  # noqa: F401  (the [tensorboard] extra is in [test]: these tests never skip)
from google.protobuf import text_format
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from numcaffe.net.config import read_message
from numcaffe.net.net import Net
from numcaffe.net.proto import caffe_pb2
from numcaffe.solvers import get_solver
from numcaffe.solvers.listener import SolverListener
from numcaffe.solvers.tensorboard import net_graph
from numcaffe.tools.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


def xor_example(tmp_path, **fields):
    """The XOR example with accuracy in the train net too and two test nets, solver fields replaced."""
    xor = tmp_path / "xor"
    shutil.copytree(CONFIGS / "xor", xor, ignore=shutil.ignore_patterns("snapshots", "__pycache__"))
    net = (xor / "net.prototxt").read_text()
    net = net.replace('top: "accuracy"\n  include { phase: TEST }', 'top: "accuracy"')
    (xor / "net.prototxt").write_text(net)
    set_solver(xor, test_iter=[1, 1], **fields)
    return xor


def set_solver(xor, **fields):
    path = xor / "solver.prototxt"
    param = read_message(str(path), caffe_pb2.SolverParameter)
    for k, v in fields.items():
        if isinstance(v, list):
            param.ClearField(k)
            getattr(param, k).extend(v)
        else:
            setattr(param, k, v)
    path.write_text(text_format.MessageToString(param))
    return path


def train(capsys, *argv):
    status = main(["train", *map(str, argv)])
    err = capsys.readouterr().err.splitlines()
    assert status == 0, err[-3:]
    return [GLOG.sub("", line) for line in err if GLOG.match(line)]


def log_scalars(messages):
    """{tag: {iteration: value}} as the log shows them, in the writer's tag names."""
    out = {}
    display = test = None

    def put(tag, step, value):
        out.setdefault(tag, {})[step] = float(value)

    for m in messages:
        if g := re.match(r"Iteration (\d+) \(([\d.e+-]+) iter/s, [\d.e+-]+s/\d+ iters\), loss = (\S+)$", m):
            display, test = int(g[1]), None
            put("train/smoothed_loss", display, g[3])
            if float(g[2]):          # the first display of a run times no iterations: "0 iter/s"
                put("solver/iter_per_s", display, g[2])
        elif g := re.match(r"Iteration (\d+), loss = (\S+)$", m):       # solve()'s closing line
            put("train/smoothed_loss", int(g[1]), g[2])
        elif g := re.match(r"Iteration (\d+), lr = (\S+)$", m):
            put("solver/lr", int(g[1]), g[2])
        elif g := re.match(r"Iteration (\d+), Testing net \(#(\d+)\)$", m):
            display, test = int(g[1]), int(g[2])
        elif g := re.match(r"    Train net output #\d+: (\S+) = (\S+)", m):
            put(f"train/{g[1]}", display, g[2])
        elif g := re.match(r"    Test net output #\d+: (\S+) = (\S+)", m):
            put(f"test/{g[1]}" if test == 0 else f"test/net{test}/{g[1]}", display, g[2])
    return out


def read_events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def event_scalars(acc):
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert steps == sorted(set(steps)), f"{tag}: steps {steps} repeat or go back"
        out[tag] = {e.step: e.value for e in events}
    return out


def assert_same_numbers(events, log):
    assert sorted(events) == sorted(log)
    for tag in log:
        assert sorted(events[tag]) == sorted(log[tag]), tag
        for step, value in log[tag].items():
            # the log prints 6 significant digits (within half a unit of the 6th), the event a float32
            digit = 10.0 ** (math.floor(math.log10(abs(value))) - 5) if value else 0.0
            assert abs(events[tag][step] - value) <= 0.5 * digit + 1.2e-7 * abs(value), (tag, step)


def test_scalars_are_the_logs_numbers_through_a_stop_and_a_resume(tmp_path, capsys):
    xor = xor_example(tmp_path, max_iter=500, snapshot=300, display=100, test_interval=200)
    runs = tmp_path / "runs"
    first = train(capsys, "--solver", xor / "solver.prototxt", "--tensorboard", runs)
    # resumed from an earlier snapshot than where the first run stopped: 300..500 are written twice
    set_solver(xor, max_iter=800)
    second = train(capsys, "--solver", xor / "solver.prototxt", "--tensorboard", runs,
                   "--snapshot", xor / "snapshots" / "xor_iter_300.solverstate")
    assert len(list(runs.glob("events.out.tfevents.*"))) == 2

    first_log, second_log = log_scalars(first), log_scalars(second)
    assert max(first_log["train/smoothed_loss"]) == 500 and min(second_log["train/smoothed_loss"]) == 300
    expected = {tag: {s: v for s, v in first_log[tag].items() if s < 300} for tag in first_log}
    for tag, points in second_log.items():
        expected.setdefault(tag, {}).update(points)
    assert set(expected) == {"train/smoothed_loss", "train/loss", "train/accuracy", "solver/lr",
                             "solver/iter_per_s", "test/accuracy", "test/loss", "test/net1/accuracy",
                             "test/net1/loss"}
    events = event_scalars(read_events(runs))
    assert_same_numbers(events, expected)
    assert sorted(events["test/net1/accuracy"]) == [0, 200, 400, 600, 800]
    assert sorted(events["train/loss"]) == list(range(0, 800, 100))
    assert sorted(events["train/smoothed_loss"]) == list(range(0, 900, 100))

    # and the curves are those of one uninterrupted run (all but the timings)
    straight_dir = tmp_path / "straight"
    shutil.copytree(xor, straight_dir, ignore=shutil.ignore_patterns("snapshots"))
    straight = log_scalars(train(capsys, "--solver", straight_dir / "solver.prototxt"))
    del straight["solver/iter_per_s"], events["solver/iter_per_s"]
    assert_same_numbers(events, straight)


def _histograms(acc):
    return {tag: {e.step: e.histogram_value for e in acc.Histograms(tag)} for tag in acc.Tags()["histograms"]}


def test_histograms_at_the_interval_hold_the_weights_and_the_graph_is_the_net(tmp_path, capsys):
    xor = xor_example(tmp_path, max_iter=400, snapshot=200, display=100, test_interval=200)
    runs = tmp_path / "runs"
    train(capsys, "--solver", xor / "solver.prototxt", "--tensorboard", runs, "--tensorboard-histograms", 150)
    set_solver(xor, max_iter=700)
    train(capsys, "--solver", xor / "solver.prototxt", "--tensorboard", runs, "--tensorboard_histograms", 150,
          "--snapshot", xor / "snapshots" / "xor_iter_200.solverstate")
    acc = read_events(runs)
    hists = _histograms(acc)
    blobs = [f"{layer}/{j}" for layer in ("hidden", "output") for j in (0, 1)]
    assert sorted(hists) == sorted([f"params/{b}" for b in blobs] + [f"gradients/{b}" for b in blobs])
    for tag, by_step in hists.items():
        assert sorted(by_step) == [0, 150, 300, 450, 600], tag
    # the weights at iteration 600 are those of the snapshot taken at 600
    model = read_message(str(xor / "snapshots" / "xor_iter_600.caffemodel"), caffe_pb2.NetParameter)
    weights = {(l.name, j): np.array(b.data, dtype=np.float32) for l in model.layer for j, b in enumerate(l.blobs)}
    for (layer, j), w in weights.items():
        h = hists[f"params/{layer}/{j}"][600]
        assert (h.num, h.min, h.max) == (w.size, w.min(), w.max())
        assert math.isclose(h.sum, w.sum(dtype=np.float64), rel_tol=1e-6, abs_tol=1e-7)
        assert math.isclose(h.sum_squares, float(w.astype(np.float64) @ w), rel_tol=1e-6)
        assert sum(h.bucket) == w.size
    # the graph: one node per layer of the train net, in-place layers in the chain, the label from data:1
    graph = acc.Graph()
    assert [(n.name, n.op, list(n.input)) for n in graph.node] == [
        ("data", "HDF5Data", []), ("hidden", "InnerProduct", ["data"]), ("tanh", "TanH", ["hidden"]),
        ("output", "InnerProduct", ["tanh"]), ("loss", "SoftmaxWithLoss", ["output", "data:1"]),
        ("accuracy", "Accuracy", ["output", "data:1"])]


DEPLOY_WITH_SPLITS = """
name: "g"
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 5 dim: 3 } shape { dim: 5 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "y" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "y" top: "acc" }
"""


def test_graph_skips_inserted_splits_and_carries_shapes_and_settings(tmp_path):
    path = tmp_path / "g.prototxt"
    path.write_text(DEPLOY_WITH_SPLITS)
    net = Net(str(path), phase="TRAIN")
    assert any(layer.type == "Split" for layer in net.layers)       # the net did insert splits
    nodes = {n.name: n for n in net_graph(net).node}
    assert list(nodes) == ["in", "fc", "relu", "loss", "acc"]
    assert list(nodes["loss"].input) == list(nodes["acc"].input) == ["relu", "in:1"]
    shapes = [[d.size for d in s.dim] for s in nodes["in"].attr["_output_shapes"].list.shape]
    assert shapes == [[5, 3], [5]]
    assert [[d.size for d in s.dim] for s in nodes["fc"].attr["param_shapes"].list.shape] == [[4, 3], [4]]
    assert nodes["fc"].attr["parameters"].s == b"inner_product_param { num_output: 4 }"
    assert [s.decode() for s in nodes["relu"].attr["top"].list.s] == ["fc"]


class Recorder(SolverListener):
    def __init__(self, every):
        self.every, self.diffs = every, {}

    def on_gradients_ready(self, solver):
        if solver.iter % self.every == 0:
            self.diffs[solver.iter] = [b.diff.copy() for b in solver.net.learnable_params]


def test_python_api_gradient_histograms_are_the_iterations_mean_gradient(tmp_path):
    xor = xor_example(tmp_path, iter_size=2, display=0, test_interval=0, snapshot=0)
    set_solver(xor, test_iter=[])
    solver = get_solver(str(xor / "solver.prototxt"))
    writer = solver.add_tensorboard(tmp_path / "tb", histograms=4)
    recorder = solver.add_listener(Recorder(4))
    solver.step(10)
    writer.close()
    hists = _histograms(read_events(tmp_path / "tb"))
    assert sorted(recorder.diffs) == [0, 4, 8]
    names = [f"{layer}/{j}" for layer in ("hidden", "output") for j in (0, 1)]
    for step, diffs in recorder.diffs.items():
        for name, diff in zip(names, diffs):
            mean = diff / 2                                            # iter_size 2: the sum of two passes
            h = hists[f"gradients/{name}"][step]
            assert (h.num, h.min, h.max) == (mean.size, mean.min(), mean.max())
            assert math.isclose(h.sum, mean.sum(dtype=np.float64), rel_tol=1e-6, abs_tol=1e-9)
    assert not any(tag.startswith(("train/", "test/")) for tag in read_events(tmp_path / "tb").Tags()["scalars"])


def test_missing_tensorboardx_and_bad_flags_are_one_line(tmp_path, capsys, monkeypatch):
    xor = xor_example(tmp_path)
    solver = str(xor / "solver.prototxt")
    monkeypatch.setitem(sys.modules, "tensorboardX", None)          # as if it were not installed
    status = main(["train", "--solver", solver, "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err.splitlines()
    assert status == 1
    assert err == ["numcaffe: error: writing TensorBoard event files needs tensorboardX: "
                   "pip install 'numcaffe[tensorboard]'"]
    monkeypatch.undo()
    for argv, message in ((["--tensorboard-histograms", "10"], "--tensorboard-histograms needs --tensorboard DIR"),
                          (["--tensorboard", str(tmp_path / "tb"), "--tensorboard-histograms", "-1"],
                           "the TensorBoard histogram interval must be >= 0 (got -1)"),
                          (["--tensorboard", str(xor / "net.prototxt")],
                           f"cannot create the TensorBoard directory {xor / 'net.prototxt'}: File exists")):
        status = main(["train", "--solver", solver, *argv])
        err = capsys.readouterr().err.splitlines()
        assert status == 1 and err == [f"numcaffe: error: {message}"]
    assert not (tmp_path / "tb").exists()


def test_a_directory_that_cannot_be_written_fails_before_training(tmp_path, capsys, monkeypatch):
    """An existing directory no file can be created in (sysfs refuses even root) is refused up front,
    by ``train`` and by the ``--procs`` launcher before it starts any rank."""
    from numcaffe.tools import procs
    xor = xor_example(tmp_path)
    solver = str(xor / "solver.prototxt")
    assert Path("/sys/kernel").is_dir()
    started = []
    monkeypatch.setattr(procs, "launch", lambda *a: started.append(a) or 0)
    for extra in ([], ["--procs", "2"]):
        status = main(["train", "--solver", solver, "--tensorboard", "/sys/kernel", *extra])
        err = capsys.readouterr().err.splitlines()
        assert status == 1 and len(err) == 1, err
        assert err[0].startswith("numcaffe: error: cannot write into the TensorBoard directory /sys/kernel: "), err
    assert not started
    status = main(["train", "--solver", solver, "--procs", "2", "--tensorboard-histograms", "5"])
    assert status == 1 and capsys.readouterr().err.splitlines() == [
        "numcaffe: error: --tensorboard-histograms needs --tensorboard DIR"]
    assert main(["train", "--solver", solver, "--procs", "2", "--tensorboard", str(tmp_path / "tb")]) == 0
    assert len(started) == 1 and (tmp_path / "tb").is_dir() and not list((tmp_path / "tb").iterdir())


def test_bucket_counts_kernel_gives_tensorboardxs_histogram():
    from tensorboardX.summary import make_histogram
    from numcaffe.solvers.tensorboard import histogram
    edges = np.array(_default_bins())
    rng = np.random.default_rng(3)
    cases = [rng.standard_normal(5000).astype(np.float32) * scale for scale in (1e-9, 1e-3, 1.0, 1e4)]
    cases.append(np.concatenate([edges[::37], np.nextafter(edges[::41], 0), [0.0, 0.0, 1e-13, -1e-13, 5e-300]]))
    cases.append(np.full(7, -0.25, dtype=np.float32))
    for values in cases:
        expected = make_histogram(values.astype(float), edges)
        got = histogram(values, edges)
        assert got["bucket_limits"] == list(expected.bucket_limit)
        assert got["bucket_counts"] == list(expected.bucket)
        assert (got["min"], got["max"], got["num"]) == (expected.min, expected.max, expected.num)
        assert math.isclose(got["sum"], expected.sum, rel_tol=1e-12, abs_tol=1e-300)
        assert math.isclose(got["sum_squares"], expected.sum_squares, rel_tol=1e-12)


def _default_bins():
    """tensorboardX's SummaryWriter.default_bins, taken from a writer that writes nothing."""
    from tensorboardX import SummaryWriter
    return SummaryWriter(write_to_disk=False).default_bins


def test_a_listener_needs_only_the_calls_it_wants():
    from numcaffe.solvers.listener import notify
    seen = []

    class OnlyTests:
        def on_test(self, solver, test_net_id, outputs):
            seen.append((solver, test_net_id, outputs))

    notify([OnlyTests(), object()], "on_test", "solver", 1, [("accuracy", 0.5)])
    notify([OnlyTests()], "on_display", "solver", 0.1, [], None)
    assert seen == [("solver", 1, [("accuracy", 0.5)])]


def test_the_writer_does_not_load_torch():
    """tensorboardX imports torch where it is installed; numcaffe's writer keeps it out (and leaves it importable)."""
    import subprocess
    code = ("import sys\n"
            "from numcaffe.solvers.tensorboard import require_tensorboardx\n"
            "require_tensorboardx()\n"
            "assert 'tensorboardX' in sys.modules\n"
            "assert sys.modules.get('torch', 'absent') == 'absent', sys.modules.get('torch')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
