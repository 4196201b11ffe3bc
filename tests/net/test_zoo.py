"""The nets of Caffe's model-zoo era load unmodified and run forward with Caffe's blob shapes.

Each net in tests/net/zoo is a deploy file in the form its users have it
(net-level ``input_dim`` / ``input_shape``, in-place ReLU / BatchNorm / Scale,
grouped and depthwise convolutions, Concat, Eltwise, Slice, shared params,
ContrastiveLoss); tests/net/zoo/make_zoo.py writes the large ones.  Every net
runs at batch 1 and its real input size, so the shapes asserted here are the
ones Caffe prints for these nets; parameter totals are checked against the
published figures and against formulas over the architecture tables.

Weights are random (He-scaled), BatchNorm statistics sane: values are not
ImageNet predictions, but a grouped and a depthwise convolution are checked
against a numpy oracle on the real blobs, probabilities must sum to one, and
everything must stay finite.
"""
import time
from pathlib import Path

import numpy as np
import pytest

from numcaffe.net import TEST, TRAIN, Net
from numcaffe.net.random import set_random_seed

ZOO = Path(__file__).parent / "zoo"


# ------------------------------------------------------------------ helpers


def build(filename, phase=TEST, **kw):
    set_random_seed(5)
    return Net(str(ZOO / filename), phase, **kw)


def randomize(net, seed=0):
    """He-scaled random weights, small biases, BatchNorm statistics of a trained net.

    ``seed`` is a seed or a numpy Generator (bench/bench_zoo.py passes its own)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if not blobs:
            continue
        if layer.type in ("Convolution", "InnerProduct"):
            w = blobs[0]
            fan_in = w.count // w.shape[0]
            w.data[...] = rng.standard_normal(w.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            for b in blobs[1:]:
                b.data[...] = rng.uniform(-0.1, 0.1, b.shape)
        elif layer.type == "BatchNorm":
            # Caffe stores sums: mean = blobs[0] / blobs[2], var = blobs[1] / blobs[2].
            c = blobs[0].count
            blobs[2].data[...] = 2.0
            blobs[0].data[...] = 2.0 * rng.uniform(-0.1, 0.1, c)
            blobs[1].data[...] = 2.0 * rng.uniform(0.5, 1.5, c)
        elif layer.type == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.0, blobs[0].shape)
            for b in blobs[1:]:
                b.data[...] = rng.uniform(-0.1, 0.1, b.shape)


def run(net, seed=1):
    """Random weights and a random image batch; forward; every blob must be finite."""
    randomize(net, seed)
    rng = np.random.default_rng(seed + 100)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = rng.standard_normal(blob.shape, dtype=np.float32)
    net.forward()
    for name, blob in net.blobs.items():
        assert np.isfinite(blob.data).all(), f"blob {name!r} has non-finite values"


def assert_shapes(net, expected):
    got = {name: net.blobs[name].shape for name in expected}
    assert got == {name: tuple(shape) for name, shape in expected.items()}


def assert_probabilities(prob):
    p = prob.reshape(prob.shape[0], -1)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def learned_count(net):
    """Number of learned values: every distinct learnable blob except BatchNorm's statistics."""
    stats = {id(b) for layer in net.layers if layer.type == "BatchNorm" for b in layer.blobs}
    return sum(b.count for b in net.learnable_params if id(b) not in stats)


