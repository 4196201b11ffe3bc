"""pycaffe's Net surface beyond forward/backward: clear_param_diffs, save_hdf5/load_hdf5, share_with,
forward_backward_all, the _blob_names/_blob_loss_weights lists and the layer hooks."""
import h5py
import numpy as np
import pytest

import numcaffe.net.pycaffe as caffe
from numcaffe.net.errors import ConfigError

# x (3 x 2 x 4 x 4) -> conv 2->3, 3x3, pad 1 -> ReLU in place -> ip 4 -> Euclidean loss against y.
NET = """name: "small" force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 dim: 4 dim: 4 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" loss_weight: 2 }
"""

# The same shapes without the loss: "ip" is the output, "x" the one input (batch 3).
DEPLOY = NET.split('layer { name: "y"')[0] + NET[NET.index('layer { name: "conv"'):NET.index('layer { name: "loss"')]


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    caffe.set_random_seed(5)
    n = caffe.Net(str(path), caffe.TRAIN)
    rng = np.random.default_rng(0)
    n.blobs["x"].data[...] = rng.normal(size=(3, 2, 4, 4))
    n.blobs["y"].data[...] = rng.normal(size=(3, 4))
    return n


@pytest.fixture
def deploy(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(DEPLOY)
    caffe.set_random_seed(6)
    return caffe.Net(str(path), caffe.TEST)


def test_clear_param_diffs_zeroes_every_learnable_diff(net):
    net.forward()
    net.backward()
    assert all(np.abs(p.diff).max() > 0 for ps in net.params.values() for p in ps)
    net.clear_param_diffs()
    assert all(not p.diff.any() for ps in net.params.values() for p in ps)
    # the data is untouched, and diffs accumulate again from zero
    net.backward()
    first = net.params["ip"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, 2 * first, rtol=1e-6)


def test_save_hdf5_writes_caffes_layout_and_load_hdf5_reads_it(net, tmp_path):
    path = tmp_path / "weights.any_extension"
    net.save_hdf5(str(path))
    with h5py.File(path, "r") as f:
        # Caffe's Net::ToHDF5: /data/<layer>/<param index>, a group for every layer, params or not
        assert list(f["data"]) == sorted(["x", "y", "conv", "relu", "ip", "loss"])
        assert list(f["data/conv"]) == ["0", "1"] and len(f["data/relu"]) == 0
        np.testing.assert_array_equal(f["data/conv/0"][()], net.params["conv"][0].data)
        np.testing.assert_array_equal(f["data/ip/1"][()], net.params["ip"][1].data)
        assert "diff" not in f
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
    assert not np.array_equal(other.params["conv"][0].data, net.params["conv"][0].data)
    assert other.load_hdf5(str(path)) == 6
    for name in net.params:
        for mine, theirs in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_load_hdf5_of_a_missing_file_is_one_clear_error(net, tmp_path):
    with pytest.raises(Exception, match="no such weights file"):
        net.load_hdf5(str(tmp_path / "none.h5"))


def test_share_with_shares_memory_by_layer_name(net, tmp_path):
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    other.share_with(net)
    np.testing.assert_array_equal(other.params["ip"][0].data, net.params["ip"][0].data)
    net.params["ip"][0].data[0, 0] = 123.0           # a later change shows through: no copy was made
    assert other.params["ip"][0].data[0, 0] == 123.0
    assert other.params["ip"][0].diff is not net.params["ip"][0].diff   # only the data is shared


def test_blob_name_and_loss_weight_lists(net):
    assert net._blob_names == ["x", "y", "conv", "ip", "loss"]
    assert net._blob_loss_weights == [0, 0, 0, 0, 2]
    assert list(net.blob_loss_weights.items()) == list(zip(net._blob_names, net._blob_loss_weights))
    assert [net._blob_names[i] for i in net._inputs] == net.inputs == ["x", "y"]
    assert [net._blob_names[i] for i in net._outputs] == net.outputs == ["loss"]


def test_hooks_run_around_every_layer_in_order(net):
    calls = []
    net.before_forward(lambda i: calls.append(("bf", i)))
    net.after_forward(lambda i: calls.append(("af", i)))
    net.before_backward(lambda i: calls.append(("bb", i)))
    net.after_backward(lambda i: calls.append(("ab", i)))
    net.forward()
    n = len(net.layers)
    assert calls == [(k, i) for i in range(n) for k in ("bf", "af")]
    calls.clear()
    net.backward()
    # every layer, whether it needs backward or not (the Input layers do not), as Caffe's BackwardFromTo
    assert calls == [(k, i) for i in reversed(range(n)) for k in ("bb", "ab")]


def test_hooks_see_the_layer_state_before_and_after(net):
    seen = {}
    ip = list(net._layer_names).index("ip")
    net.blobs["ip"].data[...] = -7.0
    net.before_forward(lambda i: seen.setdefault("before", net.blobs["ip"].data.copy()) if i == ip else None)
    net.after_forward(lambda i: seen.setdefault("after", net.blobs["ip"].data.copy()) if i == ip else None)
    out = net.forward(blobs=["ip"])
    assert (seen["before"] == -7.0).all()
    np.testing.assert_array_equal(seen["after"], out["ip"])


def test_a_hook_must_be_callable(net):
    with pytest.raises(ConfigError, match="needs a callable taking the layer index"):
        net.before_forward(3)


def test_forward_backward_all_matches_batch_by_batch(deploy):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 2, 4, 4)).astype(np.float32)       # 7 rows: batches of 3, 3 and 1 (+2 padding)
    dip = rng.normal(size=(7, 4)).astype(np.float32)
    outs, diffs = deploy.forward_backward_all(blobs=["conv"], diffs=["conv"], x=x, ip=dip)
    assert set(outs) == {"ip", "conv"} and set(diffs) == {"x", "conv"}
    assert outs["ip"].shape == (7, 4) and diffs["x"].shape == (7, 2, 4, 4) and diffs["conv"].shape == (7, 3, 4, 4)
    for begin in range(0, 7, 3):
        rows = slice(begin, begin + 3)
        xb = np.zeros((3, 2, 4, 4), np.float32)
        db = np.zeros((3, 4), np.float32)
        k = len(x[rows])
        xb[:k], db[:k] = x[rows], dip[rows]
        expected_ip = deploy.forward(x=xb)["ip"][:k].copy()
        expected_dx = deploy.backward(ip=db)["x"][:k].copy()
        np.testing.assert_allclose(outs["ip"][rows], expected_ip, rtol=1e-6)
        np.testing.assert_allclose(diffs["x"][rows], expected_dx, rtol=1e-6)


