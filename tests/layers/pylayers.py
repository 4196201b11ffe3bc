"""Small Python layers (pycaffe's interface) used by the tests of the ``Python`` layer type."""
import json

import numpy as np

from numcaffe.layers.python_layer import Layer


class Cube(Layer):
    """y = scale * x^3 (param_str: {"scale": s}); dy/dx = 3 scale x^2."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("Cube takes one bottom")
        self.scale = json.loads(self.param_str or "{}").get("scale", 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * bottom[0].data ** 3

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * 3 * self.scale * bottom[0].data ** 2


class Affine(Layer):
    """y = x W + b with learnable W (D x K) and b (K); num_output K from param_str."""

    def setup(self, bottom, top):
        k = int(self.param_str)
        d = bottom[0].count // bottom[0].shape[0]
        if not len(self.blobs):
            rs = np.random.RandomState(0)
            self.blobs.add_blob(d, k)
            self.blobs[0].data[...] = rs.standard_normal((d, k))
            self.blobs.add_blob(k)
            self.blobs[1].data[...] = 0.5

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape[0], self.blobs[0].shape[1])

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(bottom[0].shape[0], -1)
        top[0].data[...] = x @ self.blobs[0].data + self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        x = bottom[0].data.reshape(bottom[0].shape[0], -1)
        dy = top[0].diff
        self.blobs[0].diff[...] += x.T @ dy          # parameter diffs accumulate
        self.blobs[1].diff[...] += dy.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = (dy @ self.blobs[0].data.T).reshape(bottom[0].shape)


class EuclideanLoss(Layer):
    """pycaffe's example: loss = sum((a - b)^2) / num / 2, over two bottoms."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num * top[0].diff[0]


class PhaseEcho:
    """A plain class (no base): top = phase, a constant; no backward needed."""

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase

    def backward(self, top, propagate_down, bottom):
        pass


class Broken(Layer):
    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        raise ValueError("something went wrong in forward")


class WrongCube(Cube):
    """Cube with a wrong gradient (the factor 3 forgotten): what gradcheck must catch."""

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.scale * bottom[0].data ** 2
