"""numcaffe layers -> ONNX operators: one function per layer type (or family), registered in
:data:`export.EXPORTERS`.

Each function gets the export context ``ctx`` (:class:`export.Context`: the layer's blobs and shapes,
the phase, the graph being written), the layer's parameters ``lp``, the ONNX values of its bottoms ``x``
and the names its tops must take ``ys``; it writes the nodes (the last one named after the layer).  The
rows of :mod:`.table` say what each layer becomes; the comments here say why that is Caffe's math.
"""
import math

import numpy as np

from numcaffe.net.onnx.export import exports, spatial
from numcaffe.net.proto import caffe_pb2

# ------------------------------------------------------------------ layers with no node


@exports("Split")
def _split(ctx, lp, x, ys):
    return {t: x[0] for t in lp.top}      # aliases: the consumers read the bottom


@exports("Silence")
def _silence(ctx, lp, x, ys):
    return {}


# ------------------------------------------------------------------ convolution, pooling


@exports("Convolution", "Deconvolution")
def _conv(ctx, lp, x, ys):
    p = lp.convolution_param
    bottom = ctx.bottoms[0]
    if bottom and p.axis not in (1, 1 - len(bottom)):
        ctx.fail(f"convolution over axis {p.axis}; ONNX convolves from axis 1")
    if len(x) != 1:
        ctx.fail("several bottoms (one convolution each) are not exported; give each its own layer")
    kernel, stride, pad, dilation = spatial(p, len(bottom) - 2)
    g = ctx.g
    inputs = [x[0], g.const(f"{ctx.name}/weight", ctx.param(0))]
    if p.bias_term:
        inputs.append(g.const(f"{ctx.name}/bias", ctx.param(1)))
    op = "Conv" if lp.type == "Convolution" else "ConvTranspose"
    ctx.last(op, inputs, ys[0], kernel_shape=kernel, strides=stride, pads=pad + pad, dilations=dilation,
             group=p.group)


def pool_end_pad(n, k, s, p, out):
    """The end pad that makes ONNX's floor-mode size ``floor((n + p + e - k) / s) + 1`` equal Caffe's ``out``."""
    return max((out - 1) * s + k - n - p, 0)


@exports("Pooling")
def _pooling(ctx, lp, x, ys):
    p = lp.pooling_param
    PP = caffe_pb2.PoolingParameter
    g = ctx.g
    if len(ys) > 1:
        ctx.fail("the second top (MAX's argmax mask) has no ONNX counterpart")
    if p.global_pooling:
        op = {PP.MAX: "GlobalMaxPool", PP.AVE: "GlobalAveragePool"}.get(p.pool)
        if op:
            return ctx.last(op, x, ys[0])
    n, c, H, W = ctx.bottoms[0]
    _, _, Ho, Wo = ctx.tops[0]
    if p.global_pooling:
        kh, kw, ph, pw, sh, sw = H, W, 0, 0, 1, 1
    else:
        kh, kw = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size, p.kernel_size)
        ph, pw = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
        sh, sw = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
    eh, ew = pool_end_pad(H, kh, sh, ph, Ho), pool_end_pad(W, kw, sw, pw, Wo)
    geometry = dict(kernel_shape=[kh, kw], strides=[sh, sw])
    if p.pool == PP.MAX:
        # Padding never wins a max: Caffe clips the window to the image, ONNX pads with -inf.
        return ctx.last("MaxPool", x, ys[0], pads=[ph, pw, eh, ew], **geometry)
    if p.pool == PP.AVE:
        # Caffe divides by the window clipped to the image padded by (ph, pw) on both sides: pad those
        # zeros explicitly, and let AveragePool count only what lies inside the (padded) tensor.
        src = x[0]
        if ph or pw:
            pads = g.ints(f"{ctx.name}/pads", [0, 0, ph, pw, 0, 0, ph, pw])
            src = g.node("Pad", [src, pads], 1, ctx.name, mode="constant")
        end = [max(eh - ph, 0), max(ew - pw, 0)]
        return ctx.last("AveragePool", [src], ys[0], pads=[0, 0] + end, count_include_pad=0, **geometry)
    if p.pool == PP.STOCHASTIC and ctx.net.phase == caffe_pb2.TEST:
        # TEST: the probability-weighted average sum(x^2) / sum(x); the window sizes cancel.
        sq = g.node("Mul", [x[0], x[0]], 1, ctx.name)
        end = dict(pads=[0, 0, eh, ew], count_include_pad=0, **geometry)
        num = g.node("AveragePool", [sq], 1, ctx.name, **end)
        den = g.node("AveragePool", [x[0]], 1, ctx.name, **end)
        return ctx.last("Div", [num, den], ys[0])
    ctx.fail("STOCHASTIC pooling draws random windows in TRAIN; export the TEST phase")


