"""ONNX model -> numcaffe net definition and weights.

ONNX's shape inference first gives every value a static shape (a symbolic
batch dimension becomes ``batch``, 1 by default).  Then each node, in the
graph's order, becomes the numcaffe layers of its row in :mod:`.table`,
written by one function of :mod:`.import_layers` or :mod:`.import_shapes`
registered under the operator's name;
constants (initializers, ``Constant`` nodes, ``Shape`` of a value, and any
operator of constants, computed by ONNX's reference implementation) become the
layers' blobs or parameters.  Blobs are named after the ONNX values, layers
after the nodes.

A node whose operator has no numcaffe layer, or whose attributes numcaffe
cannot reproduce exactly (asymmetric pads, broadcasting two computed tensors,
a training-mode BatchNormalization, ...), is collected; the import then fails
with one error listing every such node -- never a net that computes something
else.
"""
import math
import os

import numpy as np

from numcaffe.net.onnx import OnnxError
from numcaffe.net.proto import caffe_pb2

#: ONNX operator -> function(ic, node) adding the layers that compute the node's outputs.
IMPORTERS = {}

PP = caffe_pb2.PoolingParameter


def imports(*ops):
    def deco(fn):
        for op in ops:
            IMPORTERS[op] = fn
        return fn
    return deco


class Unsupported(Exception):
    """One node numcaffe cannot reproduce; the import collects them and reports all at once."""


class ImportContext:
    """The net being written, the constants, the inferred shapes and which node reads which value."""

    def __init__(self, model, shapes, consts, batch):
        from onnx import helper
        self.model, self.helper = model, helper
        self.shapes, self.consts, self.batch = shapes, consts, batch
        self.net = caffe_pb2.NetParameter()
        self.weights = caffe_pb2.NetParameter()
        self.alias = {}                  # ONNX value -> the blob that holds it (Identity, Cast, folded pads)
        self.pads = {}                   # value made by a zero Pad -> (source value, pads), folded by its reader
        self.done = set()                # ids of nodes already imported by another (fusions)
        self.producer, self.consumers = {}, {}
        for node in model.graph.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.layer_names = set()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    # -- reading
    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return self.helper.get_attribute_value(a)
        return default

    def shape(self, value):
        if value not in self.shapes:
            raise Unsupported(f"the shape of {value!r} is unknown (ONNX shape inference could not derive it)")
        return self.shapes[value]

    def const(self, value):
        """The constant array behind ``value``, or None when it is computed."""
        return self.consts.get(value)

    def need_const(self, node, k, what):
        if len(node.input) <= k or not node.input[k]:
            return None
        v = self.const(node.input[k])
        if v is None:
            raise Unsupported(f"{what} (input {k}) must be a constant")
        return v

    def blob(self, value):
        if value in self.pads:
            raise Unsupported(f"{value!r} comes from a Pad, which numcaffe folds only into a Conv or AveragePool")
        if value in self.consts:
            raise Unsupported(f"a constant input ({value!r}) where numcaffe needs a computed blob")
        return self.alias.get(value, value)

    def only_reader(self, value, node):
        return [n is node for n in self.consumers.get(value, [])] == [True]

    # -- writing
    def layer(self, type_, name, bottoms, tops, blobs=()):
        lp = self.net.layer.add()
        base, k = name or tops[0], 1
        lp.name = base
        while lp.name in self.layer_names:
            lp.name, k = f"{base}_{k}", k + 1
        self.layer_names.add(lp.name)
        lp.type = type_
        lp.bottom.extend(bottoms)
        lp.top.extend(tops)
        if blobs:
            w = self.weights.layer.add()
            w.name, w.type = lp.name, type_
            for array in blobs:
                blob_proto(array, w.blobs.add())
        return lp

    def fresh(self, base):
        name, k = base, 1
        taken = set(self.shapes) | set(self.consts) | {t for l in self.net.layer for t in l.top}
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def reshape(self, node, src, out_shape, top, name=None):
        """A Reshape layer to the static ``out_shape`` (the batch copied when it is the input's)."""
        dims = list(out_shape)
        src_shape = self.shapes.get(src, ())
        if dims and src_shape and dims[0] == src_shape[0]:
            dims[0] = 0
        lp = self.layer("Reshape", name or node.name, [self.blob(src)], [top])
        lp.reshape_param.shape.dim.extend(dims)
        return lp


# ------------------------------------------------------------------ helpers


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def blob_proto(array, proto):
    """Fill a BlobProto with ``array`` (0-d stays 0-d: PReLU's shared slope).  The data go in as the packed
    field's bytes (field 5, little-endian float32), 100x faster than a list of floats for a big layer."""
    a = np.array(array, dtype="<f4")
    proto.shape.dim.extend(a.shape)
    raw = a.tobytes()
    proto.MergeFromString(b"\x2a" + _varint(len(raw)) + raw)
    return proto



