"""``numcaffe convert IN OUT``: prototxt <-> YAML <-> binary, losslessly.

The syntax of each side comes from its extension (``.prototxt``/``.pbtxt``,
``.yaml``/``.yml``, ``.caffemodel``/``.binaryproto``/``.solverstate``/``.pb``),
the message type from ``--type`` or, when not given, from the extension and
the contents (a net, a solver, a solver state or a blob).  Old Caffe
definitions (V0/V1 layers, net-level inputs, ``solver_type``) are upgraded on
the way, with a notice; ``--no-upgrade`` keeps them as they are.

The converted message is read back before the file is written, and must equal
the input: a conversion that would lose anything is refused.

An ``.onnx`` file on either side converts a model to or from ONNX (numcaffe.net.onnx; needs
``pip install 'numcaffe[onnx]'``): a net definition and its ``--weights`` become one ONNX model, and an
ONNX model becomes a net definition (prototxt or YAML) and a ``--weights-out`` .caffemodel.

Examples::

    numcaffe convert lenet_train_test.prototxt lenet_train_test.yaml
    numcaffe convert old_v1_net.prototxt upgraded.prototxt
    numcaffe convert lenet_iter_10000.caffemodel weights.prototxt   # weights as text
    numcaffe convert lenet_deploy.prototxt lenet.onnx --weights lenet_iter_10000.caffemodel
    numcaffe convert model.onnx net.prototxt --weights-out net.caffemodel
"""
import os
import re
import sys

from google.protobuf import unknown_fields

from numcaffe.net import config
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2

COMMAND = "convert"
HELP = ("convert a net, solver or model between prototxt, YAML and binary (upgrading old Caffe forms), "
        "or a model to and from ONNX")

#: --type names and their messages.
TYPES = {
    "net": caffe_pb2.NetParameter,
    "solver": caffe_pb2.SolverParameter,
    "solverstate": caffe_pb2.SolverState,
    "blob": caffe_pb2.BlobProto,
    "blobs": caffe_pb2.BlobProtoVector,
    "datum": caffe_pb2.Datum,
}
_BY_EXT = {".caffemodel": "net", ".solverstate": "solverstate", ".binaryproto": "blob"}
_SOLVER_KEYS = re.compile(r"^\s*(base_lr|lr_policy|max_iter|train_net|test_net|test_iter|solver_mode|"
                          r"snapshot_prefix|net|net_param|solver_type|momentum|test_interval)\s*:", re.M)
_SYNTAXES = ("text", "yaml", "binary")


def add_arguments(p):
    p.add_argument("input", help="the file to convert")
    p.add_argument("output", help="where to write; its extension picks the syntax")
    p.add_argument("--type", choices=sorted(TYPES), default=None,
                   help="message type (default: from the extension and contents)")
    p.add_argument("--to", choices=_SYNTAXES, default=None,
                   help="output syntax when the extension does not say (text, yaml or binary)")
    p.add_argument("--no-upgrade", action="store_true", help="keep deprecated Caffe forms as they are")
    onnx = p.add_argument_group("ONNX (an .onnx input or output)")
    onnx.add_argument("--weights", default=None, help="to ONNX: the .caffemodel (or .h5) whose weights go in")
    onnx.add_argument("--phase", default="TEST", choices=("TRAIN", "TEST"), help="to ONNX: the net's phase")
    onnx.add_argument("--static-batch", action="store_true",
                      help="to ONNX: a fixed batch dimension (default: symbolic, N)")
    onnx.add_argument("--weights-out", default=None, help="from ONNX: where to write the weights (.caffemodel)")
    onnx.add_argument("--batch", type=int, default=1, help="from ONNX: the batch size for a symbolic batch")


def _syntax_of(path, default=None):
    ext = os.path.splitext(path)[1].lower()
    if ext in config.YAML_EXTS:
        return "yaml"
    if ext in config.TEXT_EXTS:
        return "text"
    if ext in config.BINARY_EXTS:
        return "binary"
    return default