def conv_count(cin, cout, k, group=1, bias=True):
    return cout * (cin // group) * k * k + (cout if bias else 0)


def numpy_conv(x, w, b, stride, pad, group):
    """Oracle: Caffe's grouped 2-D convolution of one NCHW batch, by sliding windows."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    mg = m // group
    outs = []
    for g in range(group):
        xs = win[:, g * cg:(g + 1) * cg]                         # n, cg, ho, wo, kh, kw
        ws = w[g * mg:(g + 1) * mg].astype(np.float64)            # mg, cg, kh, kw
        outs.append(np.einsum("ncyxij,mcij->nmyx", xs, ws, optimize=True))
    y = np.concatenate(outs, axis=1)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def check_conv_layer(net, name, stride, pad, group):
    """The layer's top (run up to it, so no in-place layer has touched it) against the oracle."""
    i = net.layer_index(name)
    net.forward(end=name)
    layer = net.layers[i]
    x = net.bottom_vecs[i][0].data
    y = net.top_vecs[i][0].data
    bias = layer.blobs[1].data if len(layer.blobs) > 1 else None
    expected = numpy_conv(x, layer.blobs[0].data, bias, stride, pad, group)
    np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


# ------------------------------------------------------------------ AlexNet / CaffeNet

ALEXNET_PARAMS = (conv_count(3, 96, 11) + conv_count(96, 256, 5, group=2) + conv_count(256, 384, 3)
                  + conv_count(384, 384, 3, group=2) + conv_count(384, 256, 3, group=2)
                  + (256 * 6 * 6 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000))


@pytest.mark.parametrize("filename, norm_first", [("bvlc_alexnet.prototxt", True),
                                                  ("bvlc_reference_caffenet.prototxt", False)])
def test_alexnet_and_caffenet(filename, norm_first):
    net = build(filename)
    assert ALEXNET_PARAMS == 60_965_224
    assert learned_count(net) == ALEXNET_PARAMS
    run(net)
    assert_shapes(net, {
        "data": (1, 3, 227, 227), "conv1": (1, 96, 55, 55), "pool1": (1, 96, 27, 27),
        "norm1": (1, 96, 55, 55) if norm_first else (1, 96, 27, 27),
        "conv2": (1, 256, 27, 27), "pool2": (1, 256, 13, 13), "conv3": (1, 384, 13, 13),
        "conv4": (1, 384, 13, 13), "conv5": (1, 256, 13, 13), "pool5": (1, 256, 6, 6),
        "fc6": (1, 4096), "fc7": (1, 4096), "fc8": (1, 1000), "prob": (1, 1000)})
    assert net.outputs == ["prob"]
    assert_probabilities(net.blobs["prob"].data)
    assert net.params["conv2"][0].shape == (256, 48, 5, 5)        # group 2: half the inputs per filter
    # conv2 is grouped: its output must equal the oracle's on the real pool1/norm1 blob.
    check_conv_layer(net, "conv2", stride=1, pad=2, group=2)


# ------------------------------------------------------------------ GoogLeNet

#: GoogLeNet's inception modules (table 1 of the paper): 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj.
INCEPTION = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
             "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
             "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
             "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
             "5b": (384, 192, 384, 48, 128, 128)}


def googlenet_params():
    total = conv_count(3, 64, 7) + conv_count(64, 64, 1) + conv_count(64, 192, 3)
    cin = 192
    for n1, r3, n3, r5, n5, pp in INCEPTION.values():
        total += (conv_count(cin, n1, 1) + conv_count(cin, r3, 1) + conv_count(r3, n3, 3)
                  + conv_count(cin, r5, 1) + conv_count(r5, n5, 5) + conv_count(cin, pp, 1))
        cin = n1 + n3 + n5 + pp
    return total + cin * 1000 + 1000


def test_googlenet_with_net_level_input_shape():
    plain = build("bvlc_googlenet.prototxt")
    assert plain.inputs == ["data"] and plain.layers[0].type == "Input"
    assert learned_count(plain) == googlenet_params() == 6_998_552
    assert "loss1/prob" not in plain.blobs and plain.outputs == ["prob"]
    del plain

    net = build("bvlc_googlenet.prototxt", stages=("aux",))   # with the auxiliary classifiers
    run(net)
    expected = {"conv1/7x7_s2": (1, 64, 112, 112), "pool1/3x3_s2": (1, 64, 56, 56),
                "pool1/norm1": (1, 64, 56, 56), "conv2/3x3": (1, 192, 56, 56),
                "pool2/3x3_s2": (1, 192, 28, 28), "pool3/3x3_s2": (1, 480, 14, 14),
                "pool4/3x3_s2": (1, 832, 7, 7), "pool5/7x7_s1": (1, 1024, 1, 1),
                "loss3/classifier": (1, 1000), "prob": (1, 1000),
                "loss1/ave_pool": (1, 512, 4, 4), "loss1/conv": (1, 128, 4, 4), "loss1/fc": (1, 1024),
                "loss1/prob": (1, 1000), "loss2/ave_pool": (1, 528, 4, 4), "loss2/prob": (1, 1000)}
    for tag, (n1, _, n3, _, n5, pp) in INCEPTION.items():
        size = {"3": 28, "4": 14, "5": 7}[tag[0]]
        expected[f"inception_{tag}/output"] = (1, n1 + n3 + n5 + pp, size, size)
    assert expected["inception_3a/output"] == (1, 256, 28, 28)
    assert expected["inception_5b/output"] == (1, 1024, 7, 7)
    assert_shapes(net, expected)
    for p in ("prob", "loss1/prob", "loss2/prob"):
        assert_probabilities(net.blobs[p].data)
    # Concat: the output's channels are the four branches in order.
    out = net.blobs["inception_3a/output"].data
    np.testing.assert_array_equal(out[:, :64], net.blobs["inception_3a/1x1"].data)
    np.testing.assert_array_equal(out[:, 64:192], net.blobs["inception_3a/3x3"].data)
    np.testing.assert_array_equal(out[:, 192:224], net.blobs["inception_3a/5x5"].data)
    np.testing.assert_array_equal(out[:, 224:], net.blobs["inception_3a/pool_proj"].data)


