"""NetSpec: composing nets in Python with pycaffe's net_spec semantics."""
import numpy as np
import pytest

from numcaffe.net.config import parse_text, parse_yaml
from numcaffe.net.errors import ConfigError
from numcaffe.net.pycaffe.net_spec import NetSpec, layers as L, params as P, to_proto
from numcaffe.net.proto import caffe_pb2

EXPECTED = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.1 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss"
        loss_weight: 0.5 loss_param { ignore_label: -1 } }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
"""


def _tiny():
    n = NetSpec()
    n.data, n.label = L.Input(ntop=2, shape=[dict(dim=[4, 3]), dict(dim=[4])])
    n.ip1 = L.InnerProduct(n.data, num_output=5, weight_filler=dict(type="xavier"),
                           param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.relu1 = L.ReLU(n.ip1, in_place=True, negative_slope=0.1)
    n.ip2 = L.InnerProduct(n.relu1, inner_product_param=dict(num_output=2))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label, loss_weight=0.5, ignore_label=-1)
    n.acc = L.Accuracy(n.ip2, n.label, include=dict(phase=caffe_pb2.TEST))
    return n


def test_netspec_builds_the_expected_net():
    assert _tiny().to_proto("tiny") == parse_text(EXPECTED, caffe_pb2.NetParameter())


def test_prototxt_and_yaml_read_back():
    n = _tiny()
    assert parse_text(n.to_prototxt("tiny"), caffe_pb2.NetParameter()) == n.to_proto("tiny")
    assert parse_yaml(n.to_yaml("tiny"), caffe_pb2.NetParameter()) == n.to_proto("tiny")


def test_built_net_runs():
    net = _tiny().to_net("TRAIN", name="tiny")
    assert list(net.blobs["ip2"].shape) == [4, 2] and "acc" not in net.blobs
    out = net.forward(data=np.ones((4, 3), np.float32), label=np.zeros(4, np.float32))
    assert np.isfinite(out["loss"]).all()


def test_auto_names_for_unassigned_tops_and_enums():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    pool = L.Pooling(n.data, kernel_size=2, pool=P.Pooling.AVE)
    n.out = L.Pooling(pool, kernel_size=2, pool="MAX")
    net = n.to_proto()
    assert [l.name for l in net.layer] == ["data", "Pooling1", "out"]
    assert list(net.layer[2].bottom) == ["Pooling1"]
    assert net.layer[1].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert net.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX


def test_ntop_zero_and_free_to_proto():
    data = L.Input(shape=dict(dim=[2]))
    silence = L.Silence(data, ntop=0)
    net = to_proto(data)
    assert [l.type for l in net.layer] == ["Input"]
    assert silence.tops == ()


def test_a_layer_without_tops_is_assigned_by_its_layer_name():
    # pycaffe's own test_zero_tops: `n.silence_data = L.Silence(n.data, ntop=0)` names the layer
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    proto = n.to_proto()
    assert [(l.name, l.type, list(l.bottom), list(l.top)) for l in proto.layer] == [
        ("data", "DummyData", [], ["data", "data2"]),
        ("silence_data", "Silence", ["data"], []),
        ("silence_data2", "Silence", ["data2"], [])]
    assert n.to_net("TEST").forward() == {}


def test_repeated_scalar_and_nested_messages():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 5, 5]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=[1], stride=1,
                           bias_filler=dict(type="constant", value=0.1))
    c = n.to_proto().layer[1].convolution_param
    assert list(c.kernel_size) == [3] and list(c.pad) == [1] and list(c.stride) == [1]
    assert c.bias_filler.value == pytest.approx(0.1)


def test_param_kwargs_of_a_types_second_message():
    n = NetSpec()
    n.x, n.y = L.Input(ntop=2, shape=[dict(dim=[2, 3]), dict(dim=[2])])
    n.loss = L.SoftmaxWithLoss(n.x, n.y, axis=1, normalization="BATCH_SIZE")
    layer = n.to_proto().layer[1]
    assert layer.softmax_param.axis == 1
    assert layer.loss_param.normalization == caffe_pb2.LossParameter.BATCH_SIZE


@pytest.mark.parametrize("make,needle", [
    (lambda: L.Convolutoin, "unknown layer type 'Convolutoin'; did you mean 'Convolution'"),
    (lambda: L.Convolution(L.Input(shape=dict(dim=[1])), kernal_size=3), "no parameter 'kernal_size'"),
    (lambda: L.Pooling(L.Input(shape=dict(dim=[1])), pool="MAXIMUM"), "'MAXIMUM' is not a PoolMethod value"),
    (lambda: L.InnerProduct(L.Input(shape=dict(dim=[1])), num_output="ten"), "num_output"),
    (lambda: L.InnerProduct(L.Input(shape=dict(dim=[1])), weight_filler=dict(typ="x")), "did you mean 'type'"),
    (lambda: L.ReLU("data"), "ReLU input 0 is not a Top (type is <class 'str'>)"),   # pycaffe's words
    (lambda: L.ReLU(L.Input(shape=dict(dim=[1])), in_place=True, ntop=2), "in_place=True needs"),
])
def test_clear_errors(make, needle):
    with pytest.raises(ConfigError) as e:
        make()
    assert needle in str(e.value)


def test_kernal_size_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'kernel_size'"):
        L.Convolution(L.Input(shape=dict(dim=[1])), kernal_size=3)


def test_missing_top_attribute():
    n = _tiny()
    assert n["ip1"] is n.ip1
    with pytest.raises(AttributeError, match="did you mean 'ip2', 'ip1'"):
        n.ip3