def count_unknown_fields(msg):
    """Fields the schema does not know, in ``msg`` and every sub-message."""
    n = len(unknown_fields.UnknownFieldSet(msg))
    for field, value in msg.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for sub in (value if field.is_repeated else [value]):
                n += count_unknown_fields(sub)
    return n


def guess_type(path, raw, syntax):
    """The --type name that fits the file best, by extension and contents."""
    ext = os.path.splitext(path)[1].lower()
    if ext in _BY_EXT:
        return _BY_EXT[ext]
    if syntax == "binary":
        for name in ("net", "solverstate", "blob", "solver"):
            msg = TYPES[name]()
            try:
                msg.ParseFromString(raw)
            except Exception:  # noqa: BLE001 - any decode failure just rules this type out
                continue
            if msg.ListFields() and not count_unknown_fields(msg):
                return name
        return "net"
    text = raw.decode("utf-8", errors="replace")
    if _SOLVER_KEYS.search(text) or "solver" in os.path.basename(path).lower():
        return "solver"
    return "net"


def read_any(path, type_name=None, upgrade=True):
    """(message, type name, syntax) for ``path``."""
    raw = config.read_bytes(path, "input file")
    syntax = config.detect_syntax(path, raw)
    type_name = type_name or guess_type(path, raw, syntax)
    msg = config.read_message(path, TYPES[type_name], syntax=syntax, upgrade=upgrade)
    return msg, type_name, syntax


def serialize(msg, syntax):
    if syntax == "yaml":
        return config.to_yaml(msg).encode("utf-8")
    if syntax == "text":
        return config.to_text(msg).encode("utf-8")
    return msg.SerializeToString()


def parse_back(data, msg_class, syntax):
    out = msg_class()
    if syntax == "binary":
        config.parse_binary(data, out, "<converted>")
    elif syntax == "yaml":
        config.parse_yaml(data.decode("utf-8"), out, "<converted>")
    else:
        config.parse_text(data.decode("utf-8"), out, "<converted>")
    return out


def convert(src, dst, type_name=None, to=None, upgrade=True):
    """Convert ``src`` to ``dst``; returns (type name, input syntax, output syntax, upgraded)."""
    out_syntax = to or _syntax_of(dst)
    if out_syntax is None:
        raise ConfigError(f"{dst}: cannot tell the output syntax from the extension "
                          f"{os.path.splitext(dst)[1] or '(none)'!r}; use .prototxt, .yaml or .caffemodel/.pb, "
                          f"or give --to text|yaml|binary")
    msg, type_name, in_syntax = read_any(src, type_name, upgrade=False)
    upgraded = False
    if upgrade:
        from numcaffe.net.upgrade import upgrade_message
        upgraded = upgrade_message(msg, src)
    if out_syntax != "binary":
        lost = count_unknown_fields(msg)
        if lost:
            raise ConfigError(f"{src}: holds {lost} field(s) that numcaffe's schema does not know; "
                              f"they cannot be written as {out_syntax} (convert to a binary file instead)")
    data = serialize(msg, out_syntax)
    if parse_back(data, type(msg), out_syntax) != msg:
        raise ConfigError(f"{src}: this {msg.DESCRIPTOR.name} cannot be written as {out_syntax} without loss "
                          f"(binary bytes fields, or NaN values); choose another output syntax")
    from numcaffe.net.io import atomic_write
    try:
        atomic_write(dst, data)
    except OSError as e:
        raise ConfigError(f"{dst}: cannot write: {e.strerror or e}") from None
    return type_name, in_syntax, out_syntax, upgraded


def _is_onnx(path):
    return os.path.splitext(path)[1].lower() == ".onnx"


def _quiet_net_log():
    import logging
    log = logging.getLogger("numcaffe.net")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    return lambda: log.setLevel(level)


