"""Layers that bring data in without reading files: Input and DummyData."""
import numpy as np

from numcaffe.layers.base import Layer, register
from numcaffe.net.errors import ConfigError
from numcaffe.net.filler import fill
from numcaffe.net.proto import caffe_pb2


def _shapes_for(layer, tops, shapes, legacy=None):
    """One shape per top: either one shape for all or one each (Caffe's rule)."""
    if legacy is not None and not shapes:
        shapes = legacy
    if len(shapes) not in (1, len(tops)):
        raise ConfigError(f"{layer.describe()}: give one shape for all tops or one per top "
                          f"({len(tops)} tops, {len(shapes)} shapes)")
    return [shapes[0] if len(shapes) == 1 else shapes[i] for i in range(len(tops))]


@register("Input")
class InputLayer(Layer):
    """Net inputs: tops of the given shapes, filled by the caller (``net.blobs[...]``)."""

    exact_num_bottom = 0
    min_num_top = 1
    force_backward_bottoms = False

    def LayerSetUp(self, bottom, top):
        shapes = [tuple(s.dim) for s in self.layer_param.input_param.shape]
        if not shapes:
            return  # shapes come later, from the caller
        for t, s in zip(top, _shapes_for(self, top, shapes)):
            t.reshape(s)

    def Reshape(self, bottom, top):
        pass  # the caller reshapes inputs

    def Forward_cpu(self, bottom, top):
        pass

    def Backward_cpu(self, top, propagate_down, bottom):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers: constant ones once, random ones on every forward."""

    exact_num_bottom = 0
    min_num_top = 1

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.dummy_data_param
        legacy = None
        if len(p.num) or len(p.channels) or len(p.height) or len(p.width):
            n = len(p.num)
            if not (len(p.channels) == len(p.height) == len(p.width) == n):
                raise ConfigError(f"{self.describe()}: num, channels, height and width must be given "
                                  f"equally often")
            legacy = [(p.num[i], p.channels[i], p.height[i], p.width[i]) for i in range(n)]
        shapes = _shapes_for(self, top, [tuple(s.dim) for s in p.shape], legacy)
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, len(top)):
            raise ConfigError(f"{self.describe()}: give no data_filler, one, or one per top")
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[0] if len(fillers) == 1 else fillers[i] for i in range(len(top))]
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, s, f in zip(top, shapes, self.fillers):
            t.reshape(s)
            fill(t, f, self.random)

    def Reshape(self, bottom, top):
        pass

    def Forward_cpu(self, bottom, top):
        for t, f, again in zip(top, self.fillers, self.refill):
            if again:
                fill(t, f, self.random)

    def Backward_cpu(self, top, propagate_down, bottom):
        pass