# ------------------------------------------------------------------ dense layers


@exports("InnerProduct")
def _inner_product(ctx, lp, x, ys):
    p = lp.inner_product_param
    g = ctx.g
    shape = ctx.bottoms[0]
    axis = p.axis % len(shape)
    w = ctx.param(0)                       # (N, K), or (K, N) with transpose
    K = int(np.prod(shape[axis:], dtype=np.int64))
    if axis == 1:
        src = x[0] if len(shape) == 2 else g.node("Flatten", x, 1, ctx.name, axis=1)
        inputs = [src, g.const(f"{ctx.name}/weight", w)]
        if p.bias_term:
            inputs.append(g.const(f"{ctx.name}/bias", ctx.param(1)))
        return ctx.last("Gemm", inputs, ys[0], transB=0 if p.transpose else 1)
    src = x[0]
    if len(shape) != axis + 1:
        src = ctx.reshape(src, ctx.batch_dims(list(shape[:axis]) + [K]) if axis else [K])
    wt = w if p.transpose else w.T
    if not p.bias_term:
        return ctx.last("MatMul", [src, g.const(f"{ctx.name}/weight", wt)], ys[0])
    mm = g.node("MatMul", [src, g.const(f"{ctx.name}/weight", wt)], 1, ctx.name)
    return ctx.last("Add", [mm, g.const(f"{ctx.name}/bias", ctx.param(1))], ys[0])


@exports("Embed")
def _embed(ctx, lp, x, ys):
    g = ctx.g
    idx = g.node("Cast", x, 1, ctx.name, to=7)                       # int64
    table = g.const(f"{ctx.name}/weight", ctx.param(0))
    if not lp.embed_param.bias_term:
        return ctx.last("Gather", [table, idx], ys[0], axis=0)
    rows = g.node("Gather", [table, idx], 1, ctx.name, axis=0)
    return ctx.last("Add", [rows, g.const(f"{ctx.name}/bias", ctx.param(1))], ys[0])


# ------------------------------------------------------------------ normalization, scaling


def _broadcast_const(ctx, array, bottom_rank, axis, role):
    """A constant shaped to broadcast against the bottom from ``axis`` on (trailing 1s)."""
    a = np.asarray(array, np.float32)
    trailing = bottom_rank - axis - a.ndim
    return ctx.g.const(f"{ctx.name}/{role}", a.reshape(a.shape + (1,) * trailing))


def _broadcast_value(ctx, value, value_rank, bottom_rank, axis):
    """A computed tensor (Scale/Bias's second bottom) unsqueezed to broadcast from ``axis`` on."""
    trailing = bottom_rank - axis - value_rank
    if trailing <= 0:
        return value
    axes = ctx.g.ints(f"{ctx.name}/axes", list(range(value_rank, value_rank + trailing)))
    return ctx.g.node("Unsqueeze", [value, axes], 1, ctx.name)