# ------------------------------------------------------------------ ResNet-50

#: ResNet-50 bottleneck stages: (width, blocks); the block output has 4 * width channels.
RESNET50 = [(64, 3), (128, 4), (256, 6), (512, 3)]


def resnet50_params():
    """Conv weights (bias only in conv1), Scale's gamma and beta per BatchNorm, fc1000."""
    def conv_bn(cin, cout, k, bias=False):
        return conv_count(cin, cout, k, bias=bias) + 2 * cout
    total = conv_bn(3, 64, 7, bias=True)
    cin = 64
    for width, blocks in RESNET50:
        total += conv_bn(cin, 4 * width, 1)                      # projection shortcut
        for _ in range(blocks):
            total += conv_bn(cin, width, 1) + conv_bn(width, width, 3) + conv_bn(width, 4 * width, 1)
            cin = 4 * width
    return total + 2048 * 1000 + 1000


def test_resnet50_with_net_level_input_dim():
    net = build("resnet50_deploy.prototxt")
    assert net.inputs == ["data"] and net.layers[0].type == "Input"
    # 25,557,032 is the usual ResNet-50 total (torchvision's); He's Caffe model adds conv1's 64 biases.
    assert learned_count(net) == resnet50_params() == 25_557_032 + 64
    bn = [l for l in net.layers if l.type == "BatchNorm"]
    assert len(bn) == 53 and all(l.use_global_stats for l in bn)
    assert all(l.blobs[0].count == l.blobs[1].count for l in bn)
    run(net)
    expected = {"conv1": (1, 64, 112, 112), "pool1": (1, 64, 56, 56),
                "res2a_branch1": (1, 256, 56, 56), "res3a_branch2a": (1, 128, 28, 28),
                "pool5": (1, 2048, 1, 1), "fc1000": (1, 1000), "prob": (1, 1000)}
    for stage, ((width, blocks), size) in enumerate(zip(RESNET50, (56, 28, 14, 7)), start=2):
        for i in range(blocks):
            expected[f"res{stage}{'abcdef'[i]}"] = (1, 4 * width, size, size)
    assert expected["res2c"] == (1, 256, 56, 56) and expected["res5c"] == (1, 2048, 7, 7)
    assert_shapes(net, expected)
    assert_probabilities(net.blobs["prob"].data)
    assert (net.blobs["res5c"].data >= 0).all()                   # the in-place ReLU after the sum


# ------------------------------------------------------------------ SqueezeNet v1.1

FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]


