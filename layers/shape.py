"""Layers that move data around without arithmetic on it, as Caffe defines them.

* Split: one bottom to several tops (shared data); d bottom = sum of the tops' diffs.
* Concat / Slice: join bottoms along an axis, or cut one bottom into tops along it.
* Flatten / Reshape: a new shape over the same memory (data and diff are shared).
* Tile: repeat the block from ``axis`` on ``tiles`` times; d bottom sums the copies.
* Silence: swallows its bottoms; backward writes zero gradients.

Pure data movement is one vectorized numpy copy per bottom or top (a view of the
top as ``(outer, axis, inner)``); the loops with arithmetic are Numba kernels.

Sharing follows Caffe's Flatten: the top takes the bottom's data when shapes are
set, and the bottom takes the top's diff in ``Backward``.  Before the first
backward pass the two diffs are separate buffers; after it they are one.
"""
import numpy as np
from numba import njit

from numcaffe.layers.base import Layer, register
from numcaffe.layers.elementwise import add_into, weighted_sum2, weighted_sum2_parallel
from numcaffe.layers.parallel import parts
from numcaffe.net.errors import ConfigError, ShapeError


@njit(cache=True)
def tile_backward(dy, dx, outer, tiles, inner):
    """dx[i, k] = sum_t dy[i, t, k]: each bottom block gets the sum of its copies."""
    for i in range(outer):
        src = i * tiles * inner
        dst = i * inner
        for k in range(inner):
            dx[dst + k] = dy[src + k]
        for t in range(1, tiles):
            src += inner
            for k in range(inner):
                dx[dst + k] += dy[src + k]


def canonical(layer, blob, axis, what="axis"):
    """``blob.canonical_axis(axis)``, with an error naming the layer and the parameter."""
    try:
        return blob.canonical_axis(axis)
    except ShapeError:
        raise layer.shape_error(f"{what} {axis} is out of range for a {blob.num_axes}-D bottom "
                                f"of shape {blob.shape}") from None


def legacy_axis(layer, blob, value, what):
    """A legacy uint32 axis (concat_dim, slice_dim): no negative indexing, must exist."""
    if value >= blob.num_axes:
        raise layer.shape_error(f"{what} {value} is out of range for a {blob.num_axes}-D bottom "
                                f"of shape {blob.shape}")
    return int(value)


def blocks(blob, outer, n, inner, diff=False):
    """``blob``'s data (or diff) viewed as ``(outer, n, inner)``."""
    return (blob.diff if diff else blob.data).reshape(outer, n, inner)


@register("Split")
class SplitLayer(Layer):
    """top[k] = bottom for every k (shared data);  d bottom = sum_k d top[k]."""

    exact_num_bottom = 1
    min_num_top = 1

    def Reshape(self, bottom, top):
        for t in top:
            if t is bottom[0]:
                raise self.shape_error("a Split layer cannot run in place")
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def Forward_cpu(self, bottom, top):
        pass  # the tops share the bottom's data

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].flat_diff
        if len(top) == 2:
            shares = parts(dx.size)
            if shares > 1:
                weighted_sum2_parallel(1.0, top[0].flat_diff, 1.0, top[1].flat_diff, dx, shares)
            else:
                weighted_sum2(1.0, top[0].flat_diff, 1.0, top[1].flat_diff, dx)
            return
        dx[...] = top[0].flat_diff
        for t in top[1:]:
            add_into(dx, t.flat_diff)


