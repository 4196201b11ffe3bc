"""``numcaffe gradcheck NET [--weights W] [--layers a,b]``: finite-difference check of a whole net.

The net runs forward once (its Input blobs filled with seeded random values:
Gaussian for data, class indices for the blobs that feed a loss's or
accuracy's label input); then every layer is checked on its actual bottoms,
as the layer tests do (layers/gradcheck.py): the objective is ``sum(w * top)``
with fixed random weights ``w``, the analytic gradient comes from one
``Backward``, the numeric one from central differences, and the relative
error is ``|a - n| / max(|a|, |n|, 1)``.

Real activations sit on kinks (ReLU at 0, ties in max pooling): where the
central difference disagrees, the one-sided differences are compared too, and
if they disagree with each other the function is not smooth there; that point
is counted as skipped, not failed.

The command prints the worst relative error of each layer and of each of its
bottoms and parameters, and exits with status 1 if any exceeds ``--threshold``.

Example::

    numcaffe gradcheck my_net.prototxt --weights my_net.caffemodel --layers conv1,ip1
"""
import difflib

import numpy as np

from numcaffe.layers.gradcheck import check_layer
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, NumcaffeError

COMMAND = "gradcheck"
HELP = "check the gradients of every layer of a net by finite differences"


def add_arguments(p):
    p.add_argument("net", help="the net definition (prototxt or YAML)")
    p.add_argument("--weights", default=None, help="weights to check at (.caffemodel or .h5); default: the fillers")
    p.add_argument("--layers", default=None, help="comma-separated layer names to check (default: all)")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TRAIN", help="net phase (default TRAIN)")
    p.add_argument("--level", type=int, default=0, help="net state level")
    p.add_argument("--stage", default="", help="comma-separated net state stages")
    p.add_argument("--step", type=float, default=1e-2, help="finite-difference step (default 1e-2)")
    p.add_argument("--threshold", type=float, default=1e-2, help="largest relative error allowed (default 1e-2)")
    p.add_argument("--max-checks", type=int, default=100, help="elements checked per blob, picked at random "
                   "(default 100)")
    p.add_argument("--seed", type=int, default=1701, help="seed for inputs, objective weights and picks")
    p.add_argument("--verbose", action="store_true",
                   help="also log building the net (Caffe's lines, as train prints them); default: the report only")


# ----------------------------------------------------------------------------- one layer


class LayerResult:
    def __init__(self, name, type_name):
        self.name, self.type = name, type_name
        self.reports = []
        self.note = None              # why the layer was not checked

    @property
    def worst(self):
        return max((r.worst for r in self.reports), default=0.0)

    @property
    def failed(self):
        return any(r.failures for r in self.reports)

    @property
    def checked(self):
        return sum(r.checked for r in self.reports)


def _copy_blob(blob):
    b = Blob(blob.shape)
    b.data[...] = blob.data
    return b


def check_net_layer(layer, bottoms, check_bottom, check_params, step=1e-2, threshold=1e-2,
                    max_checks=100, seed=1701, bottom_names=None):
    """Check one set-up layer on copies of ``bottoms``; returns its BlobReports.

    The layer's parameters, ``param_propagate_down`` and random state are as
    before afterwards.  Raises NumcaffeError/NotImplementedError from the
    layer's Backward when it has no gradient.
    """
    bottom = [_copy_blob(b) for b in bottoms]
    top = [Blob() for _ in layer.layer_param.top]
    saved_params = [p.data.copy() for p in layer.blobs]
    saved_prop = list(layer.param_propagate_down)
    state = layer.get_state()
    layer.param_propagate_down = [j in check_params for j in range(len(layer.blobs))]
    try:
        reports = check_layer(layer, bottom, top, check_bottom, step, threshold, max_checks=max_checks,
                              seed=seed, setup=False, detect_kinks=True)
    finally:
        layer.param_propagate_down = saved_prop
        for p, d in zip(layer.blobs, saved_params):
            p.data[...] = d
        layer.set_state(state)
    names = bottom_names or [f"bottom[{j}]" for j in range(len(bottom))]
    labels = [f"bottom {names[j]}" for j in check_bottom]
    labels += [f"param {j} {tuple(layer.blobs[j].shape)}" for j in sorted(check_params)]
    for rep, label in zip(reports, labels):     # check_layer reports the bottoms, then the parameters
        rep.label = label
    return reports


# ----------------------------------------------------------------------------- the net


