"""ONNX operators -> numcaffe layers: arithmetic, axes and shapes.

Elementwise arithmetic becomes Eltwise (same shapes), Scale / Bias (a broadcast constant or second blob)
or Power (one constant); Softmax, Concat, Split, Slice, Flatten, Reshape, Tile, the reductions and ArgMax
keep Caffe's axis conventions.  One function per operator, registered in :data:`importer.IMPORTERS`.
"""
import numpy as np

from numcaffe.net.onnx.importer import Unsupported, broadcast_axis, graph_outputs, imports, power_layer
from numcaffe.net.proto import caffe_pb2

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
            return power_layer(ic, node, src, top, shift=v)
        if op == "Mul":
            return power_layer(ic, node, src, top, scale=v)
        if op == "Sub":
            return power_layer(ic, node, src, top, scale=-1.0 if c_first else 1.0, shift=v if c_first else -v)
        if not c_first:                                    # Div
            return power_layer(ic, node, src, top, scale=1.0 / v)
        return power_layer(ic, node, src, top, power=-1.0, scale=1.0 / v)    # v / x = (x / v)^-1
    fit = broadcast_axis(x_shape, c.shape)
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
    if len(readers) != 1 or readers[0].op_type != "Add" or out in graph_outputs(ic):
        return None
    add = readers[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    b = ic.const(other)
    if b is None or tuple(ic.shapes.get(add.output[0], ())) != tuple(x_shape) or \
            broadcast_axis(x_shape, b.shape) != (axis, core):
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
    fit = broadcast_axis(ic.shape(big), ic.shape(small)) if tuple(out) == tuple(ic.shape(big)) else None
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
