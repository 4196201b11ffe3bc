"""pycaffe scripts on numcaffe: ``import numcaffe.net.pycaffe as caffe`` instead of ``import caffe``."""
import logging
import os

import numpy as np
import pytest

import numcaffe.net.pycaffe as caffe
from numcaffe.net.errors import ConfigError, NumcaffeError, ShapeError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
FIX = os.path.join(ROOT, "tests", "fixtures", "caffe")
DEPLOY = os.path.join(FIX, "lenet_deploy.prototxt")
WEIGHTS = os.path.join(FIX, "lenet_iter_10000.caffemodel")
XOR_NET = os.path.join(ROOT, "configs", "xor", "net.prototxt")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def numcaffe_log():
    """The records numcaffe's logger (which does not propagate to root) emits during the test."""
    from numcaffe.net.log import get_logger
    logger, handler = get_logger(), _Records()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def lenet_data():
    return np.load(os.path.join(FIX, "images_0.npy")), np.load(os.path.join(FIX, "caffe_prob_0.npy"))


# ---------------------------------------------------------------- a pycaffe script end to end


def test_lenet_script_matches_caffe(lenet_data):
    images, caffe_prob = lenet_data
    caffe.set_mode_cpu()
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    # images as load_image gives them (H x W x 1 in [0, 1]); the net was trained on pixel/256:
    # raw_scale 255 back to pixels, then input_scale 1/256 (exact in float32).
    transformer.set_raw_scale("data", 255)
    transformer.set_input_scale("data", 1 / 256)
    for i, im in enumerate(images):
        net.blobs["data"].data[i] = transformer.preprocess("data", (im / 255.0)[:, :, None])
    out = net.forward()
    assert out["prob"].shape == (100, 10)
    np.testing.assert_allclose(out["prob"], caffe_prob, atol=1e-4, rtol=0)
    # the weights= and caffe.TEST-first forms build the same net
    net2 = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    np.testing.assert_array_equal(net2.params["ip2"][0].data, net.params["ip2"][0].data)


def test_classifier_centre_crop_matches_caffe(lenet_data):
    images, caffe_prob = lenet_data
    clf = caffe.Classifier(DEPLOY, WEIGHTS, raw_scale=255, input_scale=1 / 256)
    assert isinstance(clf, caffe.Net)
    assert tuple(clf.crop_dims) == (28, 28) and tuple(clf.image_dims) == (28, 28)
    pred = clf.predict([(im / 255.0)[:, :, None] for im in images[:5]], oversample=False)
    np.testing.assert_allclose(pred, caffe_prob[:5], atol=1e-4, rtol=0)


def test_classifier_oversample_averages_the_ten_crops(lenet_data):
    images, _ = lenet_data
    clf = caffe.Classifier(DEPLOY, WEIGHTS, image_dims=(30, 30), raw_scale=255, input_scale=1 / 256)
    ims = [(np.pad(im, 1) / 255.0)[:, :, None].astype(np.float32) for im in images[:2]]   # 30 x 30 already
    pred = clf.predict(ims)
    crops = caffe.io.oversample(np.stack(ims), (28, 28))
    x = np.stack([c.transpose(2, 0, 1) * 255 / 256 for c in crops])
    probs = clf.forward_all(data=x)["prob"]
    np.testing.assert_allclose(pred, probs.reshape(2, 10, 10).mean(1), atol=1e-5)
    assert pred.shape == (2, 10)


def test_set_mode_gpu_warns_once_and_runs(numcaffe_log, lenet_data):
    caffe.set_mode_gpu()
    caffe.set_device(0)
    caffe.set_mode_gpu()
    warnings = [r for r in numcaffe_log.records if r.levelno == logging.WARNING and "CPU" in r.getMessage()]
    # once per process: earlier tests in the same run may already have had the warning
    assert len(warnings) <= 1
    assert caffe.pycaffe._warned_gpu
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    assert net.forward(data=np.zeros((100, 1, 28, 28), np.float32))["prob"].shape == (100, 10)


def test_set_mode_gpu_warning_text(numcaffe_log, monkeypatch):
    monkeypatch.setattr(caffe.pycaffe, "_warned_gpu", False)
    caffe.set_device(1)
    caffe.set_mode_gpu()
    msgs = [r.getMessage() for r in numcaffe_log.records if r.levelno == logging.WARNING]
    assert msgs == ["caffe.set_device(1): numcaffe runs on the CPU only; carrying on with the CPU"]


def test_module_surface():
    p = caffe.proto.caffe_pb2.NetParameter(name="x")
    assert p.name == "x"
    assert (caffe.TRAIN, caffe.TEST) == (0, 1)
    assert "Convolution" in caffe.layer_type_list()
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(input_param=dict(shape=[dict(dim=[2, 3])]))
    n.ip = caffe.layers.InnerProduct(n.data, num_output=4)
    proto = n.to_proto()
    assert [l.type for l in proto.layer] == ["Input", "InnerProduct"]
    assert issubclass(caffe.Layer, object) and hasattr(caffe.Layer, "forward")


