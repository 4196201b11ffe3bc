"""Gradient cases for the ``Python`` layer type, running the layers in tests/layers/pylayers.py."""
import numpy as np

from tests.layers.gradcase import GradCase, gaussian


def _py(layer, param_str=""):
    escaped = param_str.replace('"', '\\"')
    return f'type: "Python" python_param {{ module: "tests.layers.pylayers" layer: "{layer}" param_str: "{escaped}" }}'


def _cube_forward(bottoms, tops, layer):
    np.testing.assert_allclose(tops[0], 0.5 * bottoms[0] ** 3, rtol=1e-6)


def _affine_forward(bottoms, tops, layer):
    w, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(tops[0], bottoms[0].reshape(2, -1) @ w + b, rtol=1e-5, atol=1e-6)


def _euclid_forward(bottoms, tops, layer):
    np.testing.assert_allclose(tops[0].ravel()[0], ((bottoms[0] - bottoms[1]) ** 2).sum() / 4 / 2, rtol=1e-5)


CASES = {
    "Python": [
        GradCase(_py("Cube", '{"scale": 0.5}'), [gaussian((2, 3, 4))], id="cube", check_forward=_cube_forward),
        GradCase(_py("Affine", "3"), [gaussian((2, 2, 3))], id="affine-params", check_forward=_affine_forward),
        GradCase(_py("EuclideanLoss"), [gaussian((4, 5)), gaussian((4, 5))], id="euclidean-loss",
                 check_forward=_euclid_forward),
    ],
}