@exports("Scale", "Bias")
def _scale_bias(ctx, lp, x, ys):
    is_scale = lp.type == "Scale"
    p = lp.scale_param if is_scale else lp.bias_param
    rank = len(ctx.bottoms[0])
    axis = p.axis % rank if rank else 0
    if len(x) == 2:
        factor = _broadcast_value(ctx, x[1], len(ctx.bottoms[1]), rank, axis)
    else:
        factor = _broadcast_const(ctx, ctx.param(0), rank, axis, "scale" if is_scale else "bias")
    if not is_scale:
        return ctx.last("Add", [x[0], factor], ys[0])
    if not p.bias_term:
        return ctx.last("Mul", [x[0], factor], ys[0])
    prod = ctx.g.node("Mul", [x[0], factor], 1, ctx.name)
    bias = _broadcast_const(ctx, ctx.param(1 if len(x) == 1 else 0), rank, axis, "bias")
    return ctx.last("Add", [prod, bias], ys[0])


@exports("BatchNorm")
def _batch_norm(ctx, lp, x, ys):
    p = lp.batch_norm_param
    g = ctx.g
    rank = len(ctx.bottoms[0])
    global_stats = p.use_global_stats if p.HasField("use_global_stats") else ctx.net.phase == caffe_pb2.TEST
    eps = float(p.eps)
    if global_stats:
        s = float(ctx.param(2).ravel()[0])
        factor = 0.0 if s == 0 else 1.0 / s          # Caffe's stored scale factor
        mean = ctx.param(0).astype(np.float64) * factor
        var = ctx.param(1).astype(np.float64) * factor
        c = mean.size
        return ctx.last("BatchNormalization", [x[0], g.const(f"{ctx.name}/gamma", np.ones(c)),
                                               g.const(f"{ctx.name}/beta", np.zeros(c)),
                                               g.const(f"{ctx.name}/mean", mean), g.const(f"{ctx.name}/var", var)],
                        ys[0], epsilon=eps)
    # Batch statistics: mean and (biased) variance per channel over every other axis.
    axes = g.ints(f"{ctx.name}/axes", [0] + list(range(2, rank)))
    mean = g.node("ReduceMean", [x[0], axes], 1, ctx.name, keepdims=1)
    d = g.node("Sub", [x[0], mean], 1, ctx.name)
    var = g.node("ReduceMean", [g.node("Mul", [d, d], 1, ctx.name), axes], 1, ctx.name, keepdims=1)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(f"{ctx.name}/eps", eps)], 1, ctx.name)], 1, ctx.name)
    return ctx.last("Div", [d, std], ys[0])


@exports("LRN")
def _lrn(ctx, lp, x, ys):
    p = lp.lrn_param
    g = ctx.g
    size, alpha, beta = int(p.local_size), float(p.alpha), float(p.beta)
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        return ctx.last("LRN", x, ys[0], size=size, alpha=alpha, beta=beta, bias=float(p.k))
    # WITHIN_CHANNEL: scale = 1 + alpha * mean of x^2 over a size x size window (zeros padded; Caffe's k unused).
    pad = (size - 1) // 2
    sq = g.node("Mul", [x[0], x[0]], 1, ctx.name)
    avg = g.node("AveragePool", [sq], 1, ctx.name, kernel_shape=[size, size], pads=[pad] * 4, count_include_pad=1)
    scale = g.node("Add", [g.node("Mul", [avg, g.const(f"{ctx.name}/alpha", alpha)], 1, ctx.name),
                           g.const(f"{ctx.name}/one", 1.0)], 1, ctx.name)
    power = g.node("Pow", [scale, g.const(f"{ctx.name}/minus_beta", -beta)], 1, ctx.name)
    return ctx.last("Mul", [x[0], power], ys[0])


# ------------------------------------------------------------------ neurons


@exports("ReLU")
def _relu(ctx, lp, x, ys):
    slope = float(lp.relu_param.negative_slope)
    if slope == 0.0:
        return ctx.last("Relu", x, ys[0])
    return ctx.last("LeakyRelu", x, ys[0], alpha=slope)


@exports("PReLU")
def _prelu(ctx, lp, x, ys):
    slope = ctx.param(0)
    rank = len(ctx.bottoms[0])
    if lp.prelu_param.channel_shared:
        return ctx.last("PRelu", [x[0], ctx.g.const(f"{ctx.name}/slope", slope.reshape(1))], ys[0])
    return ctx.last("PRelu", [x[0], _broadcast_const(ctx, slope, rank, 1, "slope")], ys[0])


