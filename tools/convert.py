"""``numcaffe convert IN OUT``: prototxt <-> YAML <-> binary, losslessly.

The syntax of each side comes from its extension (``.prototxt``/``.pbtxt``,
``.yaml``/``.yml``, ``.caffemodel``/``.binaryproto``/``.solverstate``/``.pb``),
the message type from ``--type`` or, when not given, from the extension and
the contents (a net, a solver, a solver state or a blob).  Old Caffe
definitions (V0/V1 layers, net-level inputs, ``solver_type``) are upgraded on
the way, with a notice; ``--no-upgrade`` keeps them as they are.

The converted message is read back before the file is written, and must equal
the input: a conversion that would lose anything is refused.

Examples::

    numcaffe convert lenet_train_test.prototxt lenet_train_test.yaml
    numcaffe convert old_v1_net.prototxt upgraded.prototxt
    numcaffe convert lenet_iter_10000.caffemodel weights.prototxt   # weights as text
"""
import os
import re

from google.protobuf import unknown_fields

from numcaffe.net import config
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2

COMMAND = "convert"
HELP = "convert a net, solver or model between prototxt, YAML and binary (upgrading old Caffe forms)"

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


def run(args):
    type_name, a, b, upgraded = convert(args.input, args.output, args.type, args.to, not args.no_upgrade)
    what = TYPES[type_name].DESCRIPTOR.name
    print(f"wrote {args.output}: {what}, {a} -> {b}" + (" (upgraded from deprecated Caffe forms)" if upgraded else ""))
    return 0
