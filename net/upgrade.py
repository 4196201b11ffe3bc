"""Upgrading old Caffe definitions on the fly, as Caffe's upgrade_proto does.

Reading a config file (:func:`numcaffe.net.config.read_message`) calls
:func:`upgrade_message`, once per file; it rewrites deprecated forms into the
current ones and prints a notice naming the file.  A message built in memory
and handed to ``Net`` or a solver is taken as it is, as in Caffe; call
:func:`upgrade_message` on it first if it may hold old forms.  The upgraders run
in the order Caffe runs them:

NetParameter
  1. V0 layers (``layers { layer { type: "conv" kernelsize: 5 } }``, with
     separate ``padding`` layers) become V1 layers;
  2. V1 data layers move ``scale`` / ``mean_file`` / ``crop_size`` /
     ``mirror`` from their data parameter into ``transform_param``;
  3. V1 layers (``layers { type: CONVOLUTION blobs_lr: 1 }``) become current
     ``layer`` entries (``type: "Convolution"``, ``param { lr_mult: 1 }``);
  4. net-level ``input`` / ``input_dim`` / ``input_shape`` become an ``Input``
     layer;
  5. BatchNorm layers that declare their three statistics blobs as params get
     ``lr_mult: 0 decay_mult: 0`` on them (they are not learned).

SolverParameter
  1. the deprecated ``solver_type`` enum becomes the ``type`` string;
  2. nets given inline (``net_param``, ``train_net_param``,
     ``test_net_param``) are upgraded as above.

``numcaffe convert OLD.prototxt NEW.prototxt`` writes the upgraded form.
"""
import sys

from numcaffe.net.errors import ConfigError

_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}

#: Upgraders run by :func:`upgrade_message`, keyed by message name: fn(msg, path) -> bool (changed).
#: They run in registration order.
UPGRADERS = {}

#: Set to False to silence the notices (tests, library use).
NOTICES = True


_told = set()


def notice(path, what):
    """Say once per process what was upgraded in a file (a script may read one file several times);
    under MPI, rank 0 says it for every rank."""
    from numcaffe.net.comm import quiet_rank
    if NOTICES and (path, what) not in _told:
        _told.add((path, what))
        if not quiet_rank():
            print(f"numcaffe: {path}: {what}", file=sys.stderr)


def _upgrader(message_name):
    def deco(fn):
        UPGRADERS.setdefault(message_name, []).append(fn)
        return fn
    return deco


def upgrade_message(msg, path="<config>"):
    """Upgrade ``msg`` in place; returns whether anything changed."""
    changed = False
    for fn in UPGRADERS.get(msg.DESCRIPTOR.name, ()):
        changed |= bool(fn(msg, path))
    return changed


# ----------------------------------------------------------------------------- V0 -> V1

#: V0 type strings and the V1 enum names they became (Caffe's UpgradeV0LayerType).
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V0 field -> {V0 type: (V1 param message field, its field, how)}; how is "set" (appended
# when the target is repeated) or "copy" (a sub-message).  "*" applies to every type.
_CONV_IP = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_DATA_LIKE = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
              "window_data": "window_data_param"}