_PLAIN = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


@exports(*_PLAIN)
def _plain(ctx, lp, x, ys):
    return ctx.last(_PLAIN[lp.type], x, ys[0])


@exports("ELU")
def _elu(ctx, lp, x, ys):
    return ctx.last("Elu", x, ys[0], alpha=float(lp.elu_param.alpha))


@exports("SELU")
def _selu(ctx, lp, x, ys):
    p = lp.selu_param
    return ctx.last("Selu", x, ys[0], alpha=float(p.alpha), gamma=float(getattr(p, "lambda")))


@exports("Swish")
def _swish(ctx, lp, x, ys):
    beta = float(lp.swish_param.beta)
    g = ctx.g
    arg = x[0] if beta == 1.0 else g.node("Mul", [x[0], g.const(f"{ctx.name}/beta", beta)], 1, ctx.name)
    return ctx.last("Mul", [x[0], g.node("Sigmoid", [arg], 1, ctx.name)], ys[0])


@exports("Clip")
def _clip(ctx, lp, x, ys):
    p = lp.clip_param
    g = ctx.g
    return ctx.last("Clip", [x[0], g.const(f"{ctx.name}/min", p.min), g.const(f"{ctx.name}/max", p.max)], ys[0])


@exports("Threshold")
def _threshold(ctx, lp, x, ys):
    g = ctx.g
    above = g.node("Greater", [x[0], g.const(f"{ctx.name}/threshold", lp.threshold_param.threshold)], 1, ctx.name)
    return ctx.last("Cast", [above], ys[0], to=1)


def _affine(ctx, x, scale, shift, y=None):
    """x * scale + shift, writing only the nodes that are not the identity; the last one writes ``y``."""
    g = ctx.g
    if scale != 1.0:
        last = shift == 0.0 and y is not None
        x = g.node("Mul", [x, g.const(f"{ctx.name}/scale", scale)], [y] if last else 1, ctx.name)
        if last:
            return x
    if shift != 0.0:
        return g.node("Add", [x, g.const(f"{ctx.name}/shift", shift)], [y] if y else 1, ctx.name)
    return ctx.last("Identity", [x], y) if y else x


@exports("Power")
def _power(ctx, lp, x, ys):
    p = lp.power_param
    if p.power == 1.0:
        return _affine(ctx, x[0], float(p.scale), float(p.shift), ys[0])
    v = _affine(ctx, x[0], float(p.scale), float(p.shift))
    return ctx.last("Pow", [v, ctx.g.const(f"{ctx.name}/power", p.power)], ys[0])


def _log_base(base):
    return 1.0 if base == -1.0 else math.log(base)


@exports("Exp")
def _exp(ctx, lp, x, ys):
    """y = base^(shift + scale x) = base^shift * exp(ln(base) * scale * x)."""
    p = lp.exp_param
    ln = _log_base(float(p.base))
    inner = _affine(ctx, x[0], ln * float(p.scale), 0.0)
    outer = math.exp(ln * float(p.shift))
    if outer == 1.0:
        return ctx.last("Exp", [inner], ys[0])
    e = ctx.g.node("Exp", [inner], 1, ctx.name)
    return ctx.last("Mul", [e, ctx.g.const(f"{ctx.name}/outer_scale", outer)], ys[0])


@exports("Log")
def _log(ctx, lp, x, ys):
    """y = log_base(shift + scale x) = ln(shift + scale x) / ln(base)."""
    p = lp.log_param
    inner = _affine(ctx, x[0], float(p.scale), float(p.shift))
    ln = _log_base(float(p.base))
    if ln == 1.0:
        return ctx.last("Log", [inner], ys[0])
    v = ctx.g.node("Log", [inner], 1, ctx.name)
    return ctx.last("Mul", [v, ctx.g.const(f"{ctx.name}/inv_log_base", 1.0 / ln)], ys[0])