def spatial_attrs(ic, node, x_shape):
    """(kernel, strides, begin pads, end pads, dilations) of a Conv/Pool node, auto_pad resolved."""
    n = len(x_shape) - 2
    kernel = list(ic.attr(node, "kernel_shape", []))
    if not kernel and node.op_type in ("Conv", "ConvTranspose"):
        kernel = list(ic.const(node.input[1]).shape[2:])
    strides = list(ic.attr(node, "strides", [1] * n))
    dil = list(ic.attr(node, "dilations", [1] * n))
    pads = list(ic.attr(node, "pads", [0] * 2 * n))
    auto = ic.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if node.op_type == "ConvTranspose":
            raise Unsupported("auto_pad SAME with ConvTranspose")
        pads = [0] * 2 * n
        for i in range(n):
            out = -(-x_shape[2 + i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - x_shape[2 + i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[n + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * 2 * n
    return kernel, strides, pads[:n], pads[n:], dil


def caffe_pooled(n, k, s, p, ceil_mode, padded):
    r = (n + 2 * p - k) / s
    out = (math.ceil(r) if ceil_mode else math.floor(r)) + 1
    if padded and (out - 1) * s >= n + p:
        out -= 1
    return out


def round_mode(ic, node, x_shape, out_shape, kernel, strides, begin):
    """The Caffe round mode (CEIL first, Caffe's default) whose output size is ONNX's on both axes."""
    padded = any(begin)
    for mode, ceil in ((PP.CEIL, True), (PP.FLOOR, False)):
        if all(caffe_pooled(x_shape[2 + i], kernel[i], strides[i], begin[i], ceil, padded) == out_shape[2 + i]
               for i in range(2)):
            return mode
    raise Unsupported(f"no Caffe pooling gives output {tuple(out_shape[2:])} from {tuple(x_shape[2:])} with "
                      f"kernel {kernel}, stride {strides}, pad {begin}")


def fold_pad(ic, node, x):
    """(source value, spatial begin pads, spatial end pads) when ``x`` is a zero Pad read only by ``node``."""
    if x not in ic.pads:
        return x, None, None
    src, pads = ic.pads[x]
    if not ic.only_reader(x, node):
        raise Unsupported(f"the Pad making {x!r} feeds several nodes; numcaffe folds a Pad into its one reader")
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin[:2] != [0, 0] or end[:2] != [0, 0]:
        raise Unsupported("a Pad of the batch or channel axis")
    return src, begin[2:], end[2:]


def pool_geometry(lp, kernel, strides, pads):
    """Caffe's fields: kernel_size / stride / pad when both axes agree (left out at their defaults)."""
    p = lp.pooling_param
    if kernel[0] == kernel[1]:
        p.kernel_size = kernel[0]
    else:
        p.kernel_h, p.kernel_w = kernel
    if strides[0] != strides[1]:
        p.stride_h, p.stride_w = strides
    elif strides[0] != 1:
        p.stride = strides[0]
    if pads[0] != pads[1]:
        p.pad_h, p.pad_w = pads
    elif pads[0]:
        p.pad = pads[0]


def broadcast_axis(x_shape, c_shape):
    """(axis, core shape) when a tensor of ``c_shape`` broadcasts against ``x_shape`` as Caffe's Scale/Bias
    does: right-aligned, leading and trailing ones dropped, the rest equal to x's axes there."""
    c = list(c_shape)
    if len(c) > len(x_shape):
        if any(d != 1 for d in c[:len(c) - len(x_shape)]):
            return None
        c = c[len(c) - len(x_shape):]
    offset = len(x_shape) - len(c)
    lead = 0
    while lead < len(c) and c[lead] == 1:
        lead += 1
    trail = len(c)
    while trail > lead and c[trail - 1] == 1:
        trail -= 1
    core = c[lead:trail]
    axis = offset + lead
    if list(x_shape[axis:axis + len(core)]) != core:
        return None
    return axis, core

def graph_outputs(ic):
    return {o.name for o in ic.model.graph.output}


def power_layer(ic, node, src, top, power=1.0, scale=1.0, shift=0.0, name=None):
    lp = ic.layer("Power", name or node.name, [src], [top])
    p = lp.power_param
    p.power, p.scale, p.shift = power, scale, shift
    return lp


# ------------------------------------------------------------------ the model


def _load(model):
    import onnx
    if isinstance(model, onnx.ModelProto):
        return model, "<model>"
    path = os.fspath(model)
    try:
        return onnx.load(path), path
    except FileNotFoundError:
        raise OnnxError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...: all mean "not a model"
        raise OnnxError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def _constants(model):
    from onnx import numpy_helper
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return consts


#: Operators never folded, even with constant inputs: they draw random numbers.
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _foldable(node, constant, shapes):
    """Whether ``node`` computes a constant: Constant, Shape of a value of known shape, or any deterministic
    operator of constants (weights reshaped or transposed by the exporting framework, shape arithmetic)."""
    if node.op_type == "Constant":
        return True
    if node.op_type == "Shape":
        return node.input[0] in shapes
    inputs = [i for i in node.input if i]
    return bool(inputs) and node.op_type not in _RANDOM and all(i in constant for i in inputs)


def _fold(ic, node):
    """Compute a foldable node with ONNX's reference implementation; its outputs become constants."""
    if node.op_type == "Shape":
        shape = ic.shapes[node.input[0]]
        start, end = ic.attr(node, "start", 0), ic.attr(node, "end", None)
        ic.consts[node.output[0]] = np.array(shape[start:end], dtype=np.int64)
    else:
        from onnx.reference import ReferenceEvaluator
        try:
            values = ReferenceEvaluator(node, opsets={"": ic.opset}).run(
                None, {i: ic.consts[i] for i in node.input if i})
        except Exception as e:  # noqa: BLE001 - the reference implementation's own refusal
            raise Unsupported(f"cannot compute this constant ({type(e).__name__}: {e})") from None
        for name, value in zip(node.output, values):
            ic.consts[name] = np.asarray(value)
    for name in node.output:
        if name in ic.consts:
            ic.shapes[name] = ic.consts[name].shape


def _static_inputs(model, batch):
    """A copy of ``model`` whose graph inputs have every symbolic dimension set to ``batch``."""
    import onnx
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = {t.name for t in m.graph.initializer}
    for v in m.graph.input:
        if v.name in init:
            continue
        for d in v.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    return m


def import_model(model, batch=1, name=None):
    """``(net_param, weights)``: the ONNX model as a numcaffe net definition (Input layers first) and a
    NetParameter holding every layer's blobs, as a .caffemodel holds them."""
    import onnx
    from onnx import shape_inference

    model, where = _load(model)
    if not len(model.graph.output) or not len(model.graph.node):
        raise OnnxError(f"{where}: holds no graph (no nodes or no outputs); is it an ONNX model?")
    for o in model.opset_import:
        if o.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{where}: operators of the domain {o.domain!r} have no numcaffe layers")
    fixed = _static_inputs(model, batch)
    try:
        inferred = shape_inference.infer_shapes(fixed, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference errors are the model's
        raise OnnxError(f"{where}: ONNX shape inference failed: {e}") from None
    shapes = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[v.name] = tuple(d.dim_value for d in t.shape.dim)
    consts = _constants(model)
    constant, unknown = set(consts), {}
    for node in model.graph.node:
        if _foldable(node, constant, shapes):
            constant.update(node.output)
        elif node.op_type not in IMPORTERS:
            unknown.setdefault(node.op_type, []).append(node.name or node.output[0])
    if unknown:
        listed = "; ".join(f"{op} ({len(n)}: {', '.join(repr(x) for x in n[:3])}{', ...' if len(n) > 3 else ''})"
                           for op, n in sorted(unknown.items()))
        raise OnnxError(f"{where}: {sum(len(n) for n in unknown.values())} node(s) use operators numcaffe has no "
                        f"layer for: {listed}")
    for value, a in consts.items():
        shapes[value] = a.shape
    ic = ImportContext(fixed, shapes, consts, batch)
    ic.net.name = name or model.graph.name or "imported"
    ints = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    problems = []
    for v in fixed.graph.input:
        if v.name in consts:
            continue
        dtype = v.type.tensor_type.elem_type
        if dtype != onnx.TensorProto.FLOAT and not (dtype in ints and _only_indices(ic, v.name)):
            problems.append(f"input {v.name!r}: {onnx.TensorProto.DataType.Name(dtype)}; numcaffe computes in "
                            f"float32")
            continue
        lp = ic.layer("Input", v.name, [], [v.name])
        lp.input_param.shape.add().dim.extend(shapes[v.name])
    for node in fixed.graph.node:
        if id(node) in ic.done:
            continue
        try:
            if _foldable(node, ic.consts, ic.shapes):
                _fold(ic, node)
                continue
            empty = [v for v in list(node.input) + list(node.output) if 0 in ic.shapes.get(v, (1,))]
            if empty:
                raise Unsupported(f"an empty tensor ({empty[0]!r} has shape {ic.shapes[empty[0]]})")
            IMPORTERS[node.op_type](ic, node)
        except Unsupported as e:
            problems.append(f"{node.op_type} {node.name or node.output[0]!r}: {e}")
    for out in fixed.graph.output:
        if out.name in ic.consts:
            problems.append(f"output {out.name!r} is a constant")
        elif out.name in ic.alias:                     # an Identity's output: a one-top Split gives it its name
            ic.layer("Split", out.name, [ic.alias[out.name]], [out.name])
    if problems:
        raise OnnxError(f"{where}: {len(problems)} node(s) numcaffe cannot reproduce exactly: " + "; ".join(problems))
    return ic.net, ic.weights


def _only_indices(ic, value):
    """Whether an integer input only feeds Gather indices (directly or through a Cast)."""
    for r in ic.consumers.get(value, []):
        if r.op_type == "Gather" and r.input[1] == value:
            continue
        if r.op_type == "Cast" and _only_indices(ic, r.output[0]):
            continue
        return False
    return True


# The operators register themselves in IMPORTERS when their modules load (they import this module's helpers).
from numcaffe.net.onnx import import_layers, import_shapes  # noqa: E402,F401
