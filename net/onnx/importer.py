"""ONNX model -> numcaffe net definition and weights.

ONNX's shape inference first gives every value a static shape (a symbolic
batch dimension becomes ``batch``, 1 by default).  Then each node, in the
graph's order, becomes the numcaffe layers of its row in :mod:`.table`,
written by one function of this module registered under the operator's name;
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
from numcaffe.net.onnx.table import ONNX_TO_LAYER
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



def _spatial_attrs(ic, node, x_shape):
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


def _round_mode(ic, node, x_shape, out_shape, kernel, strides, begin):
    """The Caffe round mode (CEIL first, Caffe's default) whose output size is ONNX's on both axes."""
    padded = any(begin)
    for mode, ceil in ((PP.CEIL, True), (PP.FLOOR, False)):
        if all(caffe_pooled(x_shape[2 + i], kernel[i], strides[i], begin[i], ceil, padded) == out_shape[2 + i]
               for i in range(2)):
            return mode
    raise Unsupported(f"no Caffe pooling gives output {tuple(out_shape[2:])} from {tuple(x_shape[2:])} with "
                      f"kernel {kernel}, stride {strides}, pad {begin}")


def _fold_pad(ic, node, x):
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


def _pool_geometry(lp, kernel, strides, pads):
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


def _broadcast_axis(x_shape, c_shape):
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


# ------------------------------------------------------------------ convolution, pooling, dense


@imports("Conv", "ConvTranspose")
def _conv(ic, node):
    x = node.input[0]
    src, pad_begin, pad_end = _fold_pad(ic, node, x)
    x_shape = ic.shape(src) if pad_begin is None else ic.shape(x)
    w = ic.need_const(node, 1, "the weight")
    b = ic.need_const(node, 2, "the bias")
    kernel, strides, begin, end, dil = _spatial_attrs(ic, node, x_shape)
    if pad_begin is not None:
        if node.op_type != "Conv":
            raise Unsupported("a Pad before ConvTranspose")
        begin = [a + p for a, p in zip(begin, pad_begin)]
        end = [a + p for a, p in zip(end, pad_end)]
    transpose = node.op_type == "ConvTranspose"
    if begin != end:
        raise Unsupported(f"asymmetric pads {begin} / {end}; Caffe pads both sides alike")
    group = ic.attr(node, "group", 1)
    if transpose:
        if any(ic.attr(node, "output_padding", [])) or ic.attr(node, "output_shape", None):
            raise Unsupported("output_padding / output_shape")
        num_output = w.shape[1] * group
    else:
        num_output = w.shape[0]
    lp = ic.layer("Deconvolution" if transpose else "Convolution", node.name, [ic.blob(src)], [node.output[0]],
                  [w] + ([b] if b is not None else []))
    p = lp.convolution_param
    p.num_output = num_output
    if group != 1:
        p.group = group
    if b is None:
        p.bias_term = False
    # Caffe's repeated fields: one value when every axis has it, none when it is the default.
    for field, values, default in ((p.kernel_size, kernel, None), (p.stride, strides, 1), (p.pad, begin, 0),
                                   (p.dilation, dil, 1)):
        if len(set(values)) > 1:
            field.extend(values)
        elif values[0] != default:
            field.append(values[0])


@imports("MaxPool", "AveragePool")
def _pool(ic, node):
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("MaxPool's Indices output")
    x = node.input[0]
    src, pad_begin, pad_end = _fold_pad(ic, node, x)
    x_shape, out_shape = ic.shape(x), ic.shape(node.output[0])
    if len(x_shape) != 4:
        raise Unsupported(f"{len(x_shape) - 2}-D pooling; numcaffe pools over 2 axes")
    kernel, strides, begin, end, dil = _spatial_attrs(ic, node, x_shape)
    if any(d != 1 for d in dil):
        raise Unsupported("dilated pooling")
    is_max = node.op_type == "MaxPool"
    count_pad = ic.attr(node, "count_include_pad", 0)
    if pad_begin is not None:
        # Pad(p), then AveragePool without counted pads (end pads only): each window divides by its part
        # inside the padded tensor, which is Caffe's AVE with pad p.  Sizes are checked on the unpadded input.
        if is_max or count_pad or any(begin) or pad_begin != pad_end:
            raise Unsupported("a Pad folds into an AveragePool only when symmetric, with count_include_pad 0 "
                              "and no begin pads of its own")
        begin, x_shape = list(pad_begin), ic.shape(src)
    elif not is_max and any(begin):
        if begin != end:
            raise Unsupported(f"AveragePool with asymmetric pads {begin} / {end}")
        if not count_pad:
            raise Unsupported("AveragePool with begin pads and count_include_pad 0 (Caffe counts the pads)")
        # Counting the pads, a ceil-mode window that hangs past the padding divides by its part inside the
        # padded image in ONNX's reference and onnxruntime, as in Caffe (checked by a test against both).
    if not is_max and not any(begin) and count_pad and any(end):
        raise Unsupported("AveragePool counting end pads only")
    mode = _round_mode(ic, node, x_shape, out_shape, kernel, strides, begin)
    lp = ic.layer("Pooling", node.name, [ic.blob(src)], [node.output[0]])
    lp.pooling_param.pool = PP.MAX if is_max else PP.AVE
    if mode != PP.CEIL:
        lp.pooling_param.round_mode = mode
    _pool_geometry(lp, kernel, strides, begin)


@imports("GlobalMaxPool", "GlobalAveragePool")
def _global_pool(ic, node):
    if len(ic.shape(node.input[0])) != 4:
        raise Unsupported("global pooling over other than 2 axes")
    lp = ic.layer("Pooling", node.name, [ic.blob(node.input[0])], [node.output[0]])
    lp.pooling_param.pool = PP.MAX if node.op_type == "GlobalMaxPool" else PP.AVE
    lp.pooling_param.global_pooling = True


@imports("Pad")
def _pad(ic, node):
    mode = ic.attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ic.opset < 11:
        pads, value = list(ic.attr(node, "pads")), ic.attr(node, "value", 0.0)
    else:
        pads = [int(v) for v in ic.need_const(node, 1, "pads")]
        value = ic.need_const(node, 2, "the pad value")
        value = 0.0 if value is None else float(np.ravel(value)[0])
        if len(node.input) > 3 and node.input[3]:
            axes = [int(a) % len(ic.shape(node.input[0])) for a in ic.need_const(node, 3, "axes")]
            full = [0] * 2 * len(ic.shape(node.input[0]))
            r = len(full) // 2
            for k, a in enumerate(axes):
                full[a], full[r + a] = pads[k], pads[len(axes) + k]
            pads = full
    if mode != "constant" or value != 0.0 or any(p < 0 for p in pads):
        raise Unsupported("only zero (constant) padding folds into a numcaffe layer")
    ic.pads[node.output[0]] = (node.input[0], pads)


@imports("Gemm")
def _gemm(ic, node):
    if ic.attr(node, "transA", 0):
        raise Unsupported("transA")
    w = ic.need_const(node, 1, "B")
    c = ic.need_const(node, 2, "C")
    if len(ic.shape(node.input[0])) != 2 or w.ndim != 2:
        raise Unsupported("Gemm of other than 2-D A and B")
    alpha, beta = ic.attr(node, "alpha", 1.0), ic.attr(node, "beta", 1.0)
    trans_b = ic.attr(node, "transB", 0)
    n = w.shape[0] if trans_b else w.shape[1]
    blobs = [w * alpha]
    if c is not None:
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            raise Unsupported(f"a bias C of shape {c.shape} (numcaffe adds one bias per output)")
        blobs.append(np.broadcast_to(c.reshape(-1), (n,)) * beta)
    lp = ic.layer("InnerProduct", node.name, [ic.blob(node.input[0])], [node.output[0]], blobs)
    p = lp.inner_product_param
    p.num_output = n
    if c is None:
        p.bias_term = False
    if not trans_b:
        p.transpose = True


@imports("MatMul")
def _matmul(ic, node):
    w = ic.need_const(node, 1, "B")
    rank = len(ic.shape(node.input[0]))
    if w.ndim != 2 or rank < 2:
        raise Unsupported("MatMul of other than an activation by a constant 2-D matrix")
    top, blobs = node.output[0], [w]
    readers = ic.consumers.get(top, [])
    if len(readers) == 1 and readers[0].op_type == "Add" and top not in _graph_outputs(ic):
        add = readers[0]
        other = add.input[1] if add.input[0] == top else add.input[0]
        bias = ic.const(other)
        if bias is not None and bias.size == w.shape[1] and bias.shape[-1] == w.shape[1]:
            blobs.append(bias.reshape(-1))
            top = add.output[0]
            ic.done.add(id(add))
    lp = ic.layer("InnerProduct", node.name, [ic.blob(node.input[0])], [top], blobs)
    p = lp.inner_product_param
    p.num_output, p.transpose = w.shape[1], True
    if len(blobs) == 1:
        p.bias_term = False
    if rank != 2:
        p.axis = rank - 1


def _graph_outputs(ic):
    return {o.name for o in ic.model.graph.output}


@imports("Gather")
def _gather(ic, node):
    table = ic.need_const(node, 0, "the table (data)")
    if ic.attr(node, "axis", 0) != 0 or table.ndim != 2:
        raise Unsupported("Gather other than rows of a constant 2-D table")
    lp = ic.layer("Embed", node.name, [ic.blob(node.input[1])], [node.output[0]], [table])
    p = lp.embed_param
    p.input_dim, p.num_output, p.bias_term = table.shape[0], table.shape[1], False


# ------------------------------------------------------------------ normalization


@imports("BatchNormalization")
def _batch_norm(ic, node):
    if ic.attr(node, "training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise Unsupported("training mode (batch statistics and running-average outputs)")
    gamma, beta, mean, var = (ic.need_const(node, k, n) for k, n in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    eps = ic.attr(node, "epsilon", 1e-5)
    plain = np.all(gamma == 1) and np.all(beta == 0)
    top = node.output[0]
    bn_top = top if plain else ic.fresh(f"{top}/bn")
    lp = ic.layer("BatchNorm", node.name, [ic.blob(node.input[0])], [bn_top], [mean, var, np.ones(1)])
    lp.batch_norm_param.use_global_stats = True
    lp.batch_norm_param.eps = eps
    if not plain:
        sp = ic.layer("Scale", f"{node.name}/scale", [bn_top], [top], [gamma, beta])
        sp.scale_param.bias_term = True


@imports("LRN")
def _lrn(ic, node):
    size = ic.attr(node, "size")
    if size % 2 == 0:
        raise Unsupported(f"an even size ({size}); Caffe's LRN windows are centred (odd sizes)")
    lp = ic.layer("LRN", node.name, [ic.blob(node.input[0])], [node.output[0]])
    p = lp.lrn_param
    p.local_size, p.alpha, p.beta = size, ic.attr(node, "alpha", 1e-4), ic.attr(node, "beta", 0.75)
    p.k = ic.attr(node, "bias", 1.0)


# ------------------------------------------------------------------ neurons


_NEURON = {"Relu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "TanH", "Abs": "AbsVal", "Softplus": "BNLL",
           "Exp": "Exp", "Log": "Log", "Elu": "ELU", "Selu": "SELU", "LeakyRelu": "ReLU"}


@imports(*_NEURON)
def _neuron(ic, node):
    lp = ic.layer(_NEURON[node.op_type], node.name, [ic.blob(node.input[0])], [node.output[0]])
    if node.op_type == "LeakyRelu":
        lp.relu_param.negative_slope = ic.attr(node, "alpha", 0.01)
    elif node.op_type == "Elu":
        lp.elu_param.alpha = ic.attr(node, "alpha", 1.0)
    elif node.op_type == "Selu":
        lp.selu_param.alpha = ic.attr(node, "alpha", 1.67326319217681884765625)
        setattr(lp.selu_param, "lambda", ic.attr(node, "gamma", 1.05070102214813232421875))


@imports("PRelu")
def _prelu(ic, node):
    slope = ic.need_const(node, 1, "the slope")
    x_shape = ic.shape(node.input[0])
    shared = slope.size == 1
    if not shared:
        fit = _broadcast_axis(x_shape, slope.shape)
        if fit is None or fit[0] != 1 or len(fit[1]) != 1:
            raise Unsupported(f"a slope of shape {slope.shape} for input {x_shape}; numcaffe's PReLU has one "
                              f"slope per channel (axis 1)")
    lp = ic.layer("PReLU", node.name, [ic.blob(node.input[0])], [node.output[0]],
                  [slope.reshape(() if shared else (-1,))])
    lp.prelu_param.channel_shared = shared


@imports("Clip")
def _clip(ic, node):
    if ic.opset < 11:
        lo, hi = ic.attr(node, "min", -3.4028234663852886e38), ic.attr(node, "max", 3.4028234663852886e38)
    else:
        lo = ic.need_const(node, 1, "min")
        hi = ic.need_const(node, 2, "max")
        lo = -3.4028234663852886e38 if lo is None else float(np.ravel(lo)[0])
        hi = 3.4028234663852886e38 if hi is None else float(np.ravel(hi)[0])
    if lo > hi:
        raise Unsupported(f"min {lo:g} above max {hi:g}")
    lp = ic.layer("Clip", node.name, [ic.blob(node.input[0])], [node.output[0]])
    lp.clip_param.min, lp.clip_param.max = lo, hi


def _power_layer(ic, node, src, top, power=1.0, scale=1.0, shift=0.0, name=None):
    lp = ic.layer("Power", name or node.name, [src], [top])
    p = lp.power_param
    p.power, p.scale, p.shift = power, scale, shift
    return lp


@imports("Pow", "Sqrt", "Reciprocal", "Neg")
def _pow(ic, node):
    if node.op_type == "Pow":
        e = ic.need_const(node, 1, "the exponent")
        if e.size != 1:
            raise Unsupported("a Pow exponent that is not one constant")
        args = dict(power=float(e.ravel()[0]))
    else:
        args = {"Sqrt": dict(power=0.5), "Reciprocal": dict(power=-1.0), "Neg": dict(scale=-1.0)}[node.op_type]
    _power_layer(ic, node, ic.blob(node.input[0]), node.output[0], **args)


@imports("Greater")
def _greater(ic, node):
    t = ic.need_const(node, 1, "the bound")
    if t.size != 1:
        raise Unsupported("Greater than other than one constant")
    lp = ic.layer("Threshold", node.name, [ic.blob(node.input[0])], [node.output[0]])
    lp.threshold_param.threshold = float(t.ravel()[0])


# ------------------------------------------------------------------ arithmetic


def _binary_const(ic, node, x, c, op, c_first):
    """x (op) c with a constant c: Power for one value, Scale / Bias for a broadcast blob."""
    x_shape = ic.shape(x)
    if tuple(ic.shape(node.output[0])) != tuple(x_shape):
        raise Unsupported(f"the constant of shape {c.shape} broadcasts the input {x_shape} to a larger shape")
    src, top = ic.blob(x), node.output[0]
    if c.size == 1:
        v = float(c.ravel()[0])
        if op == "Add":
            return _power_layer(ic, node, src, top, shift=v)
        if op == "Mul":
            return _power_layer(ic, node, src, top, scale=v)
        if op == "Sub":
            return _power_layer(ic, node, src, top, scale=-1.0 if c_first else 1.0, shift=v if c_first else -v)
        if not c_first:                                    # Div
            return _power_layer(ic, node, src, top, scale=1.0 / v)
        return _power_layer(ic, node, src, top, power=-1.0, scale=1.0 / v)    # v / x = (x / v)^-1
    fit = _broadcast_axis(x_shape, c.shape)
    if fit is None:
        raise Unsupported(f"a constant of shape {c.shape} that does not broadcast over one run of the input's "
                          f"axes {x_shape}")
    axis, core = fit
    c = c.reshape(core)
    if op in ("Add", "Sub") and not (op == "Sub" and c_first):
        lp = ic.layer("Bias", node.name, [src], [top], [c if op == "Add" else -c])
        lp.bias_param.axis, lp.bias_param.num_axes = axis, len(core)
        return lp
    if op == "Mul" or (op == "Div" and not c_first):
        blobs, name = [c if op == "Mul" else 1.0 / c], node.name
        bias = _following_bias(ic, node, x_shape, axis, core)
        if bias is not None:                 # x * s + b: one Scale with its bias, named as the Add
            add, b = bias
            blobs.append(b)
            top, name = add.output[0], add.name or add.output[0]
        lp = ic.layer("Scale", name, [src], [top], blobs)
        lp.scale_param.axis, lp.scale_param.num_axes = axis, len(core)
        lp.scale_param.bias_term = len(blobs) == 2
        return lp
    raise Unsupported(f"a constant {'minus' if op == 'Sub' else 'divided by'} a tensor")


def _following_bias(ic, node, x_shape, axis, core):
    """(the Add node, its bias) when ``node``'s output feeds only an Add of a constant over the same axes."""
    out = node.output[0]
    readers = ic.consumers.get(out, [])
    if len(readers) != 1 or readers[0].op_type != "Add" or out in _graph_outputs(ic):
        return None
    add = readers[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    b = ic.const(other)
    if b is None or tuple(ic.shapes.get(add.output[0], ())) != tuple(x_shape) or \
            _broadcast_axis(x_shape, b.shape) != (axis, core):
        return None
    ic.done.add(id(add))
    return add, b.reshape(core)


@imports("Add", "Sub", "Mul", "Div")
def _arith(ic, node):
    a, b = node.input[:2]
    ca, cb = ic.const(a), ic.const(b)
    if ca is not None and cb is not None:
        raise Unsupported("both operands constant")
    if cb is not None or ca is not None:
        return _binary_const(ic, node, a if cb is not None else b, cb if cb is not None else ca, node.op_type,
                             c_first=ca is not None)
    sa, sb, out = ic.shape(a), ic.shape(b), ic.shape(node.output[0])
    if tuple(sa) == tuple(sb):
        if node.op_type == "Div":
            raise Unsupported("division of two computed tensors")
        lp = ic.layer("Eltwise", node.name, [ic.blob(a), ic.blob(b)], [node.output[0]])
        p = lp.eltwise_param
        p.operation = caffe_pb2.EltwiseParameter.PROD if node.op_type == "Mul" else caffe_pb2.EltwiseParameter.SUM
        if node.op_type == "Sub":
            p.coeff.extend([1.0, -1.0])
        return lp
    # Broadcast one computed tensor over the other: Scale / Bias with a second bottom.
    big, small = (a, b) if tuple(out) == tuple(sa) else (b, a)
    fit = _broadcast_axis(ic.shape(big), ic.shape(small)) if tuple(out) == tuple(ic.shape(big)) else None
    if fit is None or node.op_type in ("Sub", "Div"):
        raise Unsupported(f"{node.op_type} broadcasting computed tensors of shapes {tuple(sa)} and {tuple(sb)}")
    axis, core = fit
    operand = ic.blob(small)
    if tuple(ic.shape(small)) != tuple(core):
        operand = ic.fresh(f"{small}/reshaped")
        lp = ic.layer("Reshape", f"{node.name}/reshape", [ic.blob(small)], [operand])
        lp.reshape_param.shape.dim.extend(core)
    kind = "Scale" if node.op_type == "Mul" else "Bias"
    lp = ic.layer(kind, node.name, [ic.blob(big), operand], [node.output[0]])
    p = lp.scale_param if kind == "Scale" else lp.bias_param
    p.axis, p.num_axes = axis, len(core)


@imports("Sum", "Max")
def _nary(ic, node):
    shapes = {tuple(ic.shape(i)) for i in node.input}
    if len(shapes) != 1:
        raise Unsupported(f"{node.op_type} of tensors of different shapes {sorted(shapes)}")
    if len(node.input) == 1:
        ic.alias[node.output[0]] = ic.blob(node.input[0])
        return
    lp = ic.layer("Eltwise", node.name, [ic.blob(i) for i in node.input], [node.output[0]])
    lp.eltwise_param.operation = (caffe_pb2.EltwiseParameter.SUM if node.op_type == "Sum"
                                  else caffe_pb2.EltwiseParameter.MAX)


# ------------------------------------------------------------------ axes and shapes


def _axis(ic, node, rank, default=0):
    a = ic.attr(node, "axis", default)
    if not -rank <= a < rank:
        raise Unsupported(f"axis {a} for a {rank}-axis input")
    return a % rank


@imports("Softmax")
def _softmax(ic, node):
    rank = len(ic.shape(node.input[0]))
    axis = _axis(ic, node, rank, -1 if ic.opset >= 13 else 1)
    if ic.opset < 13 and axis != rank - 1:
        raise Unsupported("opset < 13 Softmax over the flattened axes from a middle axis")
    lp = ic.layer("Softmax", node.name, [ic.blob(node.input[0])], [node.output[0]])
    lp.softmax_param.axis = axis


@imports("Concat")
def _concat(ic, node):
    lp = ic.layer("Concat", node.name, [ic.blob(i) for i in node.input], [node.output[0]])
    lp.concat_param.axis = _axis(ic, node, len(ic.shape(node.input[0])))


@imports("Split")
def _split(ic, node):
    shape = ic.shape(node.input[0])
    axis = _axis(ic, node, len(shape))
    sizes = [ic.shape(o)[axis] for o in node.output]
    if len(node.output) == 1:
        ic.alias[node.output[0]] = ic.blob(node.input[0])
        return
    lp = ic.layer("Slice", node.name, [ic.blob(node.input[0])], list(node.output))
    lp.slice_param.axis = axis
    lp.slice_param.slice_point.extend(np.cumsum(sizes)[:-1].tolist())


@imports("Slice")
def _slice(ic, node):
    """One Caffe Slice per sliced axis, keeping the middle piece (the others go to a Silence)."""
    shape = list(ic.shape(node.input[0]))
    if ic.opset < 10:
        starts, ends = ic.attr(node, "starts"), ic.attr(node, "ends")
        axes, steps = ic.attr(node, "axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = ic.need_const(node, 1, "starts"), ic.need_const(node, 2, "ends")
        axes = ic.need_const(node, 3, "axes")
        steps = ic.need_const(node, 4, "steps")
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
    if any(int(s) != 1 for s in steps):
        raise Unsupported("steps other than 1")
    src = ic.blob(node.input[0])
    cuts = []
    for s, e, a in zip(starts, ends, axes):
        a = int(a) % len(shape)
        n = shape[a]
        s, e = int(s), int(e)
        s = min(max(s + n if s < 0 else s, 0), n)
        e = min(max(e + n if e < 0 else e, 0), n)
        if e <= s:
            raise Unsupported("an empty slice")
        if (s, e) != (0, n):
            cuts.append((a, s, e))
    if not cuts:
        ic.alias[node.output[0]] = src
        return
    for k, (a, s, e) in enumerate(cuts):
        last = k == len(cuts) - 1
        keep = node.output[0] if last else ic.fresh(f"{node.output[0]}/axis{a}")
        points = [p for p in (s, e) if 0 < p < shape[a]]
        tops, silenced = [], []
        for piece in range(len(points) + 1):
            if (piece == 1 and s > 0) or (piece == 0 and s == 0):
                tops.append(keep)
            else:
                t = ic.fresh(f"{keep}/cut{piece}")
                tops.append(t)
                silenced.append(t)
        lp = ic.layer("Slice", node.name if last else f"{node.name}/axis{a}", [src], tops)
        lp.slice_param.axis = a
        lp.slice_param.slice_point.extend(points)
        ic.layer("Silence", f"{lp.name}/rest", silenced, [])
        src = keep
        shape[a] = e - s


@imports("Flatten")
def _flatten(ic, node):
    shape = ic.shape(node.input[0])
    axis = ic.attr(node, "axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 1:
        readers = ic.consumers.get(node.output[0], [])
        if readers and all(r.op_type == "Gemm" and r.input[0] == node.output[0] for r in readers):
            ic.alias[node.output[0]] = ic.blob(node.input[0])     # InnerProduct flattens from axis 1 itself
            return
        ic.layer("Flatten", node.name, [ic.blob(node.input[0])], [node.output[0]])
        return
    ic.reshape(node, node.input[0], ic.shape(node.output[0]), node.output[0])


@imports("Reshape")
def _reshape(ic, node):
    target = ic.need_const(node, 1, "the shape") if ic.opset >= 5 else np.array(ic.attr(node, "shape"))
    if ic.attr(node, "allowzero", 0) and 0 in target:
        raise Unsupported("allowzero with a zero dimension")
    target = [int(d) for d in target]
    shape = ic.shape(node.input[0])
    if target and shape and target[0] == shape[0]:
        target[0] = 0           # copy the batch (a target computed from Shape holds the import's batch size)
    lp = ic.layer("Reshape", node.name, [ic.blob(node.input[0])], [node.output[0]])
    lp.reshape_param.shape.dim.extend(target)


@imports("Squeeze", "Unsqueeze")
def _squeeze(ic, node):
    ic.reshape(node, node.input[0], ic.shape(node.output[0]), node.output[0])


@imports("Tile")
def _tile(ic, node):
    repeats = [int(r) for r in ic.need_const(node, 1, "repeats")]
    src = ic.blob(node.input[0])
    axes = [a for a, r in enumerate(repeats) if r != 1]
    if not axes:
        ic.alias[node.output[0]] = src
        return
    for k, a in enumerate(axes):
        top = node.output[0] if k == len(axes) - 1 else ic.fresh(f"{node.output[0]}/axis{a}")
        lp = ic.layer("Tile", node.name if k == len(axes) - 1 else f"{node.name}/axis{a}", [src], [top])
        lp.tile_param.axis, lp.tile_param.tiles = a, repeats[a]
        src = top


@imports("Dropout")
def _dropout(ic, node):
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("Dropout's mask output")
    if ic.opset >= 12:
        ratio = ic.need_const(node, 1, "ratio")
        training = ic.need_const(node, 2, "training_mode")
        if training is not None and bool(np.ravel(training)[0]):
            raise Unsupported("training_mode true")
        ratio = 0.5 if ratio is None else float(np.ravel(ratio)[0])
    else:
        ratio = ic.attr(node, "ratio", 0.5)
    lp = ic.layer("Dropout", node.name, [ic.blob(node.input[0])], [node.output[0]])
    lp.dropout_param.dropout_ratio = ratio


@imports("Identity")
def _identity(ic, node):
    ic.alias[node.output[0]] = ic.blob(node.input[0])


@imports("Cast")
def _cast(ic, node):
    """Integer indices and float values are one thing to numcaffe (float blobs holding whole numbers): a Cast
    of TopK / ArgMax indices, of Greater's booleans, or into Gather's indices changes nothing."""
    src = node.input[0]
    producer = ic.producer.get(src)
    readers = ic.consumers.get(node.output[0], [])
    from_indices = producer is not None and producer.op_type in ("TopK", "ArgMax", "Greater")
    into_gather = readers and all(r.op_type == "Gather" and r.input[1] == node.output[0] for r in readers)
    if not (from_indices or into_gather):
        raise Unsupported("a Cast other than of indices (numcaffe computes in float32)")
    ic.alias[node.output[0]] = ic.blob(src)


@imports("ArgMax")
def _argmax(ic, node):
    if not ic.attr(node, "select_last_index", 0):
        raise Unsupported("select_last_index 0: on ties Caffe's ArgMax takes the last maximum")
    shape = ic.shape(node.input[0])
    axis = _axis(ic, node, len(shape))
    keep = ic.attr(node, "keepdims", 1)
    top = node.output[0] if keep else ic.fresh(f"{node.output[0]}/keepdims")
    lp = ic.layer("ArgMax", node.name, [ic.blob(node.input[0])], [top])
    lp.argmax_param.axis = axis
    if not keep:
        ic.reshape(node, top, ic.shape(node.output[0]), node.output[0], name=f"{node.name}/squeeze")


@imports("ReduceMax")
def _reduce_max(ic, node):
    """The maximum along one axis is Caffe's ArgMax with out_max_val (ties do not matter for values)."""
    shape = ic.shape(node.input[0])
    axes = ic.need_const(node, 1, "axes") if ic.opset >= 18 else ic.attr(node, "axes", None)
    if axes is None or len(axes) != 1:
        raise Unsupported("a maximum over other than one axis")
    keep = ic.attr(node, "keepdims", 1)
    top = node.output[0] if keep else ic.fresh(f"{node.output[0]}/keepdims")
    lp = ic.layer("ArgMax", node.name, [ic.blob(node.input[0])], [top])
    lp.argmax_param.axis = int(axes[0]) % len(shape)
    lp.argmax_param.out_max_val = True
    if not keep:
        ic.reshape(node, top, ic.shape(node.output[0]), node.output[0], name=f"{node.name}/squeeze")


_REDUCE = {"ReduceSum": caffe_pb2.ReductionParameter.SUM, "ReduceMean": caffe_pb2.ReductionParameter.MEAN,
           "ReduceL1": caffe_pb2.ReductionParameter.ASUM, "ReduceSumSquare": caffe_pb2.ReductionParameter.SUMSQ}


@imports(*_REDUCE)
def _reduce(ic, node):
    shape = ic.shape(node.input[0])
    rank = len(shape)
    axes_from_input = (ic.opset >= 13 and node.op_type == "ReduceSum") or ic.opset >= 18
    axes = ic.need_const(node, 1, "axes") if axes_from_input else ic.attr(node, "axes", None)
    if axes is None or len(axes) == 0:
        if ic.attr(node, "noop_with_empty_axes", 0):
            ic.alias[node.output[0]] = ic.blob(node.input[0])
            return
        axes = list(range(rank))
    axes = sorted(int(a) % rank for a in axes)
    if axes != list(range(axes[0], rank)):
        raise Unsupported(f"reducing axes {axes}; Caffe's Reduction reduces every axis from one on")
    keep = ic.attr(node, "keepdims", 1)
    top = ic.fresh(f"{node.output[0]}/reduced") if keep else node.output[0]
    lp = ic.layer("Reduction", node.name, [ic.blob(node.input[0])], [top])
    lp.reduction_param.operation = _REDUCE[node.op_type]
    lp.reduction_param.axis = axes[0]
    if keep:
        out = ic.shape(node.output[0])
        ic.shapes[top] = tuple(shape[:axes[0]])
        ic.reshape(node, top, out, node.output[0], name=f"{node.name}/keepdims")


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


def _check_coverage():
    missing = set(IMPORTERS) ^ (set(ONNX_TO_LAYER) - {"Constant", "Shape"})
    assert not missing, f"import functions and the table disagree on {sorted(missing)}"


_check_coverage()
