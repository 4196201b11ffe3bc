"""Gradient cases for Concat, Slice, Flatten, Reshape, Tile, Silence (layers/shape.py) and
ArgMax, Reduction (layers/reduction.py), each with a numpy oracle for the forward values."""
import numpy as np

from tests.layers.gradcase import GradCase, away_from, distinct, gaussian


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# -- oracles ------------------------------------------------------------------------------
def concat_oracle(axis):
    def check(bottoms, tops, layer):
        np.testing.assert_array_equal(tops[0], np.concatenate(bottoms, axis=axis))
    return check


def slice_oracle(axis, points_or_n):
    def check(bottoms, tops, layer):
        parts = np.split(bottoms[0], points_or_n, axis=axis)
        assert len(parts) == len(tops)
        for t, part in zip(tops, parts):
            np.testing.assert_array_equal(t, part)
    return check


def reshape_oracle(shape):
    """The top has exactly ``shape`` and the bottom's values in C order."""
    def check(bottoms, tops, layer):
        assert tops[0].shape == tuple(shape), (tops[0].shape, shape)
        np.testing.assert_array_equal(tops[0], bottoms[0].reshape(shape))
    return check


def tile_oracle(axis, tiles):
    def check(bottoms, tops, layer):
        reps = [1] * bottoms[0].ndim
        reps[axis] = tiles
        np.testing.assert_array_equal(tops[0], np.tile(bottoms[0], reps))
    return check


def silence_oracle(bottoms, tops, layer):
    assert tops == []


def ranks(values, top_k):
    """Indices of the top_k largest values along the last axis; ties rank the larger index first."""
    index = np.broadcast_to(np.arange(values.shape[-1]), values.shape)
    order = np.lexsort((index, values), axis=-1)[..., ::-1]
    return order[..., :top_k]


def argmax_oracle(top_k, out_max_val, axis=None):
    def check(bottoms, tops, layer):
        x = bottoms[0]
        if axis is None:
            flat = x.reshape(x.shape[0], -1)
            idx = ranks(flat, top_k)
            shape = [1] * max(x.ndim, 3)
            shape[0], shape[2] = x.shape[0], top_k
            if out_max_val:
                shape[1] = 2
                expected = np.stack([idx, np.take_along_axis(flat, idx, -1)], axis=1)
            else:
                expected = idx[:, None, :]
            expected = expected.reshape(shape)
        else:
            moved = np.moveaxis(x, axis, -1)
            idx = ranks(moved, top_k)
            out = np.take_along_axis(moved, idx, -1) if out_max_val else idx
            expected = np.moveaxis(out, -1, axis)
        assert tops[0].shape == expected.shape, (tops[0].shape, expected.shape)
        np.testing.assert_array_equal(tops[0], expected.astype(np.float32))
    return check


def reduction_oracle(op, axis, coeff):
    def check(bottoms, tops, layer):
        x = bottoms[0].astype(np.float64)
        a = axis % x.ndim
        rows = x.reshape(x.shape[:a] + (-1,))
        value = {"SUM": rows.sum(-1), "ASUM": np.abs(rows).sum(-1), "SUMSQ": (rows * rows).sum(-1),
                 "MEAN": rows.mean(-1)}[op]
        assert tops[0].shape == x.shape[:a]
        _close(tops[0], coeff * value)
    return check


def ties(shape, levels=3):
    """Small integers: many equal values, to pin down how ArgMax breaks ties."""
    return lambda rs: rs.randint(0, levels, shape).astype(np.float64)


# -- cases --------------------------------------------------------------------------------
def _concat(param, shapes, axis, id):
    return GradCase(f'type: "Concat" {param}', [gaussian(s) for s in shapes], check_forward=concat_oracle(axis),
                    id=id)


def _slice(param, shape, num_top, axis, points_or_n, id):
    return GradCase(f'type: "Slice" {param}', [gaussian(shape)], num_top=num_top,
                    check_forward=slice_oracle(axis, points_or_n), id=id)


def _flatten(param, shape, out, id):
    return GradCase(f'type: "Flatten" {param}', [gaussian(shape)], check_forward=reshape_oracle(out), id=id)


def _reshape(dims, extra, shape, out, id):
    dims = " ".join(f"dim: {d}" for d in dims)
    return GradCase(f'type: "Reshape" reshape_param {{ shape {{ {dims} }} {extra} }}', [gaussian(shape)],
                    check_forward=reshape_oracle(out), id=id)


def _tile(axis, tiles, shape, id):
    return GradCase(f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}', [gaussian(shape)],
                    check_forward=tile_oracle(axis, tiles), id=id)


def _argmax(param, shape, top_k, out_max_val, axis=None, gen=distinct, id=""):
    return GradCase(f'type: "ArgMax" argmax_param {{ {param} }}', [gen(shape)], no_gradient=True,
                    check_forward=argmax_oracle(top_k, out_max_val, axis), id=id)


def _reduction(op, axis, coeff, shape, gen=gaussian, id=""):
    return GradCase(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}',
                    [gen(shape)], check_forward=reduction_oracle(op, axis, coeff), id=id)