V0_FIELDS = {
    "num_output": {t: (p, "num_output", "set") for t, p in _CONV_IP.items()},
    "biasterm": {t: (p, "bias_term", "set") for t, p in _CONV_IP.items()},
    "weight_filler": {t: (p, "weight_filler", "copy") for t, p in _CONV_IP.items()},
    "bias_filler": {t: (p, "bias_filler", "copy") for t, p in _CONV_IP.items()},
    "pad": {"conv": ("convolution_param", "pad", "set"), "pool": ("pooling_param", "pad", "set")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size", "set"),
                   "pool": ("pooling_param", "kernel_size", "set")},
    "group": {"conv": ("convolution_param", "group", "set")},
    "stride": {"conv": ("convolution_param", "stride", "set"), "pool": ("pooling_param", "stride", "set")},
    "pool": {"pool": ("pooling_param", "pool", "set")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", "set")},
    "local_size": {"lrn": ("lrn_param", "local_size", "set")},
    "alpha": {"lrn": ("lrn_param", "alpha", "set")},
    "beta": {"lrn": ("lrn_param", "beta", "set")},
    "k": {"lrn": ("lrn_param", "k", "set")},
    "source": {**{t: (p, "source", "set") for t, p in _DATA_LIKE.items()},
               "infogain_loss": ("infogain_loss_param", "source", "set")},
    "scale": {"*": ("transform_param", "scale", "set")},
    "meanfile": {"*": ("transform_param", "mean_file", "set")},
    "batchsize": {t: (p, "batch_size", "set") for t, p in _DATA_LIKE.items()},
    "cropsize": {"*": ("transform_param", "crop_size", "set")},
    "mirror": {"*": ("transform_param", "mirror", "set")},
    "rand_skip": {"data": ("data_param", "rand_skip", "set"), "images": ("image_data_param", "rand_skip", "set")},
    "shuffle_images": {"images": ("image_data_param", "shuffle", "set")},
    "new_height": {"images": ("image_data_param", "new_height", "set")},
    "new_width": {"images": ("image_data_param", "new_width", "set")},
    "concat_dim": {"concat": ("concat_param", "concat_dim", "set")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", "set")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", "set")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", "set")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", "set")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", "set")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None, "copy")},
}


def _merge_v0_padding(net, path):
    """Fold V0 ``padding`` layers into the conv/pool layer they feed (Caffe's UpgradeV0PaddingLayers)."""
    last_top = {name: -1 for name in net.input}
    kept = []
    for i, conn in enumerate(net.layers):
        if conn.layer.type != "padding":
            kept.append(_copy(conn))
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise ConfigError(f"{path}: V0 layer {conn.layer.name!r}: unknown bottom blob {blob!r}")
            src = last_top[blob]
            if src == -1 or net.layers[src].layer.type != "padding":
                continue
            pad = net.layers[src]
            if conn.layer.type not in ("conv", "pool") or len(conn.bottom) != 1 \
                    or len(pad.bottom) != 1 or len(pad.top) != 1:
                raise ConfigError(f"{path}: V0 padding layer {pad.layer.name!r} must feed a single-input "
                                  f"conv or pool layer, not {conn.layer.name!r} ({conn.layer.type})")
            kept[-1].layer.pad = pad.layer.pad
            kept[-1].bottom[j] = pad.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    del net.layers[:]
    net.layers.extend(kept)


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _upgrade_v0_layer(conn, problems):
    """A V1LayerParameter from one holding a V0 ``layer``."""
    from numcaffe.net.proto import caffe_pb2

    v0 = conn.layer
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if v0.HasField("name"):
        out.name = v0.name
    t = v0.type
    if v0.HasField("type"):
        if t not in V0_TYPES:
            raise ConfigError(f"unknown V0 layer type {t!r} in layer {v0.name!r} "
                              f"(known: {', '.join(sorted(V0_TYPES))})")
        out.type = caffe_pb2.V1LayerParameter.LayerType.Value(V0_TYPES[t])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, value in v0.ListFields():
        rule = V0_FIELDS.get(field.name)
        if rule is None:
            continue
        target = rule.get(t) or rule.get("*")
        if target is None:
            problems.append(f"layer {v0.name!r}: V0 field {field.name!r} does not apply to type {t!r}; dropped")
            continue
        msg_name, sub_field, how = target
        sub = getattr(out, msg_name)
        if how == "copy":
            (getattr(sub, sub_field) if sub_field else sub).CopyFrom(value)
        elif sub.DESCRIPTOR.fields_by_name[sub_field].is_repeated:
            getattr(sub, sub_field).append(value)
        else:
            setattr(sub, sub_field, value)  # the V0 pool enum has PoolingParameter's numbers
    return out


