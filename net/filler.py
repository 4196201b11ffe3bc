"""Fillers: how learnable blobs get their initial values (Caffe's FillerParameter).

Each filler is a function ``fill(blob, filler_param, rng)`` of a numpy
Generator, so one seed reproduces a net's initialisation.  Formulas follow
Caffe's filler.hpp:

* constant: ``value``;  uniform: U(min, max);
* gaussian: N(mean, std), with ``sparse >= 0`` keeping each weight with
  probability ``sparse / num_outputs`` (num_outputs = shape[0]); the other
  fillers refuse ``sparse``, as Caffe's do;
* xavier: U(-s, s), ``s = sqrt(3 / n)``;  msra: N(0, sqrt(2 / n)), where n is
  fan_in = count / shape[0], fan_out = count / shape[1], or their average, by
  ``variance_norm``;
* positive_unitball: U(0, 1) rows normalised to sum to one;
* bilinear: the weights of bilinear upsampling for a Deconvolution kernel.
"""
import math

import numpy as np

from numcaffe.net.errors import ConfigError

FILLERS = {}


def _filler(name):
    def deco(fn):
        FILLERS[name] = fn
        return fn
    return deco


def _fans(blob):
    if blob.num_axes < 1 or blob.shape[0] == 0:
        raise ConfigError(f"cannot compute fan-in of a blob of shape {blob.shape}")
    fan_in = blob.count // blob.shape[0]
    fan_out = blob.count // blob.shape[1] if blob.num_axes > 1 and blob.shape[1] else blob.count
    return fan_in, fan_out


def _fan(blob, param):
    fan_in, fan_out = _fans(blob)
    norm = param.variance_norm
    VN = type(param).VarianceNorm
    if norm == VN.Value("FAN_OUT"):
        return fan_out
    if norm == VN.Value("AVERAGE"):
        return (fan_in + fan_out) / 2.0
    return fan_in


@_filler("constant")
def constant(blob, param, rng):
    blob.data[...] = param.value


@_filler("uniform")
def uniform(blob, param, rng):
    blob.data[...] = rng.uniform(param.min, param.max, blob.shape)


@_filler("gaussian")
def gaussian(blob, param, rng):
    blob.data[...] = rng.normal(param.mean, param.std, blob.shape)
    if param.sparse >= 0:
        if blob.num_axes < 1:
            raise ConfigError("a sparse gaussian filler needs a blob with at least one axis")
        keep = param.sparse / float(blob.shape[0])
        blob.data[...] *= rng.random(blob.shape) < keep


@_filler("positive_unitball")
def positive_unitball(blob, param, rng):
    num = blob.shape[0] if blob.num_axes else 1
    values = rng.random((num, blob.count // max(num, 1)))
    values /= values.sum(axis=1, keepdims=True)
    blob.data[...] = values.reshape(blob.shape)


@_filler("xavier")
def xavier(blob, param, rng):
    scale = math.sqrt(3.0 / _fan(blob, param))
    blob.data[...] = rng.uniform(-scale, scale, blob.shape)


@_filler("msra")
def msra(blob, param, rng):
    std = math.sqrt(2.0 / _fan(blob, param))
    blob.data[...] = rng.normal(0.0, std, blob.shape)


@_filler("bilinear")
def bilinear(blob, param, rng):
    if blob.num_axes != 4 or blob.shape[2] != blob.shape[3]:
        raise ConfigError(f"the bilinear filler needs a 4-D blob with square kernels, got {blob.shape}")
    k = blob.shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)   # Caffe's centre since BVLC/caffe#5713 (the earlier one was off for k = 3, 6, 7, ...)
    x = np.arange(k)
    w = 1.0 - np.abs(x / f - c)
    blob.data[...] = np.outer(w, w)[None, None, :, :]


def fill(blob, param, rng):
    """Fill ``blob`` as ``param`` (a FillerParameter) says."""
    try:
        fn = FILLERS[param.type]
    except KeyError:
        raise ConfigError(f"unknown filler type {param.type!r} (known: {', '.join(sorted(FILLERS))})") from None
    if param.sparse != -1 and param.type != "gaussian":
        # Caffe's other fillers CHECK this too: a sparse setting would otherwise be silently ignored.
        raise ConfigError(f"filler {param.type!r} does not support sparse (got sparse: {param.sparse}); "
                          f"only the gaussian filler does")
    fn(blob, param, rng)
