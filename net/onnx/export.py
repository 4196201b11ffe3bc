"""numcaffe net -> ONNX model.

The net is built as numcaffe builds it (phase filtering, splits, shapes), and
each layer in order becomes the operators of its row in :mod:`.table`, written
by one function of :mod:`.export_layers` registered under the layer's type.  Values are
named after Caffe's blobs: a blob written in place by a chain of layers
(conv1 -> BatchNorm -> Scale -> ReLU, all ``top: "conv1"``) is a chain of ONNX
values, the last one named ``conv1`` and the earlier ones ``conv1/<layer>``;
Split layers write nothing (their consumers read the split blob).  Parameters
become initializers named ``<layer>/<role>``.

Shapes that Caffe fixes at setup (pooling sizes, crops, reshape tails) are
written as constants; only the batch dimension of the inputs stays symbolic
(``N``), unless ``static_batch``.
"""
import os

import numpy as np

from numcaffe.net.onnx import OPSET, OnnxError
from numcaffe.net.onnx.table import LAYER_TO_ONNX

#: layer type -> function(ctx, layer_param, layer, xs, ys) writing the nodes that compute ys from xs.
EXPORTERS = {}


def exports(*types):
    def deco(fn):
        for t in types:
            EXPORTERS[t] = fn
        return fn
    return deco


class Graph:
    """Collects nodes and initializers; hands out unique value names."""

    def __init__(self, helper, numpy_helper):
        self.h, self.nh = helper, numpy_helper
        self.nodes, self.inits = [], []
        self.used, self.node_names = set(), set()      # value names, node names

    def fresh(self, base, used=None):
        used = self.used if used is None else used
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    def const(self, base, array, dtype=np.float32):
        name = self.fresh(base)
        self.inits.append(self.nh.from_array(np.array(array, dtype=dtype), name))     # a scalar stays 0-d
        return name

    def ints(self, base, values):
        return self.const(base, np.asarray(values, dtype=np.int64), np.int64)

    def node(self, op, inputs, outputs, name, **attrs):
        """Append one node; ``outputs`` are names already reserved (the layer's tops: the node takes the
        layer's name), or an int: that many fresh values, from a node named ``layer/Op``."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{name}/{op}" + (f"_{i}" if outputs > 1 else "")) for i in range(outputs)]
            name = f"{name}/{op}"
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(self.h.make_node(op, list(inputs), list(outputs), name=self.fresh(name, self.node_names),
                                           **attrs))
        return outputs if len(outputs) > 1 else outputs[0]


class Context:
    """What an export function may read: the layer's blobs, shapes, the phase, the graph."""

    def __init__(self, graph, net, index, static_batch):
        self.g, self.net, self.index, self.static_batch = graph, net, index, static_batch
        self.bottoms = [b.shape for b in net.bottom_vecs[index]]
        self.tops = [b.shape for b in net.top_vecs[index]]
        self.name = net.net_param.layer[index].name

    def fail(self, why):
        lp = self.net.net_param.layer[self.index]
        raise OnnxError(f"layer {lp.name!r} ({lp.type}): {why}")

    def param(self, j):
        return self.net.layers[self.index].blobs[j].data

    def batch_dims(self, shape):
        """A Reshape target for ``shape`` that copies the batch dimension (0) unless it is static."""
        out = list(shape)
        if out and not self.static_batch:
            out[0] = 0
        return out

    def reshape(self, x, shape, y=None, tag="shape"):
        target = self.g.ints(f"{self.name}/{tag}", shape)
        return self.g.node("Reshape", [x, target], [y] if y else 1, self.name)

    def last(self, op, inputs, y, **attrs):
        """The final node of a layer: writes ``y`` (a reserved name) or a fresh value when y is None."""
        return self.g.node(op, inputs, [y] if y else 1, self.name, **attrs)


def spatial(p, n):
    """(kernel, stride, pad, dilation) of a ConvolutionParameter, n values each (Caffe's _h/_w or repeated form)."""
    def field(name, default):
        if n == 2 and (p.HasField(name + "_h") or p.HasField(name + "_w")):
            return [getattr(p, name + "_h"), getattr(p, name + "_w")]
        vals = list(getattr(p, name + "_size" if name == "kernel" else name))
        return [default] * n if not vals else vals * n if len(vals) == 1 else vals
    dilation = list(p.dilation)
    dilation = [1] * n if not dilation else dilation * n if len(dilation) == 1 else dilation
    return field("kernel", 0), field("stride", 1), field("pad", 0), dilation


