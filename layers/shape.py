"""Layers that move data around without arithmetic on it: Split, ...

Split copies one bottom to several tops by sharing memory; its backward adds
the tops' gradients, which is how gradients add up where a blob branches.
"""
from numba import njit

from numcaffe.layers.base import Layer, register


@njit(cache=True)
def sum_into(dst, src):
    """dst += src, elementwise."""
    for i in range(dst.size):
        dst[i] += src[i]


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
        dx[...] = top[0].flat_diff
        for t in top[1:]:
            sum_into(dx, t.flat_diff)
