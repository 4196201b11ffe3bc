"""Gradient cases for the layers in layers/input.py and layers/shape.py."""
import numpy as np

from tests.layers.gradcase import GradCase, gaussian


def _split_forward(bottoms, tops, layer):
    for t in tops:
        np.testing.assert_array_equal(t, bottoms[0])


def _input_forward(bottoms, tops, layer):
    assert tops[0].shape == (2, 3)


def _dummy_forward(bottoms, tops, layer):
    assert tops[0].shape == (2, 3, 4)
    np.testing.assert_array_equal(tops[0], 0.5)
    assert tops[1].shape == (5,) and np.abs(tops[1]).max() > 0


CASES = {
    "Split": [
        GradCase('type: "Split"', [gaussian((2, 3, 4))], num_top=2, id="two", check_forward=_split_forward),
        GradCase('type: "Split"', [gaussian((5,))], num_top=3, id="three"),
    ],
    "Input": [
        GradCase('type: "Input" input_param { shape { dim: 2 dim: 3 } }', [], no_gradient=True,
                 check_forward=_input_forward),
    ],
    "DummyData": [
        GradCase('type: "DummyData" dummy_data_param { shape { dim: 2 dim: 3 dim: 4 } shape { dim: 5 } '
                 'data_filler { type: "constant" value: 0.5 } data_filler { type: "gaussian" std: 1 } }',
                 [], num_top=2, no_gradient=True, check_forward=_dummy_forward),
    ],
}