@_upgrader("NetParameter")
def upgrade_v0_net(net, path):
    """V0 ``layers { layer { ... } }`` -> V1 layers (Caffe's UpgradeV0Net)."""
    if not any(l.HasField("layer") for l in net.layers):
        return False
    _merge_v0_padding(net, path)
    problems = []
    try:
        upgraded = [_upgrade_v0_layer(conn, problems) for conn in net.layers]
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    del net.layers[:]
    net.layers.extend(upgraded)
    notice(path, "upgraded the deprecated V0 layer format" +
           ("; " + "; ".join(problems) if problems else ""))
    return True


# ----------------------------------------------------------------------------- V1 -> layer

#: V1 LayerType enum name -> current type string (Caffe's UpgradeV1LayerType).
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_V1_DATA_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}


@_upgrader("NetParameter")
def upgrade_v1_data_transform(net, path):
    """Move V1 data layers' transformation fields into transform_param (Caffe's UpgradeNetDataTransformation)."""
    from numcaffe.net.proto import caffe_pb2

    changed = False
    for layer in net.layers:
        if not layer.HasField("type"):
            continue
        kind = caffe_pb2.V1LayerParameter.LayerType.Name(layer.type)
        if kind not in _V1_DATA_PARAMS:
            continue
        p = getattr(layer, _V1_DATA_PARAMS[kind])
        for f in _TRANSFORM_FIELDS:
            if p.HasField(f):
                setattr(layer.transform_param, f, getattr(p, f))
                p.ClearField(f)
                changed = True
    if changed:
        notice(path, "moved deprecated data-layer transformation fields into transform_param")
    return changed


def upgrade_v1_layer(v1):
    """A current LayerParameter from a V1LayerParameter (Caffe's UpgradeV1LayerParameter)."""
    from numcaffe.net.proto import caffe_pb2

    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = V1_TYPES[caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)]
    out.blobs.extend(v1.blobs)

    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode   # STRICT / PERMISSIVE have the same numbers in both enums
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    # Every *_param message of V1 has a namesake in LayerParameter.
    for field, value in v1.ListFields():
        if field.name.endswith("_param"):
            getattr(out, field.name).CopyFrom(value)
    return out


@_upgrader("NetParameter")
def upgrade_v1_net(net, path):
    """V1 ``layers { type: CONVOLUTION ... }`` -> ``layer { type: "Convolution" ... }`` (Caffe's UpgradeV1Net)."""
    if not len(net.layers):
        return False
    if len(net.layer):
        raise ConfigError(f"{path}: the net mixes current 'layer' entries with deprecated V1 'layers' "
                          f"entries; use one form (numcaffe convert upgrades a V1 file)")
    if any(l.HasField("layer") for l in net.layers):
        raise ConfigError(f"{path}: V1 layers that still hold a V0 'layer' could not be upgraded")
    upgraded = [upgrade_v1_layer(l) for l in net.layers]
    net.ClearField("layers")
    net.layer.extend(upgraded)
    notice(path, f"upgraded {len(upgraded)} layer(s) from the deprecated V1 'layers' format; "
                 f"`numcaffe convert` writes the upgraded file")
    return True


# ----------------------------------------------------------------------------- inputs, BatchNorm