def test_forward_backward_all_with_inputs_only_runs_backward_on_held_diffs(deploy):
    x = np.ones((5, 2, 4, 4), np.float32)
    deploy.blobs["ip"].diff[...] = 1.0
    outs, diffs = deploy.forward_backward_all(x=x)
    assert outs["ip"].shape == (5, 4) and diffs["x"].shape == (5, 2, 4, 4)
    np.testing.assert_allclose(outs["ip"], deploy.forward_all(x=x)["ip"], rtol=1e-6)


def test_forward_backward_all_refuses_unknown_and_mismatched_arrays(deploy):
    with pytest.raises(ConfigError, match="'conv' is neither an input"):
        deploy.forward_backward_all(conv=np.zeros((3, 3, 4, 4)))
    with pytest.raises(ConfigError, match="2 batches but the output diffs 1"):
        deploy.forward_backward_all(x=np.zeros((6, 2, 4, 4)), ip=np.zeros((3, 4)))


def test_forward_and_backward_over_one_layer(net):
    ip_w, ip_b = (p.data for p in net.params["ip"])
    net.forward()
    conv = net.blobs["conv"].data.copy()
    net.blobs["conv"].data[...] = conv + 1.0          # only "ip" runs: conv is not recomputed
    out = net.forward(start="ip", end="ip")
    assert list(out) == ["ip"]
    np.testing.assert_allclose(out["ip"], (conv + 1.0).reshape(3, -1) @ ip_w.T + ip_b, rtol=1e-5)
    dip = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    net.blobs["ip"].diff[...] = dip
    diffs = net.backward(start="ip", end="ip")
    assert list(diffs) == ["conv"]
    np.testing.assert_allclose(diffs["conv"].reshape(3, -1), dip @ ip_w, rtol=1e-5)


def test_blobs_and_params_outlive_their_net(net):
    params = [p for ps in net.params.values() for p in ps]
    blobs = list(net.blobs.values())
    expected = sum(float(p.data.sum()) for p in params)
    del net
    assert sum(float(p.data.sum()) for p in params) == expected
    assert all(np.isfinite(b.data).all() and np.isfinite(b.diff).all() for b in blobs)


PARAM_LAYER = """
import numcaffe.net.pycaffe as caffe

class Offset(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0.5
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.blobs[0].data[0]
    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += top[0].diff.sum()
        bottom[0].diff[...] = top[0].diff
"""


def test_a_python_layers_parameter_is_saved_loaded_and_shared(tmp_path, monkeypatch):
    module = f"offset_layer_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(PARAM_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "offset.prototxt"
    path.write_text('force_backward: true\nlayer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
                    f'layer {{ name: "off" type: "Python" bottom: "x" top: "y" '
                    f'python_param {{ module: "{module}" layer: "Offset" }} }}\n')
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs["y"].diff[...] = [1.0, 2.0]
    net.backward()
    layer = net.layer_dict["off"]
    assert layer.blobs[0].diff[0] == 3.0 and net.params["off"][0] is layer.blobs[0]
    layer.blobs[0].data[0] = 4.0
    saved = tmp_path / "offset.caffemodel"
    net.save(str(saved))
    layer.blobs[0].data[0] = -1.0
    net.copy_from(str(saved))
    assert layer.blobs[0].data[0] == 4.0
    other = caffe.Net(str(path), caffe.TEST)
    assert other.layer_dict["off"].blobs[0].data[0] == 0.5
    other.share_with(net)
    assert other.forward(x=np.zeros(2))["y"].tolist() == [4.0, 4.0]