def test_squeezenet_v11():
    net = build("squeezenet_v1.1.prototxt")
    total, cin = conv_count(3, 64, 3), 64
    for s, e in FIRES:
        total += conv_count(cin, s, 1) + conv_count(s, e, 1) + conv_count(s, e, 3)
        cin = 2 * e
    total += conv_count(512, 1000, 1)
    assert learned_count(net) == total == 1_235_496
    run(net)
    # Caffe's pooling rounds up: 227 -> conv1 113 -> pool1 56 -> pool3 28 -> pool5 14.
    # (torchvision's v1.1 at 224 and Caffe's v1.0 at 227 end at 13 x 13; v1.1 at 227 does not.)
    expected = {"conv1": (1, 64, 113, 113), "pool1": (1, 64, 56, 56), "fire2/squeeze1x1": (1, 16, 56, 56),
                "fire2/concat": (1, 128, 56, 56), "fire3/concat": (1, 128, 56, 56), "pool3": (1, 128, 28, 28),
                "fire5/concat": (1, 256, 28, 28), "pool5": (1, 256, 14, 14), "fire6/concat": (1, 384, 14, 14),
                "fire9/concat": (1, 512, 14, 14), "conv10": (1, 1000, 14, 14), "pool10": (1, 1000, 1, 1),
                "prob": (1, 1000, 1, 1)}
    assert_shapes(net, expected)
    assert_probabilities(net.blobs["prob"].data)
    # fire: expand1x1 then expand3x3 along the channels
    out = net.blobs["fire9/concat"].data
    np.testing.assert_array_equal(out[:, :256], net.blobs["fire9/expand1x1"].data)
    np.testing.assert_array_equal(out[:, 256:], net.blobs["fire9/expand3x3"].data)


# ------------------------------------------------------------------ MobileNet v1 / v2

MOBILENET_V1 = [("conv2_1", 1, 64), ("conv2_2", 2, 128), ("conv3_1", 1, 128), ("conv3_2", 2, 256),
                ("conv4_1", 1, 256), ("conv4_2", 2, 512), ("conv5_1", 1, 512), ("conv5_2", 1, 512),
                ("conv5_3", 1, 512), ("conv5_4", 1, 512), ("conv5_5", 1, 512), ("conv5_6", 2, 1024),
                ("conv6", 1, 1024)]


def test_mobilenet_v1_depthwise(capsys):
    net = build("mobilenet_v1.prototxt")
    assert net.inputs == ["data"]
    total, cin, size = conv_count(3, 32, 3, bias=False) + 64, 32, 112
    expected = {"conv1": (1, 32, 112, 112)}
    for name, stride, cout in MOBILENET_V1:
        size //= stride
        total += conv_count(cin, cin, 3, group=cin, bias=False) + 2 * cin
        total += conv_count(cin, cout, 1, bias=False) + 2 * cout
        expected[f"{name}/dw"] = (1, cin, size, size)
        expected[f"{name}/sep"] = (1, cout, size, size)
        assert net.params[f"{name}/dw"][0].shape == (cin, 1, 3, 3)
        cin = cout
    total += conv_count(1024, 1000, 1)
    assert learned_count(net) == total == 4_231_976             # Keras' MobileNet (1.0, 224) trainable total
    run(net)
    expected.update({"pool6": (1, 1024, 1, 1), "fc7": (1, 1000, 1, 1), "prob": (1, 1000, 1, 1)})
    assert expected["conv5_6/sep"] == (1, 1024, 7, 7)
    assert_shapes(net, expected)
    assert_probabilities(net.blobs["prob"].data)

    # Depthwise convolution (group == channels) against the oracle, stride 1 and 2.
    check_conv_layer(net, "conv2_1/dw", stride=1, pad=1, group=32)
    check_conv_layer(net, "conv2_2/dw", stride=2, pad=1, group=64)

    times = []
    for _ in range(3):
        start = time.perf_counter()
        net.forward()
        times.append(time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nMobileNet v1 forward, batch 1, 224x224: {1000 * min(times):.1f} ms (best of 3)")


MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]