def test_submodules_import_as_caffes_do():
    """Caffe's python/caffe/ submodules, imported the ways pycaffe scripts import them."""
    import numcaffe.net.pycaffe.proto.caffe_pb2 as pb2_module
    from numcaffe.net.pycaffe import classifier, draw, io, net_spec, pycaffe
    from numcaffe.net.pycaffe.proto import caffe_pb2
    from numcaffe.net.proto import caffe_pb2 as schema
    assert caffe_pb2 is pb2_module is caffe.proto.caffe_pb2 is schema
    assert caffe.Classifier is classifier.Classifier and caffe.io is io and caffe.draw is draw
    assert caffe.NetSpec is net_spec.NetSpec and caffe.layers is net_spec.layers
    assert caffe.Net is pycaffe.Net and caffe.SGDSolver is pycaffe.SGDSolver
    assert set(caffe.__all__) <= set(dir(caffe))


# ---------------------------------------------------------------- solvers


def _solver_file(tmp_path, file_type="Nesterov", seed=1701):
    path = tmp_path / "solver.prototxt"
    seed_line = f"random_seed: {seed}\n" if seed is not None else ""
    path.write_text(f'net: "{XOR_NET}"\nbase_lr: 0.1\nlr_policy: "fixed"\ndelta: 1e-6\ndisplay: 0\n'
                    f'max_iter: 10\nsnapshot_after_train: false\ntest_iter: 1\ntest_interval: 1000\n'
                    f'{seed_line}type: "{file_type}"\n')
    return str(path)


@pytest.mark.parametrize("name,type_name", [("SGDSolver", "SGD"), ("NesterovSolver", "Nesterov"),
                                            ("AdaGradSolver", "AdaGrad"), ("RMSPropSolver", "RMSProp"),
                                            ("AdaDeltaSolver", "AdaDelta"), ("AdamSolver", "Adam")])
def test_typed_solver_constructor_forces_its_type_and_trains(tmp_path, name, type_name):
    other = "Adam" if type_name != "Adam" else "SGD"
    solver = getattr(caffe, name)(_solver_file(tmp_path, file_type=other))
    assert solver.type == type_name and isinstance(solver, getattr(caffe, name))
    before = solver.net.params["hidden"][0].data.copy()
    solver.step(3)
    assert solver.iter == 3
    assert not np.array_equal(solver.net.params["hidden"][0].data, before)
    # test nets see the trained weights, as pycaffe's do
    np.testing.assert_array_equal(solver.test_nets[0].params["hidden"][0].data,
                                  solver.net.params["hidden"][0].data)


def test_get_solver_takes_the_type_from_the_file(tmp_path):
    assert caffe.get_solver(_solver_file(tmp_path, file_type="RMSProp")).type == "RMSProp"


def test_set_random_seed_holds_for_a_solver_without_seed(tmp_path):
    def first_weights():
        caffe.set_random_seed(123)
        return caffe.SGDSolver(_solver_file(tmp_path, seed=None)).net.params["hidden"][0].data.copy()
    np.testing.assert_array_equal(first_weights(), first_weights())


def test_solver_share_weights(tmp_path):
    solver = caffe.SGDSolver(_solver_file(tmp_path))
    net = caffe.Net(XOR_NET, caffe.TEST)
    solver.step(2)
    solver.share_weights(net)
    np.testing.assert_array_equal(net.params["output"][0].data, solver.net.params["output"][0].data)


# ---------------------------------------------------------------- caffe.io.Transformer


def _transformer():
    t = caffe.io.Transformer({"data": (2, 3, 4, 5)})
    return t