@register("Concat")
class ConcatLayer(Layer):
    """y = [x_0, x_1, ...] joined along ``axis``;  d x_i = the part of dy that x_i filled.

    All bottoms must agree on every axis but ``axis`` (concat_param.axis, default 1,
    negative counts from the end; or the legacy ``concat_dim``).  With one bottom the
    top is the bottom (shared data and diff).
    """

    min_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise ConfigError(f"{self.describe()}: give concat_param.axis or the legacy concat_dim, not both")

    def Reshape(self, bottom, top):
        p = self.layer_param.concat_param
        first = bottom[0]
        if p.HasField("concat_dim"):
            axis = legacy_axis(self, first, p.concat_dim, "concat_dim")
        else:
            axis = canonical(self, first, p.axis, "concat axis")
        if len(bottom) > 1 and any(top[0] is b for b in bottom):
            raise self.shape_error("a Concat layer with several bottoms cannot run in place")
        shape = list(first.shape)
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != first.num_axes:
                raise self.shape_error(f"all bottoms need the same number of axes; bottom[0] has shape "
                                       f"{first.shape}, bottom[{i}] has shape {b.shape}")
            for j in range(first.num_axes):
                if j != axis and b.shape[j] != first.shape[j]:
                    raise self.shape_error(f"bottoms may differ only on the concat axis {axis}; bottom[0] "
                                           f"has shape {first.shape}, bottom[{i}] has shape {b.shape} "
                                           f"(axis {j} differs)")
            shape[axis] += b.shape[axis]
        self.axis = axis
        self.outer = first.count_range(0, axis)
        self.inner = first.count_range(axis + 1)
        top[0].reshape(shape)
        if len(bottom) == 1:
            top[0].share_data(first)

    def _parts(self, bottom, top, diff):
        """(bottom blocks, matching top blocks) pairs, each viewed as (outer, n, inner)."""
        y = blocks(top[0], self.outer, top[0].shape[self.axis], self.inner, diff)
        off = 0
        for b in bottom:
            n = b.shape[self.axis]
            yield b, y[:, off:off + n]
            off += n

    def Forward_cpu(self, bottom, top):
        if len(bottom) == 1:
            return  # the top shares the bottom's data
        for b, part in self._parts(bottom, top, diff=False):
            np.copyto(part, blocks(b, self.outer, b.shape[self.axis], self.inner))

    def Backward_cpu(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            if propagate_down[0]:
                bottom[0].share_diff(top[0])
            return
        for (b, part), down in zip(self._parts(bottom, top, diff=True), propagate_down):
            if down:
                np.copyto(blocks(b, self.outer, b.shape[self.axis], self.inner, diff=True), part)


@register("Slice")
class SliceLayer(Layer):
    """Cut the bottom along ``axis`` into the tops;  d bottom = the tops' diffs joined again.

    ``slice_point`` lists the cut positions (one fewer than the tops, strictly
    increasing); without them the axis is split into equal parts.  The axis is
    slice_param.axis (default 1) or the legacy ``slice_dim``.
    """

    exact_num_bottom = 1
    min_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise ConfigError(f"{self.describe()}: give slice_param.axis or the legacy slice_dim, not both")
        self.slice_point = [int(s) for s in p.slice_point]

    def Reshape(self, bottom, top):
        p = self.layer_param.slice_param
        x = bottom[0]
        if p.HasField("slice_dim"):
            axis = legacy_axis(self, x, p.slice_dim, "slice_dim")
        else:
            axis = canonical(self, x, p.axis, "slice axis")
        if len(top) > 1 and any(t is x for t in top):
            raise self.shape_error("a Slice layer with several tops cannot run in place")
        dim = x.shape[axis]
        if self.slice_point:
            if len(self.slice_point) != len(top) - 1:
                raise self.shape_error(f"{len(self.slice_point)} slice_point(s) given for {len(top)} tops; "
                                       f"give one fewer than the tops")
            if len(top) > dim:
                raise self.shape_error(f"cannot cut axis {axis} of size {dim} (bottom shape {x.shape}) "
                                       f"into {len(top)} tops")
            prev, sizes = 0, []
            for s in self.slice_point:
                if s <= prev:
                    raise self.shape_error(f"slice points {self.slice_point} must be positive and strictly "
                                           f"increasing")
                sizes.append(s - prev)
                prev = s
            if prev > dim:
                raise self.shape_error(f"slice point {prev} is beyond axis {axis} of size {dim} "
                                       f"(bottom shape {x.shape})")
            sizes.append(dim - prev)
        else:
            if dim % len(top):
                raise self.shape_error(f"{len(top)} tops do not evenly divide axis {axis} of size {dim} "
                                       f"(bottom shape {x.shape}); give slice_point")
            sizes = [dim // len(top)] * len(top)
        self.axis = axis
        self.outer = x.count_range(0, axis)
        self.inner = x.count_range(axis + 1)
        for t, n in zip(top, sizes):
            shape = list(x.shape)
            shape[axis] = n
            t.reshape(shape)
        if len(top) == 1:
            top[0].share_data(x)

    def _parts(self, bottom, top, diff):
        """(top, matching bottom blocks) pairs, each viewed as (outer, n, inner)."""
        x = blocks(bottom[0], self.outer, bottom[0].shape[self.axis], self.inner, diff)
        off = 0
        for t in top:
            n = t.shape[self.axis]
            yield t, x[:, off:off + n]
            off += n

    def Forward_cpu(self, bottom, top):
        if len(top) == 1:
            return  # the top shares the bottom's data
        for t, part in self._parts(bottom, top, diff=False):
            np.copyto(blocks(t, self.outer, t.shape[self.axis], self.inner), part)

    def Backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if len(top) == 1:
            bottom[0].share_diff(top[0])
            return
        for t, part in self._parts(bottom, top, diff=True):
            np.copyto(part, blocks(t, self.outer, t.shape[self.axis], self.inner, diff=True))


class _AliasLayer(Layer):
    """A top that is the bottom under another shape: shared data, and shared diff after backward."""

    exact_num_bottom = 1
    exact_num_top = 1

    def top_shape(self, x):
        raise NotImplementedError

    def Reshape(self, bottom, top):
        x = bottom[0]
        if top[0] is x:
            raise self.shape_error(f"a {self.type_name} layer cannot run in place; give its top its own name")
        shape = self.top_shape(x)
        count = int(np.prod(shape, dtype=np.int64))
        if count != x.count:
            raise self.shape_error(f"the output shape {tuple(shape)} holds {count} values but the bottom "
                                   f"of shape {x.shape} holds {x.count}; the counts must match")
        top[0].reshape(shape)
        top[0].share_data(x)

    def Forward_cpu(self, bottom, top):
        pass  # the top shares the bottom's data

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].share_diff(top[0])


@register("Flatten")
class FlattenLayer(_AliasLayer):
    """Merge axes ``axis .. end_axis`` (default 1 .. -1) into one;  y and x share memory."""

    def top_shape(self, x):
        p = self.layer_param.flatten_param
        start = canonical(self, x, p.axis, "flatten axis")
        end = canonical(self, x, p.end_axis, "flatten end_axis")
        if start > end + 1:
            raise self.shape_error(f"flatten axis {p.axis} comes after end_axis {p.end_axis} "
                                   f"for a bottom of shape {x.shape}")
        return x.shape[:start] + (x.count_range(start, end + 1),) + x.shape[end + 1:]


@register("Reshape")
class ReshapeLayer(_AliasLayer):
    """A new shape for axes ``axis .. axis + num_axes`` (default: all);  y and x share memory.

    In reshape_param.shape a 0 copies the bottom's dimension at that position and
    one -1 is inferred from the count; ``num_axes: 0`` inserts axes.
    """

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.reshape_param
        dims = [int(d) for d in p.shape.dim]
        if dims.count(-1) > 1:
            raise ConfigError(f"{self.describe()}: reshape_param.shape {dims} has more than one -1; "
                              f"at most one dimension can be inferred")
        if any(d < -1 for d in dims):
            raise ConfigError(f"{self.describe()}: reshape_param.shape {dims} has a negative dimension "
                              f"other than -1")
        if p.num_axes < -1:
            raise ConfigError(f"{self.describe()}: reshape_param.num_axes must be >= 0, or -1 for all; "
                              f"got {p.num_axes}")
        self.dims = dims

    def top_shape(self, x):
        p = self.layer_param.reshape_param
        n = x.num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.shape_error(f"reshape axis {p.axis} is out of range for a {n}-D bottom of shape {x.shape}")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.shape_error(f"reshape axis {p.axis} + num_axes {p.num_axes} goes past the last axis "
                                   f"of a bottom of shape {x.shape}")
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.shape_error(f"reshape_param.shape {self.dims} has a 0 at position {i} but the "
                                           f"bottom of shape {x.shape} has no axis {start + i} to copy")
                new[i] = x.shape[start + i]
        if -1 in new:
            known = x.count_range(0, start) * x.count_range(end)
            for d in new:
                if d != -1:
                    known *= d
            if known == 0 or x.count % known:
                raise self.shape_error(f"cannot infer the -1 in reshape_param.shape {self.dims}: the bottom "
                                       f"count {x.count} (shape {x.shape}) is not a multiple of the product "
                                       f"of the other dimensions ({known})")
            new[new.index(-1)] = x.count // known
        return x.shape[:start] + tuple(new) + x.shape[end:]


@register("Tile")
class TileLayer(Layer):
    """Repeat the block of axes ``axis ..`` ``tiles`` times along ``axis``;  dx sums the copies."""

    exact_num_bottom = 1
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.tile_param
        if not p.HasField("tiles"):
            raise ConfigError(f"{self.describe()}: tile_param.tiles (the number of copies) must be given")
        if p.tiles <= 0:
            raise ConfigError(f"{self.describe()}: tile_param.tiles must be positive; got {p.tiles}")
        self.tiles = int(p.tiles)

    def Reshape(self, bottom, top):
        x = bottom[0]
        if top[0] is x:
            raise self.shape_error("a Tile layer cannot run in place")
        axis = canonical(self, x, self.layer_param.tile_param.axis, "tile axis")
        shape = list(x.shape)
        shape[axis] *= self.tiles
        self.outer = x.count_range(0, axis)
        self.inner = x.count_range(axis)
        top[0].reshape(shape)

    def Forward_cpu(self, bottom, top):
        np.copyto(blocks(top[0], self.outer, self.tiles, self.inner), blocks(bottom[0], self.outer, 1, self.inner))

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            tile_backward(top[0].flat_diff, bottom[0].flat_diff, self.outer, self.tiles, self.inner)


@register("Silence")
class SilenceLayer(Layer):
    """No output: the bottoms are consumed (so they are not net outputs); their gradient is 0."""

    min_num_bottom = 1
    exact_num_top = 0

    def Reshape(self, bottom, top):
        pass

    def Forward_cpu(self, bottom, top):
        pass

    def Backward_cpu(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.flat_diff.fill(0.0)