def test_mobilenet_v2_inverted_residuals():
    net = build("mobilenet_v2.prototxt")
    names = iter(f"{s}_{i}" for s, n in ((2, 2), (3, 2), (4, 7), (5, 3), (6, 3)) for i in range(1, n + 1))
    total, cin, size = conv_count(3, 32, 3, bias=False) + 64, 32, 112
    expected, sums = {"conv1": (1, 32, 112, 112)}, []
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            tag = next(names)
            hidden = cin * t
            if t != 1:
                total += conv_count(cin, hidden, 1, bias=False) + 2 * hidden
                expected[f"conv{tag}/expand"] = (1, hidden, size, size)
            size //= s if i == 0 else 1
            total += conv_count(hidden, hidden, 3, group=hidden, bias=False) + 2 * hidden
            total += conv_count(hidden, c, 1, bias=False) + 2 * c
            expected[f"conv{tag}/dwise"] = (1, hidden, size, size)
            expected[f"conv{tag}/linear"] = (1, c, size, size)
            if cin == c and (i > 0 or s == 1):
                expected[f"block_{tag}"] = (1, c, size, size)
                sums.append(tag)
            cin = c
    total += conv_count(320, 1280, 1, bias=False) + 2 * 1280 + conv_count(1280, 1000, 1)
    assert learned_count(net) == total == 3_504_872             # torchvision's / Keras' trainable total
    assert len(sums) == 10 and all(net.layers[net.layer_index(f"block_{t}")].type == "Eltwise" for t in sums)
    run(net)
    expected.update({"conv6_4": (1, 1280, 7, 7), "pool6": (1, 1280, 1, 1), "prob": (1, 1000, 1, 1)})
    assert_shapes(net, expected)
    assert_probabilities(net.blobs["prob"].data)
    # ReLU6 (Clip 0..6, in place) bounds the expanded features; the linear bottlenecks are unbounded.
    clipped = [n for n in net.blobs if n == "conv1" or n == "conv6_4" or n.endswith(("/expand", "/dwise"))]
    assert len(clipped) == 2 + 16 + 17
    assert all(0.0 <= net.blobs[n].data.min() and net.blobs[n].data.max() <= 6.0 for n in clipped)
    assert (net.blobs["conv1"].data == 6.0).any()                # these random weights do reach the bound
    assert net.blobs["conv6_3/linear"].data.min() < 0.0
    # An inverted residual: the sum of the block's input and its linear bottleneck.
    net.forward(end="block_3_1")
    np.testing.assert_allclose(net.blobs["block_3_1"].data,
                               net.blobs["conv2_2/linear"].data + net.blobs["conv3_1/linear"].data, rtol=1e-6)


# ------------------------------------------------------------------ CIFAR-10


def test_cifar10_quick():
    net = build("cifar10_quick.prototxt")
    assert learned_count(net) == (conv_count(3, 32, 5) + conv_count(32, 32, 5) + conv_count(32, 64, 5)
                                  + 64 * 4 * 4 * 64 + 64 + 64 * 10 + 10) == 145_578
    run(net)
    assert_shapes(net, {"conv1": (1, 32, 32, 32), "pool1": (1, 32, 16, 16), "conv2": (1, 32, 16, 16),
                        "pool2": (1, 32, 8, 8), "conv3": (1, 64, 8, 8), "pool3": (1, 64, 4, 4),
                        "ip1": (1, 64), "ip2": (1, 10), "prob": (1, 10)})
    assert_probabilities(net.blobs["prob"].data)
    assert (net.blobs["pool1"].data >= 0).all()                   # relu1 runs in place on pool1


def test_cifar10_full():
    net = build("cifar10_full.prototxt")
    assert learned_count(net) == (conv_count(3, 32, 5) + conv_count(32, 32, 5) + conv_count(32, 64, 5)
                                  + 64 * 4 * 4 * 10 + 10) == 89_578
    ip1 = net.learnable_params.index(net.params["ip1"][0])
    assert net.params_weight_decay[ip1] == 250 and net.params_lr[ip1] == 1
    run(net)
    assert_shapes(net, {"conv1": (1, 32, 32, 32), "pool1": (1, 32, 16, 16), "norm1": (1, 32, 16, 16),
                        "conv2": (1, 32, 16, 16), "pool2": (1, 32, 8, 8), "norm2": (1, 32, 8, 8),
                        "conv3": (1, 64, 8, 8), "pool3": (1, 64, 4, 4), "ip1": (1, 10), "prob": (1, 10)})
    assert_probabilities(net.blobs["prob"].data)


# ------------------------------------------------------------------ siamese

SIAMESE_PARAMS = (conv_count(1, 20, 5) + conv_count(20, 50, 5) + 800 * 500 + 500 + 500 * 10 + 10
                  + 10 * 2 + 2)