def to_onnx(src, dst, weights=None, phase="TEST", static_batch=False):
    """``src`` (a net definition) with ``weights`` as an ONNX model at ``dst``; returns the model."""
    from numcaffe.net.onnx import export_model, require_onnx
    from numcaffe.net.onnx.export import save
    onnx = require_onnx()
    restore = _quiet_net_log()
    try:
        model = export_model(src, weights, phase=phase, static_batch=static_batch)
    finally:
        restore()
    onnx.checker.check_model(model, full_check=True)
    save(model, dst)
    return model


def from_onnx(src, dst, weights_out, batch=1):
    """The ONNX model ``src`` as a net definition at ``dst`` and its weights at ``weights_out``; the two are
    built into a net before anything is written.  Returns (net definition, weights)."""
    from numcaffe.net import TEST, Net
    from numcaffe.net.io import atomic_write
    from numcaffe.net.onnx import import_model
    syntax = _syntax_of(dst)
    if syntax not in ("text", "yaml"):
        raise ConfigError(f"{dst}: an imported net is written as prototxt or YAML (.prototxt or .yaml)")
    if not weights_out:
        raise ConfigError(f"{src}: give --weights-out W.caffemodel, where the imported weights go")
    if batch < 1:
        raise ConfigError(f"--batch must be at least 1; got {batch}")
    name = os.path.splitext(os.path.basename(src))[0]
    net_param, weights = import_model(src, batch=batch, name=name)
    restore = _quiet_net_log()
    try:
        net = Net(net_param, TEST)            # the definition and the weights must make a net
        net.copy_from(weights)
    finally:
        restore()
    for path, data in ((dst, serialize(net_param, syntax)), (weights_out, weights.SerializeToString())):
        try:
            atomic_write(path, data)
        except OSError as e:
            raise ConfigError(f"{path}: cannot write: {e.strerror or e}") from None
    return net_param, weights


def run_onnx(args):
    export = _is_onnx(args.output)
    wrong = [flag for flag, given, applies in (
        ("--weights", args.weights, export), ("--phase", args.phase != "TEST", export),
        ("--static-batch", args.static_batch, export), ("--weights-out", args.weights_out, not export),
        ("--batch", args.batch != 1, not export), ("--type", args.type, False), ("--to", args.to, False))
        if given and not applies]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: not for a conversion {'to' if export else 'from'} ONNX")
    if _is_onnx(args.output) and not _is_onnx(args.input):
        model = to_onnx(args.input, args.output, args.weights, args.phase, args.static_batch)
        if args.weights is None:
            print(f"numcaffe: note: no --weights; {args.output} holds the net's initial (filled) weights",
                  file=sys.stderr)
        print(f"wrote {args.output}: ONNX opset {model.opset_import[0].version}, {len(model.graph.node)} nodes, "
              f"inputs {', '.join(i.name for i in model.graph.input)}, "
              f"outputs {', '.join(o.name for o in model.graph.output)}")
    elif _is_onnx(args.input) and not _is_onnx(args.output):
        net_param, weights = from_onnx(args.input, args.output, args.weights_out, args.batch)
        print(f"wrote {args.output}: {len(net_param.layer)} layers; {args.weights_out}: "
              f"{sum(len(l.blobs) for l in weights.layer)} blobs in {len(weights.layer)} layers")
    else:
        raise ConfigError(f"{args.input} -> {args.output}: ONNX to ONNX is not a conversion numcaffe makes")
    return 0


def run(args):
    if _is_onnx(args.input) or _is_onnx(args.output):
        return run_onnx(args)
    if args.weights or args.weights_out or args.static_batch or args.phase != "TEST" or args.batch != 1:
        raise ConfigError("--weights, --phase, --static-batch, --weights-out and --batch apply to conversions "
                          "to or from .onnx")
    type_name, a, b, upgraded = convert(args.input, args.output, args.type, args.to, not args.no_upgrade)
    what = TYPES[type_name].DESCRIPTOR.name
    print(f"wrote {args.output}: {what}, {a} -> {b}" + (" (upgraded from deprecated Caffe forms)" if upgraded else ""))
    return 0
