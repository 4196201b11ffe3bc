"""Gradient cases for the neuron layers (layers/neuron.py, activation.py, power.py), with numpy oracles for the forward values."""
import numpy as np

from numcaffe.net.proto import caffe_pb2
from tests.layers.gradcase import GradCase, away_from, gaussian, uniform

TEST = caffe_pb2.TEST
SELU_ALPHA = 1.6732632423543772
SELU_LAMBDA = 1.0507009873554805


def away_from_all(shape, kinks, margin=0.05, lo=-2.0, hi=2.0):
    """Uniform values in [lo, hi] kept ``margin`` away from every point in ``kinks``."""
    def make(rs):
        x = rs.uniform(lo, hi, shape)
        for k in kinks:
            near = np.abs(x - k) < margin
            x = np.where(near, k + np.where(x >= k, 2 * margin, -2 * margin), x)
        return x
    return make


def oracle(fn, rtol=1e-5, atol=1e-6):
    """check_forward: the top equals ``fn(x, layer)`` computed in float64."""
    def check(bottoms, tops, layer):
        expected = fn(bottoms[0].astype(np.float64), layer)
        np.testing.assert_allclose(tops[0], expected, rtol=rtol, atol=atol)
    return check


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _prelu(x, layer):
    a = layer.blobs[0].data.astype(np.float64)
    a = a.reshape((1, -1) + (1,) * (x.ndim - 2)) if a.ndim else a
    return np.maximum(x, 0) + a * np.minimum(x, 0)


def _dropout_train(bottoms, tops, layer):
    x, y = bottoms[0], tops[0]
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] * layer.train_scale, rtol=1e-6)
    assert 0 < kept.sum() < x.size


def _dropout_test(bottoms, tops, layer):
    np.testing.assert_allclose(tops[0], bottoms[0] * layer.test_scale, rtol=1e-6)


