"""ONNX operators -> numcaffe layers: convolution, pooling, dense, normalization and neuron operators.

One function per operator (or family), registered in :data:`importer.IMPORTERS`; the rows of
:mod:`.table` say what each becomes.  The context ``ic`` (:class:`importer.ImportContext`) gives the
shapes, constants and attributes, and writes the layers.
"""
import numpy as np

from numcaffe.net.onnx.importer import (PP, Unsupported, broadcast_axis, fold_pad, graph_outputs, imports,
                                        pool_geometry, power_layer, round_mode, spatial_attrs)

# ------------------------------------------------------------------ convolution, pooling, dense


@imports("Conv", "ConvTranspose")
def _conv(ic, node):
    x = node.input[0]
    src, pad_begin, pad_end = fold_pad(ic, node, x)
    x_shape = ic.shape(src) if pad_begin is None else ic.shape(x)
    w = ic.need_const(node, 1, "the weight")
    b = ic.need_const(node, 2, "the bias")
    kernel, strides, begin, end, dil = spatial_attrs(ic, node, x_shape)
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
    src, pad_begin, pad_end = fold_pad(ic, node, x)
    x_shape, out_shape = ic.shape(x), ic.shape(node.output[0])
    if len(x_shape) != 4:
        raise Unsupported(f"{len(x_shape) - 2}-D pooling; numcaffe pools over 2 axes")
    kernel, strides, begin, end, dil = spatial_attrs(ic, node, x_shape)
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
    mode = round_mode(ic, node, x_shape, out_shape, kernel, strides, begin)
    lp = ic.layer("Pooling", node.name, [ic.blob(src)], [node.output[0]])
    lp.pooling_param.pool = PP.MAX if is_max else PP.AVE
    if mode != PP.CEIL:
        lp.pooling_param.round_mode = mode
    pool_geometry(lp, kernel, strides, begin)


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
    if len(readers) == 1 and readers[0].op_type == "Add" and top not in graph_outputs(ic):
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
        fit = broadcast_axis(x_shape, slope.shape)
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



@imports("Pow", "Sqrt", "Reciprocal", "Neg")
def _pow(ic, node):
    if node.op_type == "Pow":
        e = ic.need_const(node, 1, "the exponent")
        if e.size != 1:
            raise Unsupported("a Pow exponent that is not one constant")
        args = dict(power=float(e.ravel()[0]))
    else:
        args = {"Sqrt": dict(power=0.5), "Reciprocal": dict(power=-1.0), "Neg": dict(scale=-1.0)}[node.op_type]
    power_layer(ic, node, ic.blob(node.input[0]), node.output[0], **args)


@imports("Greater")
def _greater(ic, node):
    t = ic.need_const(node, 1, "the bound")
    if t.size != 1:
        raise Unsupported("Greater than other than one constant")
    lp = ic.layer("Threshold", node.name, [ic.blob(node.input[0])], [node.output[0]])
    lp.threshold_param.threshold = float(t.ravel()[0])
