"""Crop: cut bottom[0] down to bottom[1]'s shape, as Caffe's crop_layer.cpp.

Axes before ``axis`` are kept whole; every axis ``i >= axis`` is cut to
``bottom[1].shape[i]`` starting at ``offset`` (one offset for all cropped axes,
one per cropped axis, or none = 0)::

    y = x[..., o_a : o_a + s_a, o_{a+1} : o_{a+1} + s_{a+1}, ...]
    dx = 0 except dx[same window] = dy;   bottom[1] only gives the shape (no gradient)
"""
from numcaffe.layers.base import Layer, register
from numcaffe.net.errors import ConfigError


@register("Crop")
class CropLayer(Layer):
    """y = x[offset : offset + shape of bottom[1]] on the axes from ``axis`` on."""

    exact_num_bottom = 2
    exact_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.crop_param
        self.axis = bottom[0].canonical_axis(p.axis)
        self.offset = list(p.offset)
        n = bottom[0].num_axes
        if len(self.offset) > 1 and self.axis + len(self.offset) != n:
            raise ConfigError(f"{self.describe()}: give one offset, or one per cropped axis "
                              f"({n - self.axis} axes from axis {self.axis}; {len(self.offset)} offsets given)")

    def Reshape(self, bottom, top):
        x, ref = bottom
        if ref.num_axes != x.num_axes:
            raise self.shape_error(f"both bottoms need the same number of axes; got {x.shape} and {ref.shape}")
        if top[0] is x:
            raise self.shape_error("cannot run in place")
        shape = list(x.shape)
        self.slices = []
        for i in range(x.num_axes):
            if i < self.axis:
                self.slices.append(slice(None))
                continue
            off = 0
            if len(self.offset) == 1:
                off = self.offset[0]
            elif len(self.offset) > 1:
                off = self.offset[i - self.axis]
            if x.shape[i] - off < ref.shape[i]:
                raise self.shape_error(f"the crop of axis {i} is out of bounds: size {ref.shape[i]} at "
                                       f"offset {off} in an axis of size {x.shape[i]}")
            shape[i] = ref.shape[i]
            self.slices.append(slice(off, off + ref.shape[i]))
        self.slices = tuple(self.slices)
        top[0].reshape(shape)

    def Forward_cpu(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.slices]

    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0.0
            dx[self.slices] = top[0].diff

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
