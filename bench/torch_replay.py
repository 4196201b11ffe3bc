"""Replay a Caffe NetParameter in PyTorch, layer for layer: the other side of the speed benches.

    from bench.torch_replay import TorchNet
    tnet = TorchNet(net_param, {"data": (8, 3, 224, 224)}, weights)   # weights: {layer name: [arrays]}
    outputs = tnet.forward({"data": x})                                  # {blob name: tensor}

Same blob names, same shapes, same math as Caffe (and numcaffe):

* Convolution: groups, dilation, pad, stride, optional bias;
* Pooling: Caffe's ceil-mode output size (``ceil_mode=True`` is exactly Caffe's rule, the
  last window starting inside the padded image), AVE divides by the window clipped to
  the padded image (``count_include_pad=True``), global pooling;
* LRN across channels (``alpha / size`` as Caffe), BatchNorm with stored statistics
  (Caffe's blobs are sums: mean = blobs[0] / blobs[2]), Scale, Eltwise, Concat, Clip,
  ReLU (leaky), InnerProduct (flattens from ``axis``), Softmax, Dropout (identity at TEST).

In-place layers (top == bottom) rebind the name to a new tensor, so autograd sees plain
functional ops.  ``weights`` are numcaffe's (or Caffe's) parameter blobs as numpy arrays,
copied in, so the outputs can be compared.  torch is a benchmark tool only, never imported
by numcaffe itself.
"""

import torch
import torch.nn.functional as F

from numcaffe.net.proto import caffe_pb2

PP = caffe_pb2.PoolingParameter
EP = caffe_pb2.EltwiseParameter


def _pair(values, single, h, w, default):
    """Caffe's kernel/pad/stride fields: h/w versions win, else the repeated field, else default."""
    if h or w:
        return int(h), int(w)
    values = list(values)
    if not values:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    return int(values[0]), int(values[1])


class Step:
    """One Caffe layer: a function of its bottom tensors returning its top tensors."""

    def __init__(self, name, type, bottoms, tops, fn, params=()):
        self.name, self.type, self.bottoms, self.tops, self.fn, self.params = name, type, bottoms, tops, fn, list(params)

    def __call__(self, blobs):
        out = self.fn(*[blobs[b] for b in self.bottoms])
        if not isinstance(out, (tuple, list)):
            out = (out,)
        for t, v in zip(self.tops, out):
            blobs[t] = v


def _conv(lp, weights):
    cp = lp.convolution_param
    kh, kw = _pair(cp.kernel_size, None, cp.kernel_h, cp.kernel_w, 1)
    ph, pw = _pair(cp.pad, None, cp.pad_h, cp.pad_w, 0)
    sh, sw = _pair(cp.stride, None, cp.stride_h, cp.stride_w, 1)
    dil = list(cp.dilation) or [1]
    dh, dw = (dil[0], dil[-1])
    w = torch.nn.Parameter(torch.from_numpy(weights[0].copy()))
    b = torch.nn.Parameter(torch.from_numpy(weights[1].copy())) if cp.bias_term and len(weights) > 1 else None
    group = cp.group

    def fn(x):
        return F.conv2d(x, w, b, (sh, sw), (ph, pw), (dh, dw), group)
    return fn, [p for p in (w, b) if p is not None]


def _pool(lp, shapes):
    pp = lp.pooling_param
    if pp.global_pooling:
        ph = pw = 0
        sh = sw = 1
    else:
        kh, kw = _pair([pp.kernel_size] if pp.HasField("kernel_size") else [], None, pp.kernel_h, pp.kernel_w, 1)
        ph, pw = (pp.pad_h, pp.pad_w) if (pp.pad_h or pp.pad_w) else (pp.pad, pp.pad)
        sh, sw = (pp.stride_h, pp.stride_w) if (pp.stride_h or pp.stride_w) else (pp.stride, pp.stride)
    ceil = pp.round_mode == PP.CEIL
    if pp.pool not in (PP.MAX, PP.AVE):
        raise ValueError(f"layer {lp.name!r}: torch replay has no {PP.PoolMethod.Name(pp.pool)} pooling")

    def fn(x):
        k = (x.shape[2], x.shape[3]) if pp.global_pooling else (kh, kw)
        if pp.pool == PP.MAX:
            return F.max_pool2d(x, k, (sh, sw), (ph, pw), ceil_mode=ceil)
        return F.avg_pool2d(x, k, (sh, sw), (ph, pw), ceil_mode=ceil, count_include_pad=True)
    return fn


def _inner_product(lp, weights):
    ip = lp.inner_product_param
    w = torch.nn.Parameter(torch.from_numpy(weights[0].copy()))
    b = torch.nn.Parameter(torch.from_numpy(weights[1].copy())) if ip.bias_term and len(weights) > 1 else None
    axis = ip.axis

    def fn(x):
        x = x.flatten(axis)
        return F.linear(x, w.t() if ip.transpose else w, b)
    return fn, [p for p in (w, b) if p is not None]


