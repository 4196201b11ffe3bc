"""net/memory.py: the net's blobs, parameters and workspace against the memory limit."""
import pytest

from numcaffe.net import TEST, Net, memory
from numcaffe.net.errors import ShapeError
from numcaffe.net.proto import caffe_pb2
from google.protobuf import text_format

SHARED = """name: "s"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 1 kernel_size: 3 } }
layer { name: "c2" type: "Convolution" bottom: "x" top: "c2" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 1 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "c2" top: "c2" }
"""


def _net(text):
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)


def test_budget_counts_tops_once_shared_parameters_once_and_the_biggest_workspace(monkeypatch):
    seen = []
    original = memory.Budget.add_layer

    def spy(self, layer, tops, params):
        original(self, layer, tops, params)
        seen.append((layer.name, self.blobs, self.params, self.workspace))
    monkeypatch.setattr(memory.Budget, "add_layer", spy)
    _net(SHARED)
    x, c = 4 * 2 * 64, 4 * 2 * 36            # the input; each conv's top (2 x 1 x 6 x 6)
    w = 4 * (9 + 1)                          # the shared weights and bias, counted once
    col = 4 * 9 * 2 * 36                     # 9 taps x 2 images x 36 positions
    assert seen == [("in", x, 0, 0), ("x_in_0_split", x, 0, 0),        # the split's tops share x's data
                    ("c1", x + c, w, col), ("c2", x + 2 * c, w, col),
                    ("relu", x + 2 * c, w, col)]        # in place: no new top


def test_the_limit_comes_from_the_environment_or_the_machine(monkeypatch):
    monkeypatch.setenv("NUMCAFFE_MAX_NET_BYTES", "12345")
    assert memory.available_bytes() == 12345
    monkeypatch.setenv("NUMCAFFE_MAX_NET_BYTES", "0")
    assert memory.available_bytes() is None
    monkeypatch.setenv("NUMCAFFE_MAX_NET_BYTES", "lots")
    with pytest.raises(ShapeError, match="NUMCAFFE_MAX_NET_BYTES must be a number of bytes"):
        memory.available_bytes()
    monkeypatch.delenv("NUMCAFFE_MAX_NET_BYTES")
    have = memory.available_bytes()
    with open("/proc/meminfo") as f:
        total = int(next(l for l in f if l.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < have                         # available memory plus free swap, at most all of both
    assert have <= total + memory._meminfo().get("SwapTotal", 0)


def test_a_net_over_the_limit_names_the_layer_that_crosses_it(monkeypatch):
    monkeypatch.setenv("NUMCAFFE_MAX_NET_BYTES", str(4 * 2 * 64 + 100))
    with pytest.raises(ShapeError, match=r"net 's' needs at least 3.4 KiB by layer 'c1' \(Convolution\): "
                                         r"blobs 800 bytes, parameters 40 bytes, workspace 2.5 KiB"):
        _net(SHARED)


def test_fmt_bytes():
    assert [memory.fmt_bytes(n) for n in (100, 2048, 3 << 20, 1536 << 20, 12 << 40)] == \
        ["100 bytes", "2.0 KiB", "3.0 MiB", "1.5 GiB", "12.0 TiB"]
