"""Errors catchable the way pycaffe users catch them: an exception from a Python layer keeps its type
(with numcaffe's context added), and the command line still prints it as one clean line."""
import sys
import textwrap

import numpy as np
import pytest

import numcaffe.net.pycaffe as caffe
from numcaffe.net.errors import NumcaffeError, error_keeping_type
from tests.tools.test_errors import assert_clean_error, cli

USER_LAYERS = """
import numcaffe.net.pycaffe as caffe

class FailsInSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("the layer cannot start")
    def reshape(self, bottom, top):
        pass

class FailsInForward(caffe.Layer):
    def setup(self, bottom, top):
        pass
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        raise KeyError("no such column")

class OwnError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code

class FailsWithOwnError(caffe.Layer):
    def setup(self, bottom, top):
        raise OwnError(7, "bad config")
    def reshape(self, bottom, top):
        pass

class FailsWhenMade(caffe.Layer):
    def __init__(self, param):
        raise ValueError("not today")
"""


@pytest.fixture
def layer_net(tmp_path):
    """Writes a uniquely named module of failing layers beside a net; returns net_for(layer class)."""
    module = f"failing_layers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(USER_LAYERS)

    def net_for(cls):
        path = tmp_path / f"{cls}.prototxt"
        path.write_text(textwrap.dedent(f"""\
            layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
            layer {{ name: "user" type: "Python" bottom: "x" top: "y"
                     python_param {{ module: "{module}" layer: "{cls}" }} }}
            """))
        return str(path)

    yield net_for
    sys.modules.pop(module, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_setup_error_is_caught_as_its_own_type_with_context(layer_net):
    with pytest.raises(RuntimeError) as info:
        caffe.Net(layer_net("FailsInSetup"), caffe.TEST)
    err = info.value
    assert isinstance(err, NumcaffeError)
    assert str(err).startswith("layer 'user' (Python): ")
    assert "FailsInSetup.setup() raised RuntimeError: the layer cannot start" in str(err)
    assert type(err.__cause__) is RuntimeError          # the user's own exception, with its traceback
    assert err.__cause__.__traceback__ is not None


def test_forward_error_keeps_its_type_and_the_message_is_not_requoted(layer_net):
    net = caffe.Net(layer_net("FailsInForward"), caffe.TEST)
    with pytest.raises(KeyError) as info:
        net.forward(x=np.zeros((2, 3)))
    assert isinstance(info.value, NumcaffeError)
    # KeyError's str() would quote the message; the numcaffe message reads as written
    assert str(info.value).startswith("layer 'user' (Python): ")
    assert "raised KeyError: 'no such column'" in str(info.value)


def test_user_exception_class_with_its_own_constructor(layer_net):
    with pytest.raises(Exception) as info:
        caffe.Net(layer_net("FailsWithOwnError"), caffe.TEST)
    own = type(info.value.__cause__)
    assert own.__name__ == "OwnError"
    assert isinstance(info.value, own) and isinstance(info.value, NumcaffeError)
    assert "raised OwnError: (7, 'bad config')" in str(info.value)


def test_constructor_error_keeps_its_type(layer_net):
    with pytest.raises(ValueError, match="creating .*FailsWhenMade failed: ValueError: not today"):
        caffe.Net(layer_net("FailsWhenMade"), caffe.TEST)


def test_the_combined_class_is_made_once_per_type():
    a = error_keeping_type(RuntimeError("a"), "first")
    b = error_keeping_type(RuntimeError("b"), "second")
    assert type(a) is type(b) and type(a).__name__ == "RuntimeError"
    assert issubclass(type(a), RuntimeError) and issubclass(type(a), NumcaffeError)
    assert str(a) == "first" and a.args == ("first",)
    # a type whose constructor takes other arguments still gets the plain message
    u = error_keeping_type(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "decoding failed")
    assert isinstance(u, UnicodeDecodeError) and str(u) == "decoding failed"


@pytest.mark.parametrize("cls, needle", [("FailsInSetup", "raised RuntimeError: the layer cannot start"),
                                         ("FailsInForward", "raised KeyError: 'no such column'")])
def test_cli_prints_one_clean_line(layer_net, capsys, cls, needle):
    status, _, err = cli(["time", "--model", layer_net(cls), "--iterations", "1"], capsys)
    assert_clean_error(status, err, "layer 'user' (Python)", needle)
def test_netspec_misuse_is_a_type_error_in_pycaffes_words():
    L = caffe.layers
    data = L.DummyData(ntop=2)                     # a tuple of two tops
    with pytest.raises(TypeError) as info:
        L.Silence(data, ntop=0)
    assert str(info.value) == "Silence input 0 is not a Top (type is <class 'tuple'>)"
    assert isinstance(info.value, NumcaffeError)
    L.Silence(*data, ntop=0)                       # each top on its own is fine
    with pytest.raises(TypeError, match=r"^Concat input 1 is not a Top \(type is <class 'int'>\)$"):
        L.Concat(data[0], 3)


def test_blobproto_without_shape_is_a_value_error_unless_it_holds_one_value():
    blob = caffe.proto.caffe_pb2.BlobProto()
    blob.data.extend([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="3 values but no shape"):
        caffe.io.blobproto_to_array(blob)
    single = caffe.proto.caffe_pb2.BlobProto()
    single.data.append(5.0)
    arr = caffe.io.blobproto_to_array(single)        # a scalar, as Caffe's empty shape means
    assert arr.shape == () and arr == 5.0
    legacy = caffe.proto.caffe_pb2.BlobProto(num=1, channels=1, height=1, width=3)
    legacy.data.extend([1.0, 2.0, 3.0])
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 1, 1, 3)