def test_preprocess_each_operation_against_numpy():
    rs = np.random.RandomState(0)
    im = rs.rand(4, 5, 3).astype(np.float32)
    keep = im.copy()
    t = _transformer()
    np.testing.assert_array_equal(t.preprocess("data", im), im)          # nothing set: float32, same shape
    t.set_transpose("data", (2, 0, 1))
    np.testing.assert_array_equal(t.preprocess("data", im), im.transpose(2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    chw = im.transpose(2, 0, 1)[[2, 1, 0]]
    np.testing.assert_array_equal(t.preprocess("data", im), chw)
    t.set_raw_scale("data", 255.0)
    np.testing.assert_allclose(t.preprocess("data", im), chw * 255.0, rtol=1e-6)
    mean = np.array([10.0, 20.0, 30.0])
    t.set_mean("data", mean)
    np.testing.assert_allclose(t.preprocess("data", im), chw * 255.0 - mean[:, None, None], rtol=1e-5)
    t.set_input_scale("data", 0.5)
    np.testing.assert_allclose(t.preprocess("data", im), (chw * 255.0 - mean[:, None, None]) * 0.5, rtol=1e-5)
    np.testing.assert_array_equal(im, keep)                               # the caller's array is untouched
    assert t.preprocess("data", im).dtype == np.float32


def test_preprocess_resizes_to_the_input_size():
    t = _transformer()
    out = t.preprocess("data", np.random.RandomState(1).rand(8, 10, 3))
    assert out.shape == (4, 5, 3)


def test_full_mean_image_and_deprocess_round_trip():
    rs = np.random.RandomState(2)
    im = rs.rand(4, 5, 3).astype(np.float32)
    t = _transformer()
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 0, 1))
    t.set_raw_scale("data", 255)
    mean_img = rs.rand(3, 4, 5).astype(np.float32) * 100
    t.set_mean("data", mean_img)
    t.set_input_scale("data", 0.017)
    x = t.preprocess("data", im)
    np.testing.assert_allclose(x, (im.transpose(2, 0, 1)[[2, 0, 1]] * 255 - mean_img) * 0.017, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x), im, atol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x[None]), im, atol=1e-5)   # a (1, C, H, W) batch row


def test_deprocess_one_channel_keeps_the_channel_axis():
    t = caffe.io.Transformer({"data": (1, 1, 3, 3)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255)
    im = np.arange(9, dtype=np.float32).reshape(3, 3, 1) / 9
    back = t.deprocess("data", t.preprocess("data", im)[None])
    assert back.shape == (3, 3, 1)
    np.testing.assert_allclose(back, im, atol=1e-6)


def test_transformer_errors_are_clear():
    t = _transformer()
    with pytest.raises(ConfigError, match="'label' is not one of the inputs"):
        t.set_raw_scale("label", 2)
    with pytest.raises(ShapeError, match="needs 3 axes"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ShapeError, match="one entry per channel"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ShapeError, match="2 channels; the input has 3"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ShapeError, match=r"needs \(C, H, W\) = \(3, 4, 5\)"):
        t.set_mean("data", np.zeros((3, 8, 8)))
    with pytest.raises(ShapeError, match=r"\(C,\), \(H, W\) or \(C, H, W\)"):
        t.set_mean("data", np.zeros((1, 3, 4, 5)))
    with pytest.raises(ShapeError, match=r"has shape \(4, 5\)"):
        t.set_mean("data", np.ones((4, 5)))                               # (H, W) is (1, H, W): one channel
    grey = caffe.io.Transformer({"data": (1, 1, 4, 5)})
    grey.set_mean("data", np.ones((4, 5)))
    with pytest.raises(ShapeError, match="set_transpose to channels first"):
        grey.preprocess("data", np.full((4, 5, 1), 3.0))
    grey.set_transpose("data", (2, 0, 1))
    np.testing.assert_array_equal(grey.preprocess("data", np.full((4, 5, 1), 3.0))[0], np.full((4, 5), 2.0))
    assert issubclass(ShapeError, NumcaffeError)


# ---------------------------------------------------------------- images


def test_oversample_against_hand_computed_crops():
    im = np.arange(2 * 5 * 6 * 2, dtype=np.float32).reshape(2, 5, 6, 2)
    crops = caffe.io.oversample(im, (3, 4))
    assert crops.shape == (20, 3, 4, 2) and crops.dtype == np.float32
    for n in range(2):
        a = im[n]
        # corners (top-left, top-right, bottom-left, bottom-right), then the centre: int(5/2 - 3/2) = 1,
        # int(6/2 - 4/2) = 1; then the five mirrored left-right
        expected = [a[0:3, 0:4], a[0:3, 2:6], a[2:5, 0:4], a[2:5, 2:6], a[1:4, 1:5]]
        expected += [e[:, ::-1] for e in expected]
        np.testing.assert_array_equal(crops[10 * n:10 * n + 10], np.stack(expected))


def test_oversample_errors():
    with pytest.raises(ShapeError, match="does not fit"):
        caffe.io.oversample(np.zeros((1, 4, 4, 1)), (5, 4))
    with pytest.raises(ShapeError, match="image 1 has shape"):
        caffe.io.oversample([np.zeros((4, 4, 1)), np.zeros((5, 4, 1))], (2, 2))


def test_load_image_png(tmp_path):
    from PIL import Image
    rs = np.random.RandomState(3)
    rgb = rs.randint(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    im = caffe.io.load_image(str(tmp_path / "c.png"))
    assert im.shape == (6, 7, 3) and im.dtype == np.float32
    np.testing.assert_allclose(im, rgb / 255.0, atol=1e-7)
    grey_of_colour = caffe.io.load_image(str(tmp_path / "c.png"), color=False)
    np.testing.assert_allclose(grey_of_colour[:, :, 0], rgb / 255.0 @ np.array([0.2125, 0.7154, 0.0721]), atol=1e-6)
    g = rs.randint(0, 256, (6, 7), dtype=np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    grey = caffe.io.load_image(str(tmp_path / "g.png"), color=False)
    assert grey.shape == (6, 7, 1)
    np.testing.assert_allclose(grey[:, :, 0], g / 255.0, atol=1e-7)
    as_colour = caffe.io.load_image(str(tmp_path / "g.png"))
    assert as_colour.shape == (6, 7, 3)
    np.testing.assert_array_equal(as_colour, np.repeat(grey, 3, axis=2))
    Image.fromarray(np.dstack([rgb, g]), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "a.png")), rgb / 255.0, atol=1e-7)
    with pytest.raises(NumcaffeError, match="no such image file"):
        caffe.io.load_image(str(tmp_path / "missing.png"))


def test_resize_image():
    rs = np.random.RandomState(4)
    im = rs.rand(4, 6, 3).astype(np.float32) * 300 - 20        # any range, any channel count
    same = caffe.io.resize_image(im, (4, 6))
    np.testing.assert_allclose(same, im, rtol=1e-6)
    up = caffe.io.resize_image(im, (8, 12), interp_order=0)      # nearest, doubling: each pixel twice
    np.testing.assert_array_equal(up, np.repeat(np.repeat(im, 2, 0), 2, 1))
    lin = caffe.io.resize_image(im, (8, 12))
    # bilinear at half-pixel centres: interior output (1, 1) sits at input (0.25, 0.25)
    expected = (im[0, 0] * 0.75 * 0.75 + im[0, 1] * 0.75 * 0.25 + im[1, 0] * 0.25 * 0.75 + im[1, 1] * 0.25 * 0.25)
    np.testing.assert_allclose(lin[1, 1], expected, rtol=1e-4)
    assert lin.shape == (8, 12, 3) and lin.dtype == np.float32
    five = caffe.io.resize_image(rs.rand(5, 5, 5), (3, 2))
    assert five.shape == (3, 2, 5)
    const = caffe.io.resize_image(np.full((3, 3, 1), 7.0), (5, 2))
    np.testing.assert_array_equal(const, np.full((5, 2, 1), 7.0, np.float32))


# ---------------------------------------------------------------- protos and datums


def test_blobproto_round_trip():
    rs = np.random.RandomState(5)
    a = rs.standard_normal((2, 3, 4)).astype(np.float32)
    d = rs.standard_normal((2, 3, 4)).astype(np.float32)
    bp = caffe.io.array_to_blobproto(a, d)
    assert list(bp.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(bp), a)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(bp, return_diff=True), d)
    legacy = caffe.proto.caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(legacy), np.arange(1, 7).reshape(1, 2, 1, 3))
    with pytest.raises(ShapeError):
        caffe.io.array_to_blobproto(a, d[:1])
    s = caffe.io.arraylist_to_blobprotovector_str([a, d[0]])
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert len(back) == 2
    np.testing.assert_array_equal(back[0], a)
    np.testing.assert_array_equal(back[1], d[0])
    assert caffe.io.arraylist_to_blobprotovecor_str([a]) == caffe.io.arraylist_to_blobprotovector_str([a])