def _batch_norm(lp, weights):
    bn = lp.batch_norm_param
    scale = float(weights[2][0])
    factor = 0.0 if scale == 0 else 1.0 / scale
    mean = torch.from_numpy(weights[0] * factor)
    var = torch.from_numpy(weights[1] * factor)
    eps = bn.eps

    def fn(x):
        return F.batch_norm(x, mean, var, None, None, False, 0.0, eps)
    return fn


def _scale(lp, weights):
    sp = lp.scale_param
    a = torch.nn.Parameter(torch.from_numpy(weights[0].copy()))
    b = torch.nn.Parameter(torch.from_numpy(weights[1].copy())) if sp.bias_term and len(weights) > 1 else None

    def fn(x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x * a.view(shape)
        return y + b.view(shape) if b is not None else y
    return fn, [p for p in (a, b) if p is not None]


def _eltwise(lp):
    ep = lp.eltwise_param
    coeff = list(ep.coeff)

    def fn(*xs):
        if ep.operation == EP.PROD:
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        if ep.operation == EP.MAX:
            y = xs[0]
            for x in xs[1:]:
                y = torch.maximum(y, x)
            return y
        if coeff:
            y = xs[0] * coeff[0]
            for c, x in zip(coeff[1:], xs[1:]):
                y = y + c * x
            return y
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y
    return fn


def _lrn(lp):
    p = lp.lrn_param
    if p.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        raise ValueError(f"layer {lp.name!r}: torch replay has LRN across channels only")
    return lambda x: F.local_response_norm(x, p.local_size, p.alpha, p.beta, p.k)


def build_step(lp, weights):
    """The Step for one LayerParameter (``weights``: its parameter blobs as numpy arrays)."""
    t = lp.type
    params = []
    if t == "Convolution":
        fn, params = _conv(lp, weights)
    elif t == "Pooling":
        fn = _pool(lp, None)
    elif t == "InnerProduct":
        fn, params = _inner_product(lp, weights)
    elif t == "ReLU":
        slope = lp.relu_param.negative_slope
        fn = (lambda x: F.leaky_relu(x, slope)) if slope else F.relu
    elif t == "Clip":
        lo, hi = lp.clip_param.min, lp.clip_param.max
        fn = (lambda x: F.relu6(x)) if (lo, hi) == (0, 6) else (lambda x: torch.clamp(x, lo, hi))
    elif t == "LRN":
        fn = _lrn(lp)
    elif t == "BatchNorm":
        fn = _batch_norm(lp, weights)
    elif t == "Scale":
        fn, params = _scale(lp, weights)
    elif t == "Eltwise":
        fn = _eltwise(lp)
    elif t == "Concat":
        axis = lp.concat_param.axis
        fn = lambda *xs: torch.cat(xs, axis)  # noqa: E731
    elif t == "Softmax":
        axis = lp.softmax_param.axis
        fn = lambda x: F.softmax(x, axis)  # noqa: E731
    elif t in ("Dropout", "Split"):
        fn = lambda *xs: xs[0] if len(lp.top) == 1 else tuple(xs[0] for _ in lp.top)  # noqa: E731
    else:
        raise ValueError(f"layer {lp.name!r}: torch replay has no {t!r} layer")
    return Step(lp.name, t, list(lp.bottom), list(lp.top), fn, params)


class TorchNet:
    """A Caffe net (already filtered to its phase) as a list of torch Steps.

    ``weights``: {layer name: [numpy arrays]} for every layer with parameters.
    Input layers and the net-level inputs are the names fed to :meth:`forward`.
    """

    def __init__(self, net_param, weights):
        self.steps = []
        self.inputs = list(net_param.input)
        for lp in net_param.layer:
            if lp.type == "Input":
                self.inputs.extend(lp.top)
                continue
            self.steps.append(build_step(lp, weights.get(lp.name, [])))
        self.params = [p for s in self.steps for p in s.params]

    def forward(self, inputs, timer=None):
        """{input name: tensor} → {blob name: tensor}; ``timer(step, seconds)`` per layer if given."""
        blobs = dict(inputs)
        for s in self.steps:
            if timer is None:
                s(blobs)
            else:
                t0 = timer.clock()
                s(blobs)
                timer(s, timer.clock() - t0)
        return blobs

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def max_relative_difference(ours, theirs):
    """max |a - b| / max |b| over one array pair (0 for two zero arrays)."""
    scale = float(abs(theirs).max())
    return float(abs(ours - theirs).max()) / scale if scale else float(abs(ours - theirs).max())


__all__ = ["TorchNet", "build_step", "max_relative_difference"]
