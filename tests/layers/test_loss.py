"""Loss, Softmax and Accuracy behaviour beyond the gradient table: Caffe's clamps and
normalization rules, the optional probability top, label errors, loss weights,
InfogainLoss's matrix file, and the layers inside a Net."""
import numpy as np
import pytest
from google.protobuf import text_format

from numcaffe.layers.base import create_layer
from numcaffe.layers.loss import get_normalizer, normalization_mode
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, ModelFileError, NumcaffeError, ShapeError
from numcaffe.net.proto import caffe_pb2
from tests.layers.cases_loss import infogain_value, np_softmax, softmax_loss_value
from tests.layers.gradcase import blob

Norm = caffe_pb2.LossParameter
FLT_MIN = float(np.finfo(np.float32).tiny)


def make(text, *arrays, num_top=1):
    """(layer, bottoms, tops) set up and run forward once."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    param.name = param.name or "loss"
    layer = create_layer(param)
    bottom = [blob(a) for a in arrays]
    top = [Blob() for _ in range(num_top)]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    return layer, bottom, top


def grad(layer, bottom, top, propagate=None):
    propagate = propagate or [True] + [False] * (len(bottom) - 1)
    layer.Backward(top, propagate, bottom)
    return [b.diff.copy() for b in bottom]


# -- normalization -------------------------------------------------------------------------
def test_normalization_mode_reads_caffe_fields():
    lp = Norm()
    assert normalization_mode(lp) == Norm.VALID
    assert normalization_mode(lp, default=Norm.BATCH_SIZE) == Norm.BATCH_SIZE
    lp.normalize = False
    assert normalization_mode(lp) == Norm.BATCH_SIZE
    lp.normalize = True
    assert normalization_mode(lp, default=Norm.BATCH_SIZE) == Norm.VALID
    lp.normalization = Norm.NONE                       # normalization wins over legacy normalize
    assert normalization_mode(lp) == Norm.NONE


@pytest.mark.parametrize("mode,valid,expected", [
    (Norm.FULL, 3, 12.0), (Norm.VALID, 3, 3.0), (Norm.VALID, -1, 12.0), (Norm.BATCH_SIZE, 3, 2.0),
    (Norm.NONE, 3, 1.0), (Norm.VALID, 0, 1.0),
])
def test_get_normalizer_is_caffes(mode, valid, expected):
    assert get_normalizer(mode, 2, 6, valid) == expected


def test_all_labels_ignored_gives_zero_loss_and_gradient_not_nan():
    scores = np.random.RandomState(0).randn(3, 4)
    layer, bottom, top = make('type: "SoftmaxWithLoss" loss_param { ignore_label: 2 }', scores, [2, 2, 2])
    assert float(top[0].data) == 0.0
    g = grad(layer, bottom, top)[0]
    assert np.all(g == 0)


def test_sigmoid_cross_entropy_defaults_to_batch_size_and_softmax_to_valid():
    rs = np.random.RandomState(1)
    x, t = rs.randn(2, 5), np.array([[0, 1, -1, -1, 1], [1, -1, 0, 0, 1]], float)
    _, _, top = make('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 }', x, t)
    keep = t != -1
    per = np.logaddexp(0, x) - t * x
    np.testing.assert_allclose(top[0].data, per[keep].sum() / 2, rtol=1e-5)
    scores, lab = rs.randn(4, 3), np.array([0, 5, 1, 5])
    _, _, top = make('type: "SoftmaxWithLoss" loss_param { ignore_label: 5 }', scores, lab)
    np.testing.assert_allclose(top[0].data, softmax_loss_value(scores, lab, ignore=5, mode="VALID"), rtol=1e-5)
    assert abs(softmax_loss_value(scores, lab, ignore=5, mode="VALID")
               - softmax_loss_value(scores, lab, ignore=5, mode="BATCH_SIZE")) > 1e-3


# -- Caffe's numerics --------------------------------------------------------------------------
def test_softmax_is_stable_for_huge_scores():
    x = np.array([[1000.0, 0.0, -1000.0], [88.0, 89.0, 90.0]])
    _, _, top = make('type: "Softmax"', x)
    assert np.all(np.isfinite(top[0].data))
    np.testing.assert_allclose(top[0].data, np_softmax(x, 1), rtol=1e-6, atol=1e-30)


def test_softmax_with_loss_clamps_log_at_flt_min():
    # p(label) = exp(-200) underflows to 0 in float; Caffe's loss is then -log(FLT_MIN).
    layer, bottom, top = make('type: "SoftmaxWithLoss"', [[0.0, -200.0]], [1])
    np.testing.assert_allclose(top[0].data, -np.log(FLT_MIN), rtol=1e-6)
    np.testing.assert_allclose(grad(layer, bottom, top)[0], [[1.0, -1.0]], atol=1e-7)


def test_multinomial_logistic_clamps_at_klog_threshold():
    layer, bottom, top = make('type: "MultinomialLogisticLoss"', [[0.0, 1.0], [0.5, 0.5]], [0, 1])
    np.testing.assert_allclose(top[0].data, (-np.log(1e-20) - np.log(0.5)) / 2, rtol=1e-6)
    g = grad(layer, bottom, top)[0]
    np.testing.assert_allclose(g, [[-1.0 / (2 * 1e-20), 0.0], [0.0, -1.0 / (2 * 0.5)]], rtol=1e-6)


def test_sigmoid_cross_entropy_is_stable_for_large_inputs():
    x = np.array([[100.0, -100.0, 100.0, -100.0]])
    t = np.array([[0.0, 1.0, 1.0, 0.0]])
    layer, bottom, top = make('type: "SigmoidCrossEntropyLoss"', x, t)
    np.testing.assert_allclose(top[0].data, 200.0, rtol=1e-6)
    np.testing.assert_allclose(grad(layer, bottom, top)[0], [[1.0, -1.0, 0.0, 0.0]], atol=1e-6)


def test_hinge_loss_by_hand():
    x = [[0.5, -2.0, 0.2]]
    # label 0: margins 1-0.5 = 0.5 ; max(0, 1-2) = 0 ; 1+0.2 = 1.2
    layer, bottom, top = make('type: "HingeLoss"', x, [0])
    np.testing.assert_allclose(top[0].data, 1.7, rtol=1e-6)
    np.testing.assert_allclose(grad(layer, bottom, top)[0], [[-1.0, 0.0, 1.0]])
    layer, bottom, top = make('type: "HingeLoss" hinge_loss_param { norm: L2 }', x, [0])
    np.testing.assert_allclose(top[0].data, 0.25 + 1.44, rtol=1e-6)
    np.testing.assert_allclose(grad(layer, bottom, top)[0], [[-1.0, 0.0, 2.4]], rtol=1e-6)


def test_contrastive_gradient_uses_caffes_epsilon():
    a, b = np.array([[0.3, 0.0]]), np.array([[0.0, 0.0]])
    layer, bottom, top = make('type: "ContrastiveLoss"', a, b, [0])
    np.testing.assert_allclose(top[0].data, (1 - 0.3) ** 2 / 2, rtol=1e-6)
    ga, gb = grad(layer, bottom, top, [True, True, False])[:2]
    expected = -(1 - 0.3) / (0.3 + 1e-4) * 0.3
    np.testing.assert_allclose(ga, [[expected, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(gb, -ga)


def test_l1_loss_subgradient_is_zero_where_inputs_agree():
    a, b = np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 1.0, 4.0]])
    layer, bottom, top = make('type: "L1Loss"', a, b)
    np.testing.assert_allclose(top[0].data, 2.0)
    ga, gb = grad(layer, bottom, top, [True, True])
    np.testing.assert_array_equal(ga, [[0.0, 1.0, -1.0]])
    np.testing.assert_array_equal(gb, -ga)


# -- tops, weights, labels -----------------------------------------------------------------------
def test_softmax_with_loss_second_top_holds_the_probabilities():
    rs = np.random.RandomState(2)
    scores, lab = rs.randn(2, 3, 2, 2), rs.randint(0, 3, (2, 2, 2))
    l1, b1, t1 = make('type: "SoftmaxWithLoss"', scores, lab)
    l2, b2, t2 = make('type: "SoftmaxWithLoss"', scores, lab, num_top=2)
    np.testing.assert_allclose(t2[1].data, np_softmax(scores, 1), rtol=1e-5)
    assert t2[1].shares_data_with(l2.prob)
    assert float(t1[0].data) == float(t2[0].data)
    assert l2.loss(1) == 0.0
    t2[1].diff[...] = 5.0                              # the probability top's diff plays no part
    np.testing.assert_array_equal(grad(l1, b1, t1)[0], grad(l2, b2, t2)[0])


def test_loss_weight_scales_loss_and_gradient():
    rs = np.random.RandomState(3)
    scores, lab = rs.randn(3, 4), rs.randint(0, 4, 3)
    l1, b1, t1 = make('type: "SoftmaxWithLoss"', scores, lab)
    l2, b2, t2 = make('type: "SoftmaxWithLoss" loss_weight: 2.5', scores, lab)
    assert l1.loss_weights == [1.0] and l2.loss_weights == [2.5]
    assert l2.Forward(b2, t2) == pytest.approx(2.5 * l1.Forward(b1, t1), rel=1e-6)
    np.testing.assert_allclose(grad(l2, b2, t2)[0], 2.5 * grad(l1, b1, t1)[0], rtol=1e-6)


@pytest.mark.parametrize("text,arrays,label_index", [
    ('type: "SoftmaxWithLoss"', ([[1.0, 2.0]], [0]), 1),
    ('type: "SigmoidCrossEntropyLoss"', ([[1.0, 2.0]], [[0, 1]]), 1),
    ('type: "HingeLoss"', ([[1.0, 2.0]], [0]), 1),
    ('type: "MultinomialLogisticLoss"', ([[0.4, 0.6]], [0]), 1),
    ('type: "InfogainLoss"', ([[1.0, 2.0]], [0], np.eye(2)), 2),
    ('type: "ContrastiveLoss"', ([[1.0, 2.0]], [[0.0, 1.0]], [1]), 2),
])
def test_asking_for_a_label_gradient_is_a_clear_error(text, arrays, label_index):
    layer, bottom, top = make(text, *arrays)
    assert not layer.allow_force_backward(label_index)
    propagate = [False] * len(bottom)
    propagate[label_index] = True
    with pytest.raises(NumcaffeError, match="cannot backpropagate to its label input"):
        layer.Backward(top, propagate, bottom)


def test_regression_losses_let_force_backward_reach_both_inputs():
    for t in ("EuclideanLoss", "L1Loss"):
        layer, _, _ = make(f'type: "{t}"', [[1.0]], [[2.0]])
        assert layer.allow_force_backward(0) and layer.allow_force_backward(1)
    layer, _, _ = make('type: "ContrastiveLoss"', [[1.0]], [[2.0]], [0])
    assert layer.allow_force_backward(1)


@pytest.mark.parametrize("text,arrays", [
    ('type: "SoftmaxWithLoss"', ([[1.0, 2.0]], [2])),
    ('type: "SoftmaxWithLoss" loss_param { ignore_label: 9 }', ([[1.0, 2.0]], [-1])),
    ('type: "HingeLoss"', ([[1.0, 2.0]], [3])),
    ('type: "MultinomialLogisticLoss"', ([[0.5, 0.5]], [2])),
    ('type: "InfogainLoss"', ([[1.0, 2.0]], [2], np.eye(2))),
    ('type: "Accuracy"', ([[1.0, 2.0]], [5])),
])
def test_out_of_range_label_is_a_clear_error(text, arrays):
    with pytest.raises(NumcaffeError, match=r"layer 'loss' .*label .* is not a class index in \[0, 2\)"):
        make(text, *arrays)


def test_label_count_must_match_predictions():
    with pytest.raises(ShapeError, match="must be 6 labels"):
        make('type: "SoftmaxWithLoss"', np.zeros((2, 3, 3)), np.zeros((2, 2)))
    with pytest.raises(ShapeError, match="same dimension"):
        make('type: "EuclideanLoss"', np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ShapeError, match="axis 3 is out of range"):
        make('type: "Softmax" softmax_param { axis: 3 }', np.zeros((2, 3)))


# -- InfogainLoss's matrix --------------------------------------------------------------------------
def _write_H(path, H):
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 1, *H.shape])
    proto.data.extend(H.ravel().tolist())
    path.write_bytes(proto.SerializeToString())


def test_infogain_reads_H_from_binaryproto_beside_the_config(tmp_path):
    rs = np.random.RandomState(4)
    H = rs.uniform(0, 1, (3, 3)).astype(np.float32)
    _write_H(tmp_path / "H.binaryproto", H)
    scores, lab = rs.randn(4, 3), rs.randint(0, 3, 4)
    param = caffe_pb2.LayerParameter()
    text_format.Parse('name: "info" type: "InfogainLoss" infogain_loss_param { source: "H.binaryproto" }', param)
    layer = create_layer(param)
    layer.base_dir = str(tmp_path)
    bottom = [Blob((4, 3)), Blob((4,))]
    bottom[0].data[...] = scores
    bottom[1].data[...] = lab
    top = [Blob(), Blob()]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, infogain_value(scores, lab, H), rtol=1e-5)
    np.testing.assert_allclose(top[1].data, np_softmax(scores, 1), rtol=1e-5)
    from_file = grad(layer, bottom, top)[0]
    l3, b3, t3 = make('type: "InfogainLoss"', scores, lab, H)
    np.testing.assert_allclose(from_file, grad(l3, b3, t3)[0], rtol=1e-6)


def test_infogain_source_is_opened_from_the_working_directory_first(tmp_path, monkeypatch):
    """As Caffe: an H.binaryproto in the working directory wins over the one beside the config."""
    rs = np.random.RandomState(6)
    config_dir, cwd = tmp_path / "config", tmp_path / "cwd"
    config_dir.mkdir()
    cwd.mkdir()
    H_beside, H_cwd = (rs.uniform(0, 1, (3, 3)).astype(np.float32) for _ in range(2))
    _write_H(config_dir / "H.binaryproto", H_beside)
    _write_H(cwd / "H.binaryproto", H_cwd)
    monkeypatch.chdir(cwd)
    scores, lab = rs.randn(4, 3), rs.randint(0, 3, 4)
    param = caffe_pb2.LayerParameter()
    text_format.Parse('name: "info" type: "InfogainLoss" infogain_loss_param { source: "H.binaryproto" }', param)
    layer = create_layer(param)
    layer.base_dir = str(config_dir)
    bottom, top = [blob(scores), blob(lab)], [Blob()]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, infogain_value(scores, lab, H_cwd), rtol=1e-5)


def test_infogain_with_identity_equals_softmax_with_loss():
    rs = np.random.RandomState(5)
    scores, lab = rs.randn(3, 2, 4), rs.randint(0, 2, (3, 4))
    li, bi, ti = make('type: "InfogainLoss"', scores, lab, np.eye(2))
    ls, bs, ts = make('type: "SoftmaxWithLoss"', scores, lab)
    np.testing.assert_allclose(ti[0].data, ts[0].data, rtol=1e-6)
    np.testing.assert_allclose(grad(li, bi, ti)[0], grad(ls, bs, ts)[0], rtol=1e-5, atol=1e-7)


def test_infogain_matrix_errors(tmp_path):
    with pytest.raises(ConfigError, match="third bottom or from infogain_loss_param.source"):
        make('type: "InfogainLoss"', [[1.0, 2.0]], [0])
    with pytest.raises(ConfigError, match="no such"):
        make(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/missing.binaryproto" }}',
             [[1.0, 2.0]], [0])
    (tmp_path / "bad.binaryproto").write_bytes(b"\xff\xff\xff\xff not a proto")
    with pytest.raises(ModelFileError, match="bad.binaryproto"):
        make(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/bad.binaryproto" }}',
             [[1.0, 2.0]], [0])
    with pytest.raises(ShapeError, match="must be 2 x 2"):
        make('type: "InfogainLoss"', [[1.0, 2.0]], [0], np.eye(3))
    with pytest.raises(ConfigError, match="normalize is deprecated"):
        make('type: "InfogainLoss" loss_param { normalize: true }', [[1.0, 2.0]], [0], np.eye(2))


# -- Accuracy ----------------------------------------------------------------------------------------
def test_accuracy_counts_ties_against_the_true_class():
    _, _, top = make('type: "Accuracy"', [[1.0, 1.0, 0.0], [2.0, 1.0, 1.0]], [0, 0])
    assert float(top[0].data) == 0.5
    _, _, top = make('type: "Accuracy" accuracy_param { top_k: 2 }', [[1.0, 1.0, 0.0]], [0])
    assert float(top[0].data) == 1.0


def test_accuracy_per_class_and_ignored():
    scores = [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0], [0.1, 0.2, 0.7]]
    _, _, top = make('type: "Accuracy" accuracy_param { ignore_label: 2 }', scores, [0, 0, 1, 2], num_top=2)
    assert float(top[0].data) == pytest.approx(1 / 3)
    np.testing.assert_allclose(top[1].data, [0.5, 0.0, 0.0])   # class 2 only ignored: 0
    _, _, top = make('type: "Accuracy" accuracy_param { ignore_label: 2 }', scores, [2, 2, 2, 2])
    assert float(top[0].data) == 0.0


def test_accuracy_has_no_gradient():
    layer, bottom, top = make('type: "Accuracy"', [[1.0, 2.0]], [1])
    assert not layer.allow_force_backward(0)
    layer.Backward(top, [False, False], bottom)
    with pytest.raises(NumcaffeError, match="no gradient"):
        layer.Backward(top, [True, False], bottom)
    with pytest.raises(ShapeError, match="top_k"):
        make('type: "Accuracy" accuracy_param { top_k: 3 }', [[1.0, 2.0]], [1])


def test_softmax_in_place_matches_out_of_place():
    rs = np.random.RandomState(6)
    x, dy = rs.randn(2, 3, 4).astype(np.float32), rs.randn(2, 3, 4).astype(np.float32)
    layer, bottom, top = make('type: "Softmax"', x)
    top[0].diff[...] = dy
    expected_y, expected_dx = top[0].data.copy(), grad(layer, bottom, top)[0]
    param = caffe_pb2.LayerParameter()
    text_format.Parse('name: "sm" type: "Softmax"', param)
    inplace = create_layer(param)
    blob = Blob(x.shape)
    blob.data[...] = x
    inplace.SetUp([blob], [blob])
    inplace.Forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, expected_y)
    blob.diff[...] = dy
    inplace.Backward([blob], [True], [blob])
    np.testing.assert_allclose(blob.diff, expected_dx, rtol=1e-6, atol=1e-7)


# -- inside a Net ---------------------------------------------------------------------------------
NET = """
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" loss_weight: 2 }
layer { name: "acc" type: "Accuracy" bottom: "data" bottom: "label" top: "acc" }
"""


def test_softmax_with_loss_and_accuracy_in_a_net():
    from numcaffe.net.net import TRAIN, Net
    param = caffe_pb2.NetParameter()
    text_format.Parse(NET, param)
    net = Net(param, TRAIN)
    rs = np.random.RandomState(7)
    scores, lab = rs.randn(4, 3), np.array([0, 1, 2, 1])
    out = net.forward(data=scores, label=lab)
    expected = softmax_loss_value(scores, lab)
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["acc"], np.mean(scores.argmax(1) == lab))
    net.backward()     # force_backward must not ask the label (or Accuracy) for a gradient
    p = np_softmax(scores, 1)
    p[np.arange(4), lab] -= 1
    np.testing.assert_allclose(net.blobs["data"].diff, 2 * p / 4, rtol=1e-5, atol=1e-7)