def test_datum_round_trip():
    u8 = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(u8, 7)
    assert datum.label == 7 and datum.data == u8.tobytes() and not datum.float_data
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, u8)
    f = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    fd = caffe.io.array_to_datum(f)
    assert not fd.HasField("label") and not fd.data
    np.testing.assert_allclose(caffe.io.datum_to_array(fd), f, rtol=1e-6)
    with pytest.raises(ShapeError, match=r"\(channels, height, width\)"):
        caffe.io.array_to_datum(np.zeros((3, 4)))


def test_draw_writes_and_returns_the_graph(tmp_path):
    from numcaffe.net.config import read_message
    net = read_message(os.path.join(FIX, "lenet_deploy.prototxt"), caffe.proto.caffe_pb2.NetParameter)
    source = caffe.draw.draw_net(net, "TB", ext="dot").decode()
    assert source.startswith("digraph") and "rankdir=TB" in source and '"conv1"' not in source.split("{")[0]
    assert all(name in source for name in ("conv1", "pool2", "ip2", "prob"))
    out = tmp_path / "lenet.dot"
    caffe.draw.draw_net_to_file(net, str(out), "LR", caffe.TEST)
    assert "rankdir=LR" in out.read_text()
    with pytest.raises(ConfigError, match="unsupported format"):
        caffe.draw.draw_net(net, "LR", ext="bmp")