@exports("Dropout")
def _dropout(ctx, lp, x, ys):
    if ctx.net.phase != caffe_pb2.TEST:
        ctx.fail("Dropout is random in TRAIN; export the TEST phase (--phase TEST)")
    p = lp.dropout_param
    if p.scale_train:              # ONNX's Dropout outside training is the identity, and keeps the ratio
        return ctx.last("Dropout", [x[0], ctx.g.const(f"{ctx.name}/ratio", p.dropout_ratio)], ys[0])
    return ctx.last("Mul", [x[0], ctx.g.const(f"{ctx.name}/scale", 1.0 - p.dropout_ratio)], ys[0])


# ------------------------------------------------------------------ axes and shapes


def _axis(ctx, axis, rank):
    if not -rank <= axis < rank:
        ctx.fail(f"axis {axis} is out of range for a {rank}-axis bottom")
    return axis % rank


@exports("Softmax")
def _softmax(ctx, lp, x, ys):
    return ctx.last("Softmax", x, ys[0], axis=_axis(ctx, lp.softmax_param.axis, len(ctx.bottoms[0])))


@exports("Concat")
def _concat(ctx, lp, x, ys):
    p = lp.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    return ctx.last("Concat", x, ys[0], axis=_axis(ctx, axis, len(ctx.bottoms[0])))


@exports("Slice")
def _slice(ctx, lp, x, ys):
    p = lp.slice_param
    axis = _axis(ctx, p.slice_dim if p.HasField("slice_dim") else p.axis, len(ctx.bottoms[0]))
    sizes = [t[axis] for t in ctx.tops]
    if len(ys) == 1:
        return ctx.last("Identity", x, ys[0])
    outs = [y or ctx.g.fresh(f"{ctx.name}/Split_{i}") for i, y in enumerate(ys)]
    ctx.g.node("Split", [x[0], ctx.g.ints(f"{ctx.name}/sizes", sizes)], outs, ctx.name, axis=axis)
    return outs


@exports("Flatten")
def _flatten(ctx, lp, x, ys):
    shape, out = ctx.bottoms[0], ctx.tops[0]
    p = lp.flatten_param
    axis = _axis(ctx, p.axis, len(shape))
    end = _axis(ctx, p.end_axis, len(shape))
    if axis == 1 and end == len(shape) - 1:
        return ctx.last("Flatten", x, ys[0], axis=1)
    target = [0] * axis + [-1] + list(out[axis + 1:])
    return ctx.reshape(x[0], target, ys[0])


@exports("Reshape")
def _reshape(ctx, lp, x, ys):
    p = lp.reshape_param
    rank, out = len(ctx.bottoms[0]), ctx.tops[0]
    start = p.axis if p.axis >= 0 else rank + 1 + p.axis
    spec = list(p.shape.dim)
    # Caffe's 0 (copy) and -1 (infer) mean the same in ONNX at the same output positions: the axes
    # before the range are copied (0), the range is Caffe's spec, the axes after it are constants.
    target = list(out) if ctx.static_batch else [0] * start + spec + list(out[start + len(spec):])
    return ctx.reshape(x[0], target, ys[0])


@exports("Crop")
def _crop(ctx, lp, x, ys):
    p = lp.crop_param
    shape, ref = ctx.bottoms
    axis = _axis(ctx, p.axis, len(shape))
    axes = list(range(axis, len(shape)))
    offsets = list(p.offset)
    if len(offsets) <= 1:
        offsets = (offsets or [0]) * len(axes)
    starts = offsets
    ends = [o + ref[a] for o, a in zip(offsets, axes)]
    g = ctx.g
    return ctx.last("Slice", [x[0], g.ints(f"{ctx.name}/starts", starts), g.ints(f"{ctx.name}/ends", ends),
                              g.ints(f"{ctx.name}/axes", axes)], ys[0])