CASES = {
    "Concat": [
        _concat("", [(2, 3, 4), (2, 5, 4)], 1, "channels-default"),
        _concat("concat_param { axis: 0 }", [(2, 3, 2), (1, 3, 2), (3, 3, 2)], 0, "axis0-three"),
        _concat("concat_param { axis: -1 }", [(2, 3, 2), (2, 3, 4)], -1, "last-axis"),
        _concat("concat_param { axis: 1 }", [(2, 1, 3, 2), (2, 2, 3, 2), (2, 3, 3, 2)], 1, "axis1-three-4d"),
        _concat("concat_param { concat_dim: 0 }", [(1, 4), (2, 4)], 0, "legacy-concat-dim"),
        _concat("", [(2, 3, 2)], 1, "one-bottom"),
    ],
    "Slice": [
        _slice("", (2, 6, 3), 3, 1, 3, "equal-three"),
        _slice("slice_param { axis: 1 slice_point: 1 slice_point: 4 }", (2, 6, 3), 3, 1, [1, 4], "points"),
        _slice("slice_param { axis: 0 slice_point: 2 }", (5, 2, 2), 2, 0, [2], "axis0-points"),
        _slice("slice_param { axis: -1 }", (2, 3, 4), 2, -1, 2, "last-axis-equal"),
        _slice("slice_param { slice_dim: 0 }", (4, 3), 4, 0, 4, "legacy-slice-dim"),
        _slice("", (2, 3, 2), 1, 1, 1, "one-top"),
    ],
    "Flatten": [
        _flatten("", (2, 3, 4, 2), (2, 24), "default"),
        _flatten("flatten_param { axis: 2 }", (2, 3, 4, 2), (2, 3, 8), "axis2"),
        _flatten("flatten_param { axis: 0 end_axis: 1 }", (2, 3, 4), (6, 4), "axis0-end1"),
        _flatten("flatten_param { axis: 1 end_axis: -2 }", (2, 3, 4, 2), (2, 12, 2), "end-minus2"),
        _flatten("flatten_param { axis: 1 end_axis: 0 }", (3, 4), (3, 1, 4), "empty-range-inserts-1"),
    ],
    "Reshape": [
        _reshape([0, -1], "", (2, 3, 4), (2, 12), "copy-infer"),
        _reshape([-1, 3], "", (2, 3, 4), (8, 3), "infer-first"),
        _reshape([0, 3, 10, -1], "", (2, 3, 6, 5), (2, 3, 10, 3), "caffe-inference"),
        _reshape([3, 10, -1], "axis: 1", (2, 3, 6, 5), (2, 3, 10, 3), "start-axis"),
        _reshape([-1], "axis: 1 num_axes: 2", (2, 3, 6, 5), (2, 18, 5), "flatten-middle"),
        _reshape([1, 1], "axis: 0 num_axes: 0", (2, 3), (1, 1, 2, 3), "insert-start"),
        _reshape([1], "axis: -1 num_axes: 0", (2, 3), (2, 3, 1), "insert-end"),
        _reshape([0, 0, 0], "", (2, 3, 4), (2, 3, 4), "copy-all"),
    ],
    "Tile": [
        _tile(1, 3, (2, 3, 2), "axis1"),
        _tile(0, 2, (2, 3), "axis0"),
        _tile(-1, 4, (2, 2, 3), "last-axis"),
        _tile(2, 1, (2, 2, 3), "one-tile"),
    ],
    "Silence": [
        GradCase('type: "Silence"', [gaussian((2, 3))], num_top=0, check_forward=silence_oracle, id="one"),
        GradCase('type: "Silence"', [gaussian((2, 3)), gaussian((4,))], num_top=0, check_forward=silence_oracle,
                 id="two"),
    ],
    "ArgMax": [
        _argmax("", (4, 10), 1, False, id="default"),
        _argmax("top_k: 3", (3, 2, 4, 2), 3, False, id="top3-4d"),
        _argmax("out_max_val: true top_k: 2", (3, 5), 2, True, id="max-val"),
        _argmax("axis: 1 top_k: 2", (2, 5, 3), 2, False, axis=1, id="axis1"),
        _argmax("axis: 0 out_max_val: true", (4, 3), 1, True, axis=0, id="axis0-values"),
        _argmax("axis: -1 top_k: 4 out_max_val: true", (2, 3, 6), 4, True, axis=-1, id="last-axis-values"),
        _argmax("top_k: 4", (3, 8), 4, False, gen=ties, id="ties"),
        _argmax("axis: 1 top_k: 3", (2, 6, 3), 3, False, axis=1, gen=ties, id="ties-axis"),
    ],
    "Reduction": [
        _reduction("SUM", 0, 1.0, (2, 3, 4), id="sum-all"),
        _reduction("SUM", 1, 2.5, (2, 3, 4), id="sum-axis1-coeff"),
        _reduction("ASUM", 0, 1.0, (3, 4), gen=away_from, id="asum-all"),
        _reduction("ASUM", -1, -0.5, (2, 3, 4), gen=away_from, id="asum-last-neg-coeff"),
        _reduction("SUMSQ", 1, 1.0, (3, 5), id="sumsq-axis1"),
        _reduction("SUMSQ", 2, 0.3, (2, 2, 3, 2), id="sumsq-axis2-coeff"),
        _reduction("MEAN", 0, 1.0, (2, 3, 4), id="mean-all"),
        _reduction("MEAN", 1, 3.0, (4, 5), id="mean-axis1-coeff"),
    ],
}