def test_mnist_siamese_deploy_with_net_level_input_shape():
    net = build("mnist_siamese.prototxt")
    assert learned_count(net) == SIAMESE_PARAMS == 431_102
    run(net)
    assert_shapes(net, {"data": (1, 1, 28, 28), "conv1": (1, 20, 24, 24), "pool1": (1, 20, 12, 12),
                        "conv2": (1, 50, 8, 8), "pool2": (1, 50, 4, 4), "ip1": (1, 500), "ip2": (1, 10),
                        "feat": (1, 2)})
    assert net.outputs == ["feat"]


def write_pair_db(path, count, rng):
    """A LevelDB of MNIST-like pairs as Caffe's convert_mnist_siamese_data writes them:
    two 28x28 uint8 images stacked as 2 channels, label 1 when the pair is similar."""
    from numcaffe.net.data.db import array_datum, open_writer
    with open_writer(str(path), "leveldb") as writer:
        for i in range(count):
            a = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            same = i % 2 == 0
            if same:   # a slightly altered copy
                b = np.clip(a.astype(int) + rng.integers(-20, 21, (28, 28)), 0, 255).astype(np.uint8)
            else:
                b = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            writer.put(f"{i:08d}", array_datum(np.stack([a, b]), label=int(same)).SerializeToString())


def test_mnist_siamese_train_test_slice_shared_params_contrastive_loss(tmp_path, monkeypatch):
    # Caffe's file names its databases relative to the caffe root; build them there.
    rng = np.random.default_rng(0)
    (tmp_path / "examples" / "siamese").mkdir(parents=True)
    write_pair_db(tmp_path / "examples/siamese/mnist_siamese_train_leveldb", 8, rng)
    write_pair_db(tmp_path / "examples/siamese/mnist_siamese_test_leveldb", 8, rng)
    monkeypatch.chdir(tmp_path)

    net = build("mnist_siamese_train_test.prototxt", TRAIN)
    try:
        # Two towers, one set of weights: 10 learnable blobs, shared data and diff.
        assert len(net.learnable_params) == 10
        assert learned_count(net) == SIAMESE_PARAMS
        for name in ("conv1", "conv2", "ip1", "ip2", "feat"):
            for mine, theirs in zip(net.params[name], net.params[name + "_p"]):
                assert np.shares_memory(mine.data, theirs.data) and np.shares_memory(mine.diff, theirs.diff)
        loss = net.ForwardBackward()
        assert_shapes(net, {"pair_data": (64, 2, 28, 28), "sim": (64,), "data": (64, 1, 28, 28),
                            "data_p": (64, 1, 28, 28), "conv1": (64, 20, 24, 24), "pool2_p": (64, 50, 4, 4),
                            "feat": (64, 2), "feat_p": (64, 2), "loss": ()})
        assert np.isfinite(loss) and loss > 0
        pair, sim = net.blobs["pair_data"].data, net.blobs["sim"].data
        assert pair.max() <= 255 / 256 and pair.min() >= 0                  # transform_param scale 1/256
        np.testing.assert_array_equal(net.blobs["data"].data[:, 0], pair[:, 0])
        np.testing.assert_array_equal(net.blobs["data_p"].data[:, 0], pair[:, 1])
        assert set(np.unique(sim)) == {0.0, 1.0}
        assert not np.allclose(net.blobs["feat"].data, net.blobs["feat_p"].data)
        assert np.abs(net.params["conv1"][0].diff).sum() > 0
        # The shared towers map one image to one feature: rerun from the Slice with equal halves.
        pair[:, 1] = pair[:, 0]
        net.forward(start="slice_pair")
        np.testing.assert_allclose(net.blobs["feat"].data, net.blobs["feat_p"].data, rtol=1e-6)
    finally:
        for layer in net.layers:
            if hasattr(layer, "close"):
                layer.close()

    test_net = build("mnist_siamese_train_test.prototxt", TEST)
    try:
        test_net.Forward()
        assert_shapes(test_net, {"pair_data": (100, 2, 28, 28), "data_p": (100, 1, 28, 28), "feat_p": (100, 2)})
    finally:
        for layer in test_net.layers:
            if hasattr(layer, "close"):
                layer.close()