# ------------------------------------------------------------------ the net


def _build_net(model, weights, phase):
    from numcaffe.net import Net
    from numcaffe.net.net import as_phase
    if isinstance(model, Net):
        return model
    import logging
    log = logging.getLogger("numcaffe")
    level = log.level
    log.setLevel(max(level, logging.WARNING))        # building the net logs Caffe's lines; not wanted here
    try:
        return Net(model, as_phase(phase), weights=weights)
    finally:
        log.setLevel(level)


def export_model(model, weights=None, phase="TEST", static_batch=False, opset=OPSET, doc=None):
    """The ONNX model of a net (a path, NetParameter or built :class:`Net`) with its weights."""
    import onnx
    from onnx import helper, numpy_helper

    net = _build_net(model, weights, phase)
    if not net.layers:
        from numcaffe.net.proto import caffe_pb2
        raise OnnxError(f"{getattr(net, 'source', '<net>')}: the net has no layers in the "
                        f"{caffe_pb2.Phase.Name(net.phase)} phase; an ONNX model needs at least one output")
    g = Graph(helper, numpy_helper)
    params = net.net_param.layer
    # The last layer that writes a blob names its value after the blob, earlier writers blob/layer;
    # an input keeps its name, so whatever writes it in place gets blob/layer too.
    last_writer, input_names = {}, set()
    for i, lp in enumerate(params):
        for t in lp.top:
            last_writer[t] = i
            if lp.type == "Input":
                input_names.add(t)
    g.used.update(last_writer)
    current = {}                 # Caffe blob name -> the ONNX value holding its current version
    inputs = []
    # The batch: the first input's first dimension, symbolic (N) in every input that starts with it.
    batch = next((net.blobs[t].shape[:1] for lp in params if lp.type == "Input" for t in lp.top), ())
    for i, lp in enumerate(params):
        tops = list(lp.top)
        if lp.type == "Input":
            for t, blob in zip(tops, net.top_vecs[i]):
                dims = list(blob.shape)
                if dims and not static_batch and tuple(dims[:1]) == tuple(batch):
                    dims[0] = "N"
                inputs.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, dims))
                current[t] = t
            continue
        fn = EXPORTERS.get(lp.type)
        if fn is None:
            raise OnnxError(f"layer {lp.name!r} ({lp.type}) has no ONNX counterpart; exportable types: "
                            f"{', '.join(sorted(LAYER_TO_ONNX))}")
        xs = [current[b] for b in lp.bottom]
        ys = [t if last_writer[t] == i and t not in input_names else g.fresh(f"{t}/{lp.name}") for t in tops]
        out = fn(Context(g, net, i, static_batch), lp, xs, ys)
        current.update(out if isinstance(out, dict) else zip(tops, ys))
    outputs = [helper.make_tensor_value_info(current[name], onnx.TensorProto.FLOAT, None) for name in net.outputs]
    graph = helper.make_graph(g.nodes, net.name or "numcaffe", inputs, outputs, g.inits)
    model = helper.make_model(graph, producer_name="numcaffe", opset_imports=[helper.make_opsetid("", opset)],
                              doc_string=doc or f"exported by numcaffe from {getattr(net, 'source', '<net>')}")
    model.ir_version = min(model.ir_version, 10)
    # The outputs' shapes (the batch symbolic) as ONNX's shape inference derives them.
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if out.name in types and types[out.name].tensor_type.HasField("shape"):
            out.type.CopyFrom(types[out.name])
    return model


def save(model, path):
    """Write ``model`` to ``path`` (a temp file then a rename, so an old file is never half overwritten)."""
    from numcaffe.net.io import atomic_write
    try:
        atomic_write(path, model.SerializeToString())
    except OSError as e:
        raise OnnxError(f"{path}: cannot write: {e.strerror or e}") from None
    return os.path.abspath(path)


# The layer functions register themselves in EXPORTERS when their module loads.
from numcaffe.net.onnx import export_layers  # noqa: E402,F401