@exports("Tile")
def _tile(ctx, lp, x, ys):
    p = lp.tile_param
    rank = len(ctx.bottoms[0])
    repeats = [1] * rank
    repeats[_axis(ctx, p.axis, rank)] = p.tiles
    return ctx.last("Tile", [x[0], ctx.g.ints(f"{ctx.name}/repeats", repeats)], ys[0])


@exports("Eltwise")
def _eltwise(ctx, lp, x, ys):
    p = lp.eltwise_param
    E = caffe_pb2.EltwiseParameter
    g = ctx.g
    if p.operation == E.PROD:
        v = x[0]
        for k, b in enumerate(x[1:], start=1):
            v = g.node("Mul", [v, b], [ys[0]] if (k == len(x) - 1 and ys[0]) else 1, ctx.name)
        return v
    if p.operation == E.MAX:
        return ctx.last("Max", x, ys[0])
    coeffs = list(p.coeff) or [1.0] * len(x)
    terms = [b if c == 1.0 else g.node("Mul", [b, g.const(f"{ctx.name}/coeff{k}", c)], 1, ctx.name)
             for k, (b, c) in enumerate(zip(x, coeffs))]
    return ctx.last("Sum", terms, ys[0])


@exports("ArgMax")
def _argmax(ctx, lp, x, ys):
    """Caffe breaks ties towards the larger index: ONNX's ArgMax with select_last_index does the same.
    top_k > 1 takes TopK, which ranks equal values by the smaller index first (the one difference)."""
    p = lp.argmax_param
    g = ctx.g
    shape, out = ctx.bottoms[0], ctx.tops[0]
    if p.HasField("axis"):
        axis, src = _axis(ctx, p.axis, len(shape)), x[0]
    else:
        axis, src = 1, ctx.reshape(x[0], [0 if not ctx.static_batch else shape[0], -1], tag="rows")
    if p.top_k == 1:
        axes = g.ints(f"{ctx.name}/axes", [axis])
        values = (lambda: g.node("ReduceMax", [src, axes], 1, ctx.name, keepdims=1))
        idx = (lambda: g.node("Cast", [g.node("ArgMax", [src], 1, ctx.name, axis=axis, keepdims=1,
                                              select_last_index=1)], 1, ctx.name, to=1))
    else:
        k = g.ints(f"{ctx.name}/k", [p.top_k])
        top_values, top_idx = g.node("TopK", [src, k], 2, ctx.name, axis=axis)
        values = (lambda: top_values)
        idx = (lambda: g.node("Cast", [top_idx], 1, ctx.name, to=1))
    if p.HasField("axis"):
        return ctx.last("Identity", [values() if p.out_max_val else idx()], ys[0])
    v = idx()
    if p.out_max_val:
        axes = g.ints(f"{ctx.name}/axes", [1])
        v = g.node("Concat", [g.node("Unsqueeze", [v, axes], 1, ctx.name),
                              g.node("Unsqueeze", [values(), axes], 1, ctx.name)], 1, ctx.name, axis=1)
    return ctx.reshape(v, ctx.batch_dims(out), ys[0])


_REDUCE = {caffe_pb2.ReductionParameter.SUM: "ReduceSum", caffe_pb2.ReductionParameter.ASUM: "ReduceL1",
           caffe_pb2.ReductionParameter.SUMSQ: "ReduceSumSquare", caffe_pb2.ReductionParameter.MEAN: "ReduceMean"}


@exports("Reduction")
def _reduction(ctx, lp, x, ys):
    p = lp.reduction_param
    g = ctx.g
    rank = len(ctx.bottoms[0])
    axis = _axis(ctx, p.axis, rank)
    axes = g.ints(f"{ctx.name}/axes", list(range(axis, rank)))
    if p.coeff == 1.0:
        return ctx.last(_REDUCE[p.operation], [x[0], axes], ys[0], keepdims=0)
    r = g.node(_REDUCE[p.operation], [x[0], axes], 1, ctx.name, keepdims=0)
    return ctx.last("Mul", [r, g.const(f"{ctx.name}/coeff", p.coeff)], ys[0])