def _fill_inputs(net, rs):
    """Seeded values for the Input blobs: class indices where a blob is a label, else Gaussian."""
    consumers = {}
    bottom_names, top_names = list(net.bottom_names.values()), list(net.top_names.values())
    for i, names in enumerate(bottom_names):
        for j, name in enumerate(names):
            consumers.setdefault(name, []).append((i, j))

    def label_classes(name, depth=0):
        """Class count if ``name`` feeds a label input (through Split layers), else None."""
        for i, j in consumers.get(name, []):
            layer = net.layers[i]
            if layer.layer_param.type == "Split" and depth < 50:
                for top in top_names[i]:
                    found = label_classes(top, depth + 1)
                    if found is not None:
                        return found
            elif not layer.allow_force_backward(j):
                pred = net.bottom_vecs[i][0]
                return pred.shape[1] if j > 0 and len(pred.shape) > 1 else 1
        return None

    for name in net.inputs:
        blob = net.blobs[name]
        classes = label_classes(name)
        if classes is not None:
            blob.data[...] = rs.randint(0, max(classes, 1), blob.shape)
        else:
            blob.data[...] = rs.standard_normal(blob.shape)


def _select(net, names):
    if not names:
        return list(range(len(net.layers)))
    index = {l.layer_param.name: i for i, l in enumerate(net.layers)}
    chosen = []
    for n in names:
        if n not in index:
            near = difflib.get_close_matches(n, list(index), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ConfigError(f"--layers: the net has no layer {n!r} in this phase{hint}")
        chosen.append(index[n])
    return sorted(set(chosen))


def check_net(net, layer_names=None, step=1e-2, threshold=1e-2, max_checks=100, seed=1701, report=print):
    """Check every (or the named) layer of a built Net; returns [LayerResult]."""
    rs = np.random.RandomState(seed)
    _fill_inputs(net, rs)
    chosen = _select(net, layer_names)
    # Run forward layer by layer, keeping each checked layer's inputs as they were when it ran
    # (a later in-place layer overwrites them in the net's blobs).
    inputs = {}
    for i in range(len(net.layers)):
        if i in chosen:
            inputs[i] = [_copy_blob(b) for b in net.bottom_vecs[i]]
        net.ForwardFromTo(i, i)
    results = []
    bottom_names = list(net.bottom_names.values())
    for i in chosen:
        layer = net.layers[i]
        lp = layer.layer_param
        res = LayerResult(lp.name, lp.type)
        check_bottom = [j for j in range(len(net.bottom_vecs[i]))
                        if net.bottom_need_backward[i][j] and layer.allow_force_backward(j)]
        check_params = [j for j in range(len(layer.blobs))
                        if (lp.param[j].lr_mult if j < len(lp.param) else 1.0) != 0]
        if not check_bottom and not check_params:
            res.note = "nothing to check (no bottom or parameter takes a gradient)"
        else:
            try:
                res.reports = check_net_layer(layer, inputs[i], check_bottom, check_params, step,
                                              threshold, max_checks, seed + i, bottom_names[i])
            except (NotImplementedError, NumcaffeError) as e:
                if isinstance(e, NumcaffeError) and "gradient" not in str(e):
                    raise
                res.note = f"no gradient ({e or 'backward not implemented'})"
        results.append(res)
        report(format_result(res, threshold))
    return results


def format_result(res, threshold):
    head = f"layer {res.name!r} ({res.type}): "
    if res.note:
        return head + "skipped, " + res.note
    status = "FAILED" if res.failed else "ok"
    lines = [head + f"worst relative error {res.worst:.3g} [{status}]"]
    for r in res.reports:
        extra = f", {r.skipped} at kinks skipped" if r.skipped else ""
        where = f" at {r.worst_index} (analytic {r.analytic:.6g}, numeric {r.numeric:.6g})" if r.checked else ""
        flag = f"  <-- {len(r.failures)} above {threshold:g}" if r.failures else ""
        lines.append(f"    {r.label}: worst {r.worst:.3g}{where}, {r.checked} checked{extra}{flag}")
    return "\n".join(lines)


def run(args):
    from numcaffe.net import config
    from numcaffe.net.net import Net
    from numcaffe.net.proto import caffe_pb2

    if args.step <= 0 or args.threshold <= 0 or args.max_checks < 1:
        raise ConfigError("--step and --threshold must be positive and --max-checks at least 1")
    param = config.read_message(args.net, caffe_pb2.NetParameter)
    param.force_backward = True       # every bottom that can take a gradient gets one
    import os
    stages = [s for s in args.stage.split(",") if s]
    import logging
    net_log = logging.getLogger("numcaffe.net")
    level = net_log.level
    if not args.verbose:
        net_log.setLevel(max(level, logging.WARNING))   # warnings and errors still show
    try:
        net = Net(param, args.phase, weights=args.weights, stages=stages, level=args.level,
                  base_dir=os.path.dirname(os.path.abspath(args.net)))
    finally:
        net_log.setLevel(level)
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    results = check_net(net, names, args.step, args.threshold, args.max_checks, args.seed)
    failed = [r.name for r in results if r.failed]
    checked = [r for r in results if not r.note]
    print(f"checked {len(checked)} layer(s), {sum(r.checked for r in checked)} elements; "
          f"worst relative error {max((r.worst for r in checked), default=0.0):.3g}")
    if failed:
        raise NumcaffeError(f"gradient check failed (relative error above {args.threshold:g}) in "
                            f"layer(s) {', '.join(failed)}")
    return 0