@_upgrader("NetParameter")
def upgrade_net_input(net, path):
    """Turn net-level inputs into an Input layer (Caffe's UpgradeNetInput)."""
    if not len(net.input):
        if len(net.input_dim) or len(net.input_shape):
            raise ConfigError(f"{path}: input_dim/input_shape given without input names")
        return False
    names = list(net.input)
    shapes = []
    if len(net.input_shape):
        if len(net.input_shape) != len(names):
            raise ConfigError(f"{path}: {len(names)} inputs but {len(net.input_shape)} input_shape entries")
        shapes = [list(s.dim) for s in net.input_shape]
    elif len(net.input_dim):
        if len(net.input_dim) != 4 * len(names):
            raise ConfigError(f"{path}: input_dim must give 4 dimensions per input "
                              f"({len(names)} inputs, {len(net.input_dim)} dims)")
        dims = list(net.input_dim)
        shapes = [dims[4 * i: 4 * i + 4] for i in range(len(names))]
    else:
        raise ConfigError(f"{path}: net-level inputs {names} have no input_shape or input_dim")
    old_layers = [_copy(l) for l in net.layer]
    del net.layer[:]
    layer = net.layer.add()
    layer.name = "input"
    layer.type = "Input"
    for name, dims in zip(names, shapes):
        layer.top.append(name)
        layer.input_param.shape.add().dim.extend(dims)
    net.layer.extend(old_layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")
    notice(path, f"upgraded deprecated net-level inputs {names} to an Input layer")
    return True


@_upgrader("NetParameter")
def upgrade_batch_norm(net, path):
    """BatchNorm's three blobs are statistics, not learned: zero their lr/decay (Caffe's UpgradeNetBatchNorm)."""
    changed = []
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            if any(p.lr_mult != 0 or p.decay_mult != 0 for p in layer.param):
                for p in layer.param:
                    p.lr_mult = 0.0
                    p.decay_mult = 0.0
                changed.append(layer.name)
    if changed:
        notice(path, f"BatchNorm layer(s) {changed}: set lr_mult and decay_mult of their statistics to 0")
    return bool(changed)


# ----------------------------------------------------------------------------- solver


@_upgrader("SolverParameter")
def upgrade_solver_type(solver, path):
    """Map the deprecated ``solver_type`` enum onto the ``type`` string."""
    if not solver.HasField("solver_type"):
        return False
    name = _SOLVER_TYPES.get(solver.solver_type)
    if name is None:
        raise ConfigError(f"{path}: unknown solver_type {solver.solver_type}")
    if solver.HasField("type") and solver.type != name:
        raise ConfigError(f"{path}: both type {solver.type!r} and solver_type {name!r} are set; keep only type")
    solver.type = name
    solver.ClearField("solver_type")
    notice(path, f"upgraded deprecated solver_type to type: {name!r}")
    return True


@_upgrader("SolverParameter")
def upgrade_solver_nets(solver, path):
    """Upgrade nets given inline in the solver."""
    changed = False
    if solver.HasField("net_param"):
        changed |= upgrade_message(solver.net_param, f"{path} (net_param)")
    if solver.HasField("train_net_param"):
        changed |= upgrade_message(solver.train_net_param, f"{path} (train_net_param)")
    for i, net in enumerate(solver.test_net_param):
        changed |= upgrade_message(net, f"{path} (test_net_param {i})")
    return changed


#: Fields that only deprecated Caffe forms set (the upgraders above clear them).
DEPRECATED_FIELDS = {"NetParameter": ("layers", "input", "input_dim", "input_shape"),
                     "SolverParameter": ("solver_type",)}


def check_current(msg, what):
    """A ConfigError if ``msg``, built in memory, still sets deprecated fields (looks, upgrades nothing).

    Net and the solvers take messages as they are (files are upgraded as they are read), so an old
    form would otherwise be silently ignored.
    """
    old = [f.name for f, _ in msg.ListFields() if f.name in DEPRECATED_FIELDS.get(msg.DESCRIPTOR.name, ())]
    if old:
        raise ConfigError(f"{what}: the {msg.DESCRIPTOR.name} sets deprecated Caffe fields ({', '.join(old)}); "
                          f"upgrade it first with numcaffe.net.upgrade.upgrade_message(msg), as reading a "
                          f"file does")


def needs_upgrade(msg):
    """Whether ``msg`` holds deprecated forms (checked on a copy)."""
    global NOTICES
    copy = _copy(msg)
    saved, NOTICES = NOTICES, False
    try:
        return upgrade_message(copy)
    finally:
        NOTICES = saved
