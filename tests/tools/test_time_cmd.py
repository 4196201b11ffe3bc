"""`numcaffe time` prints Caffe's benchmark lines for every layer."""
import re

from numcaffe.tools.cli import main

NET = """
name: "tiny"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 8 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "act" type: "ReLU" bottom: "y" top: "y" }
"""


def test_time_prints_per_layer_and_average_lines(tmp_path, capsys):
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET)
    assert main(["time", "--model", str(path), "--iterations", "3"]) == 0
    err = capsys.readouterr().err
    for name in ("in", "ip", "act"):
        assert re.search(rf"\] +{name}\tforward: [\d.e-]+ ms\.", err)
        assert re.search(rf"\] +{name}\tbackward: [\d.e-]+ ms\.", err)
    for what in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward"):
        assert re.search(rf"\] {what}: [\d.e-]+ ms\.", err)
    assert err.count("forward-backward time") == 3
    assert "] Use CPU.\n" in err  # as Caffe's time


def test_time_with_bad_model_is_one_clean_error(tmp_path, capsys):
    assert main(["time", "--model", str(tmp_path / "missing.prototxt")]) == 1
    err = capsys.readouterr().err
    assert err.strip().startswith("numcaffe: error:") and "missing.prototxt" in err and "Traceback" not in err


def test_an_untimed_backward_pass_runs_before_the_benchmark(tmp_path, capsys, monkeypatch):
    """As Caffe: Forward, 'Initial loss', 'Performing Backward', then the timed iterations; so the
    first timed backward does not pay for loading the backward kernels."""
    from numcaffe.layers.neuron import ReLULayer
    calls = []
    original = ReLULayer.Backward

    def counting(self, *args):
        calls.append(capsys.readouterr().err)  # what had been logged when this backward ran
        return original(self, *args)

    monkeypatch.setattr(ReLULayer, "Backward", counting)
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET + 'force_backward: true\n')
    assert main(["time", "--model", str(path), "--iterations", "2"]) == 0
    logged = "".join(calls)
    assert len(calls) == 2 + 2  # Caffe's untimed backward, time_net's warm-up, two timed iterations
    assert "Performing Backward" in calls[0] and "Benchmark begins" not in logged.split("Performing Backward")[0]
    assert "Benchmark begins" in logged and "forward-backward time" not in "".join(calls[:3])