CASES = {
    "ReLU": [
        GradCase('type: "ReLU"', [away_from((2, 3, 4, 5))], id="plain",
                 check_forward=oracle(lambda x, l: np.maximum(x, 0))),
        GradCase('type: "ReLU" relu_param { negative_slope: 0.1 }', [away_from((4, 6))], id="leaky",
                 check_forward=oracle(lambda x, l: np.where(x > 0, x, 0.1 * x))),
        GradCase('type: "ReLU" relu_param { negative_slope: -0.5 }', [away_from((7,))], id="negative-slope",
                 check_forward=oracle(lambda x, l: np.where(x > 0, x, -0.5 * x))),
    ],
    "PReLU": [
        GradCase('type: "PReLU"', [away_from((2, 3, 4, 5))], id="per-channel-4d", check_forward=oracle(_prelu)),
        GradCase('type: "PReLU" prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }',
                 [away_from((5, 4))], id="per-channel-2d", check_forward=oracle(_prelu)),
        GradCase('type: "PReLU" prelu_param { channel_shared: true }', [away_from((2, 3, 4, 5))],
                 id="shared-4d", check_forward=oracle(_prelu)),
        GradCase('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.7 } }',
                 [away_from((6, 3))], id="shared-2d", check_forward=oracle(_prelu)),
        GradCase('type: "PReLU" prelu_param { filler { type: "gaussian" std: 0.3 } }',
                 [away_from((2, 3, 5))], id="per-channel-3d", check_forward=oracle(_prelu)),
    ],
    "ELU": [
        GradCase('type: "ELU"', [away_from((2, 3, 4))], id="default",
                 check_forward=oracle(lambda x, l: np.where(x > 0, x, np.expm1(x)))),
        GradCase('type: "ELU" elu_param { alpha: 0.3 }', [away_from((5, 6), scale=2.0)], id="alpha0.3",
                 check_forward=oracle(lambda x, l: np.where(x > 0, x, 0.3 * np.expm1(x)))),
    ],
    "SELU": [
        GradCase('type: "SELU"', [away_from((2, 3, 4))], id="default",
                 check_forward=oracle(lambda x, l: SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)))),
        GradCase('type: "SELU" selu_param { alpha: 1.0 lambda: 2.0 }', [away_from((6, 5))], id="custom",
                 check_forward=oracle(lambda x, l: 2.0 * np.where(x > 0, x, np.expm1(x)))),
    ],
    "Sigmoid": [
        GradCase('type: "Sigmoid"', [gaussian((2, 3, 4, 5), scale=2.0)], id="4d",
                 check_forward=oracle(lambda x, l: _sigmoid(x))),
        GradCase('type: "Sigmoid"', [uniform((50,), -30, 30)], id="saturating",
                 check_forward=oracle(lambda x, l: _sigmoid(x))),
    ],
    "TanH": [
        GradCase('type: "TanH"', [gaussian((2, 3, 4, 5))], id="4d", check_forward=oracle(lambda x, l: np.tanh(x))),
        GradCase('type: "TanH"', [uniform((40,), -20, 20)], id="saturating",
                 check_forward=oracle(lambda x, l: np.tanh(x))),
    ],
    "AbsVal": [
        GradCase('type: "AbsVal"', [away_from((2, 3, 4, 5))], id="4d", check_forward=oracle(lambda x, l: np.abs(x))),
        GradCase('type: "AbsVal"', [away_from((9,), scale=3.0)], id="1d", check_forward=oracle(lambda x, l: np.abs(x))),
    ],
    "BNLL": [
        GradCase('type: "BNLL"', [gaussian((2, 3, 4, 5), scale=2.0)], id="4d",
                 check_forward=oracle(lambda x, l: np.logaddexp(0, x))),
        GradCase('type: "BNLL"', [uniform((30,), -60, 60)], id="wide", step=1e-2,
                 check_forward=oracle(lambda x, l: np.logaddexp(0, x))),
    ],
    "Power": [
        GradCase('type: "Power" power_param { power: 0.37 scale: 0.83 shift: 2.4 }', [uniform((2, 3, 4), 0.5, 2.0)],
                 id="fractional", check_forward=oracle(lambda x, l: (2.4 + 0.83 * x) ** 0.37)),
        GradCase('type: "Power" power_param { power: 2 scale: 0.34 shift: -2.4 }', [gaussian((2, 3, 4, 5))],
                 id="square", check_forward=oracle(lambda x, l: (-2.4 + 0.34 * x) ** 2)),
        GradCase('type: "Power" power_param { power: 1 scale: -1.5 shift: 0.5 }', [gaussian((4, 5))],
                 id="linear", check_forward=oracle(lambda x, l: 0.5 - 1.5 * x)),
        GradCase('type: "Power" power_param { power: 0.37 }', [uniform((3, 4), 0.5, 2.0)],
                 id="fractional-no-shift", check_forward=oracle(lambda x, l: x ** 0.37)),
        GradCase('type: "Power" power_param { power: -1.5 scale: 2 shift: 1 }', [uniform((10,), 0.2, 2.0)],
                 id="negative-power", check_forward=oracle(lambda x, l: (1 + 2 * x) ** -1.5)),
        GradCase('type: "Power" power_param { power: 3 scale: 0 shift: 1.5 }', [gaussian((3, 4))],
                 id="zero-scale", check_forward=oracle(lambda x, l: np.full_like(x, 1.5 ** 3))),
        GradCase('type: "Power" power_param { power: 0 scale: 2 shift: 1 }', [gaussian((3, 4))],
                 id="zero-power", check_forward=oracle(lambda x, l: np.ones_like(x))),
    ],
    "Exp": [
        GradCase('type: "Exp"', [gaussian((2, 3, 4))], id="e", check_forward=oracle(lambda x, l: np.exp(x))),
        GradCase('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', [gaussian((2, 3, 4, 5))],
                 id="base2", check_forward=oracle(lambda x, l: 2.0 ** (1 + 0.5 * x))),
        GradCase('type: "Exp" exp_param { base: -1 scale: -0.8 shift: 0.3 }', [gaussian((5, 4))],
                 id="e-scaled", check_forward=oracle(lambda x, l: np.exp(0.3 - 0.8 * x))),
        GradCase('type: "Exp" exp_param { base: 0.5 scale: 1.2 }', [gaussian((6,))],
                 id="base-half", check_forward=oracle(lambda x, l: 0.5 ** (1.2 * x))),
    ],
    "Log": [
        GradCase('type: "Log"', [uniform((2, 3, 4), 0.5, 3.0)], id="ln", check_forward=oracle(lambda x, l: np.log(x))),
        GradCase('type: "Log" log_param { base: 2 scale: 0.5 shift: 1 }', [uniform((2, 3, 4, 5), 0.1, 3.0)],
                 id="base2", check_forward=oracle(lambda x, l: np.log2(1 + 0.5 * x))),
        GradCase('type: "Log" log_param { base: 10 scale: -2 shift: 5 }', [uniform((5, 4), -1.0, 2.0)],
                 id="base10", check_forward=oracle(lambda x, l: np.log10(5 - 2 * x))),
        GradCase('type: "Log" log_param { scale: 3 shift: 0.2 }', [uniform((8,), 0.1, 2.0)],
                 id="ln-scaled", check_forward=oracle(lambda x, l: np.log(0.2 + 3 * x))),
    ],
    "Swish": [
        GradCase('type: "Swish"', [gaussian((2, 3, 4, 5), scale=2.0)], id="beta1",
                 check_forward=oracle(lambda x, l: x * _sigmoid(x))),
        GradCase('type: "Swish" swish_param { beta: 1.5 }', [gaussian((6, 5), scale=2.0)], id="beta1.5",
                 check_forward=oracle(lambda x, l: x * _sigmoid(1.5 * x))),
        GradCase('type: "Swish" swish_param { beta: 0 }', [gaussian((7,))], id="beta0",
                 check_forward=oracle(lambda x, l: x / 2)),
    ],
    "Threshold": [
        GradCase('type: "Threshold"', [gaussian((2, 3, 4))], id="zero", no_gradient=True,
                 check_forward=oracle(lambda x, l: (x > 0).astype(np.float64))),
        GradCase('type: "Threshold" threshold_param { threshold: 0.3 }', [gaussian((5, 6))], id="0.3",
                 no_gradient=True, check_forward=oracle(lambda x, l: (x > np.float32(0.3)).astype(np.float64))),
    ],
    "Clip": [
        GradCase('type: "Clip" clip_param { min: -0.5 max: 0.8 }', [away_from_all((2, 3, 4, 5), (-0.5, 0.8))],
                 id="wide", check_forward=oracle(lambda x, l: np.clip(x, np.float32(-0.5), np.float32(0.8)))),
        GradCase('type: "Clip" clip_param { min: 0 max: 6 }', [away_from_all((4, 5), (0, 6), lo=-3, hi=9)],
                 id="relu6", check_forward=oracle(lambda x, l: np.clip(x, 0, 6))),
        GradCase('type: "Clip" clip_param { min: 1 max: 2 }', [away_from_all((20,), (1, 2), lo=-1, hi=4)],
                 id="narrow", check_forward=oracle(lambda x, l: np.clip(x, 1, 2))),
    ],
    "Dropout": [
        GradCase('type: "Dropout"', [gaussian((2, 3, 4, 5))], id="train", check_forward=_dropout_train),
        GradCase('type: "Dropout" dropout_param { dropout_ratio: 0.2 }', [gaussian((6, 7))], id="train-0.2",
                 check_forward=_dropout_train),
        GradCase('type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false }', [gaussian((6, 7))],
                 id="train-unscaled", check_forward=_dropout_train),
        GradCase('type: "Dropout"', [gaussian((2, 3, 4))], phase=TEST, id="test", check_forward=_dropout_test),
        GradCase('type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false }', [gaussian((4, 5))],
                 phase=TEST, id="test-unscaled", check_forward=_dropout_test),
    ],
}
