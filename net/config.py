"""Reading and writing configs: prototxt, YAML and binary protobuf, one message.

``read_message(path, Message)`` returns the same message whatever the syntax:

* prototxt goes through protobuf's text format;
* YAML is composed with PyYAML's safe loader (no Python objects are ever
  constructed) and mapped field by field onto the message: keys are the
  schema's field names, enums are given by name, and a single scalar or mapping
  stands for a one-element list where the field is repeated;
* binary is the protobuf wire format (.caffemodel, .binaryproto, .solverstate).

The syntax comes from the file extension, or a sniff of the contents.  Every
failure is a :class:`ConfigError` naming the file, the line when the syntax
gives one, and the offending name.
"""
import os
import re

import numpy as np
import yaml
from google.protobuf import message as pb_message
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor as FD

from numcaffe.net.errors import ConfigError, ModelFileError

TEXT_EXTS = {".prototxt", ".pbtxt", ".pt", ".txt", ".solver", ".proto_txt"}
YAML_EXTS = {".yaml", ".yml"}
BINARY_EXTS = {".caffemodel", ".binaryproto", ".solverstate", ".pb", ".bin", ".protobin"}

_INT_TYPES = {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32,
              FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}
_FLOAT_TYPES = {FD.TYPE_FLOAT, FD.TYPE_DOUBLE}
_UNSIGNED = {FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64}
_INT_RANGE = {FD.TYPE_INT32: 31, FD.TYPE_SINT32: 31, FD.TYPE_SFIXED32: 31, FD.TYPE_UINT32: 32,
              FD.TYPE_FIXED32: 32}


def detect_syntax(path, raw):
    """'text', 'yaml' or 'binary' for a file, by extension or by its contents."""
    ext = os.path.splitext(path)[1].lower()
    if ext in TEXT_EXTS:
        return "text"
    if ext in YAML_EXTS:
        return "yaml"
    if ext in BINARY_EXTS:
        return "binary"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    if "\x00" in text:
        return "binary"
    # prototxt: `name {` blocks or `key: "string"`; YAML has neither braces-after-name nor quotes after
    # every key, and typically has `- ` list items or `key:` with nested indentation.
    if re.search(r"^\s*[A-Za-z_]\w*\s*\{", text, re.M) and not re.search(r"^\s*-\s", text, re.M):
        return "text"
    if re.search(r"^\s*[A-Za-z_]\w*\s*:", text, re.M):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            return "text"
        return "yaml" if isinstance(loaded, dict) else "text"
    return "text"


def read_bytes(path, what="file"):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a {what}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror or e}") from None


def read_message(path, message_class, syntax=None, upgrade=True):
    """Read ``path`` into a new ``message_class`` instance, whatever its syntax."""
    raw = read_bytes(path, "config file")
    syntax = syntax or detect_syntax(path, raw)
    msg = message_class()
    if syntax == "binary":
        parse_binary(raw, msg, path)
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not valid UTF-8 text (byte {e.start}); expected a "
                              f"prototxt or YAML {message_class.DESCRIPTOR.name}") from None
        if syntax == "yaml":
            parse_yaml(text, msg, path)
        else:
            parse_text(text, msg, path)
    if upgrade:
        from numcaffe.net import upgrade as _upgrade
        _upgrade.upgrade_message(msg, path)
    return msg


def parse_binary(raw, msg, path="<bytes>"):
    if raw[:8] == b"\x89HDF\r\n\x1a\n":
        raise ModelFileError(f"{path}: is an HDF5 file (as Caffe's snapshot_format: HDF5 writes), not a binary "
                             f"{msg.DESCRIPTOR.name}; numcaffe reads HDF5 weights and solver states from files "
                             f"named *.h5 in --weights, --snapshot and Net.copy_from")
    try:
        msg.ParseFromString(raw)
    except (pb_message.DecodeError, RuntimeError, ValueError, OverflowError) as e:
        raise ModelFileError(f"{path}: not a valid binary {msg.DESCRIPTOR.name} ({e}); "
                             f"the file is corrupt or of another kind") from None
    return msg


def parse_text(text, msg, path="<string>"):
    """Parse prototxt ``text`` into ``msg``; errors name the file and line."""
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        line = f":{e.GetLine()}" if e.GetLine() else ""
        if e.GetLine() and e.GetColumn():
            line += f":{e.GetColumn()}"
        detail = str(e)
        detail = re.sub(r"^\d+:\d+ : ", "", detail)
        raise ConfigError(f"{path}{line}: {detail}{_text_hint(detail, msg)}") from None
    except (RecursionError, ValueError, OverflowError) as e:
        raise ConfigError(f"{path}: cannot parse as {msg.DESCRIPTOR.name}: {e}") from None
    return msg


def _text_hint(detail, msg):
    """'; did you mean ...?' for an unknown field or enum value named in a text-format error."""
    import difflib

    pool = msg.DESCRIPTOR.file.pool
    m = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', detail)
    if m:
        try:
            names = list(pool.FindMessageTypeByName(m.group(1)).fields_by_name)
        except KeyError:
            return ""
    else:
        m = re.search(r'Enum type "([\w.]+)" has no value named (\w+)', detail)
        if not m:
            return ""
        try:
            names = list(pool.FindEnumTypeByName(m.group(1)).values_by_name)
        except KeyError:
            return ""
    near = difflib.get_close_matches(m.group(2), names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""


# ---------------------------------------------------------------- YAML


# libyaml's C parser when PyYAML was built with it (about 10x faster on weight-sized files).
_SafeLoaderBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Loader(_SafeLoaderBase):
    """Safe loader; its constructor turns scalar nodes into Python values."""


def parse_yaml(text, msg, path="<string>"):
    """Map YAML ``text`` onto ``msg``."""
    try:
        loader = _Loader(text)          # the reader rejects control characters right here
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    finally:
        loader.dispose()
    if node is None:
        return msg  # an empty file is an empty message
    ctx = _Ctx(path, loader)
    _check_nodes(node, ctx)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: expected a mapping of "
                          f"{msg.DESCRIPTOR.name} fields at the top level")
    _fill_message(msg, node, ctx)
    return msg


#: How far YAML aliases may multiply a file: the node tree they expand to may hold this many nodes
#: more than the file itself (a net that repeats a few shared blocks stays far below it; a
#: "billion laughs" of nine nested aliases of nine, 350 bytes, expands to 435 million).
ALIAS_EXPANSION_LIMIT = 100_000


def _check_nodes(root, ctx):
    """Visit every node of the composed file once, however often aliases name it.

    No explicit tags (``!!python/...``, ``!local``) anywhere: configs are plain data.  An
    alias that contains itself, or aliases that expand to more than ``ALIAS_EXPANSION_LIMIT``
    nodes beyond those the file holds, are refused here, before anything walks the expanded
    tree (the mapping onto the message does).  The work is bounded by the file's own nodes:
    each list or mapping's expanded size is computed once, from its children's.
    """
    _check_tag(root, ctx)
    if isinstance(root, yaml.ScalarNode):
        return
    size = {}                  # id(list or mapping) -> nodes in its expanded subtree, once known
    open_ = set()              # ids of those whose children are being sized: their ancestors' chain
    held = 1                   # nodes the file holds (an aliased scalar counts once per list or mapping)
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        kids = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
        if children_done:
            size[id(node)] = 1 + sum(size.get(id(k), 1) for k in kids)
            open_.discard(id(node))
            continue
        if id(node) in size:
            continue
        open_.add(id(node))
        stack.append((node, True))
        held += len(kids)
        for kid in kids:
            _check_tag(kid, ctx)
            if isinstance(kid, yaml.ScalarNode) or id(kid) in size:
                continue
            if id(kid) in open_:
                raise ctx.error(kid, "a YAML alias contains itself (a recursive anchor); configs are trees")
            stack.append((kid, False))
    limit = held + ALIAS_EXPANSION_LIMIT
    if size[id(root)] > limit:
        raise ConfigError(f"{ctx.path}: YAML aliases expand to more than {limit} nodes (the file holds "
                          f"{held}); numcaffe refuses alias bombs")


_FORBIDDEN_TAGS = ("tag:yaml.org,2002:python", "!")


def _check_tag(node, ctx):
    if node.tag.startswith(_FORBIDDEN_TAGS):
        raise ctx.error(node, f"YAML tag {node.tag!r} is not allowed in configs (they hold plain data only)")


class _Ctx:
    def __init__(self, path, loader):
        self.path = path
        self.loader = loader

    def error(self, node, text):
        return ConfigError(f"{self.path}:{node.start_mark.line + 1}: {text}")


def _fill_message(msg, node, ctx, depth=0):
    if depth > 64:
        raise ctx.error(node, "config nested too deeply")
    desc = msg.DESCRIPTOR
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ctx.error(key_node, f"expected a field name of {desc.name}")
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise ctx.error(key_node, "YAML merge keys ('<<') are not supported in configs")
        name = key_node.value
        field = desc.fields_by_name.get(name)
        if field is None:
            import difflib
            near = difflib.get_close_matches(name, list(desc.fields_by_name), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            raise ctx.error(key_node, f"{desc.name} has no field {name!r}{hint}")
        if field.is_repeated:
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            container = getattr(msg, name)
            for item in items:
                if field.type == FD.TYPE_MESSAGE:
                    _expect_mapping(item, field, ctx)
                    _fill_message(container.add(), item, ctx, depth + 1)
                else:
                    container.append(_scalar(item, field, ctx))
        elif field.type == FD.TYPE_MESSAGE:
            _expect_mapping(value_node, field, ctx)
            sub = getattr(msg, name)
            sub.SetInParent()
            _fill_message(sub, value_node, ctx, depth + 1)
        else:
            setattr(msg, name, _scalar(value_node, field, ctx))


def _expect_mapping(node, field, ctx):
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, f"field {field.name!r} is a {field.message_type.name} message: "
                              f"expected a mapping of its fields")


def _scalar(node, field, ctx):
    """Convert a YAML scalar node to a value of ``field``'s type."""
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.error(node, f"field {field.name!r} expects a single value, got a "
                              f"{'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    if node.tag.startswith("tag:yaml.org,2002:python") or node.tag.startswith("!"):
        raise ctx.error(node, f"field {field.name!r}: YAML tag {node.tag!r} is not allowed in configs")
    try:
        value = ctx.loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise ctx.error(node, f"field {field.name!r}: {getattr(e, 'problem', e)}") from None
    t = field.type
    raw = node.value
    if t == FD.TYPE_ENUM:
        enum = field.enum_type
        if isinstance(value, str) and value in enum.values_by_name:
            return enum.values_by_name[value].number
        if isinstance(value, int) and not isinstance(value, bool) and value in enum.values_by_number:
            return value
        names = ", ".join(enum.values_by_name)
        raise ctx.error(node, f"field {field.name!r}: unknown {enum.name} value {raw!r} (expected one of {names})")
    if t == FD.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ctx.error(node, f"field {field.name!r} expects true or false, got {raw!r}")
    if t in _INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(node, f"field {field.name!r} expects an integer, got {raw!r}")
        bits = _INT_RANGE.get(t, 63 if t not in _UNSIGNED else 64)
        lo = 0 if t in _UNSIGNED else -(2 ** bits)
        hi = 2 ** bits - 1
        if not lo <= value <= hi:
            raise ctx.error(node, f"field {field.name!r}: {value} is out of range for its type")
        return value
    if t in _FLOAT_TYPES:
        if isinstance(value, bool):
            raise ctx.error(node, f"field {field.name!r} expects a number, got {raw!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:  # PyYAML reads 1e-4 (no dot) as a string; accept it as a number here
                return float(value)
            except ValueError:
                pass
        raise ctx.error(node, f"field {field.name!r} expects a number, got {raw!r}")
    if t == FD.TYPE_STRING:
        if isinstance(value, (dict, list)) or value is None:
            raise ctx.error(node, f"field {field.name!r} expects a string, got {raw!r}")
        if isinstance(value, bool):
            return raw  # `name: yes` means the text 'yes'
        return value if isinstance(value, str) else raw
    if t == FD.TYPE_BYTES:
        return value.encode("utf-8") if isinstance(value, str) else raw.encode("utf-8")
    raise ctx.error(node, f"field {field.name!r} has an unsupported type")


# ---------------------------------------------------------------- writing


def message_to_yaml_data(msg):
    """The plain-data form of ``msg`` whose YAML reads back to the same message."""
    out = {}
    for field, value in msg.ListFields():
        if field.is_repeated:
            items = [_field_value(field, v) for v in value]
            # A one-element list is written as its element (`bottom: data`); it reads back the same.
            out[field.name] = items[0] if len(items) == 1 else items
        else:
            out[field.name] = _field_value(field, value)
    return out


def _field_value(field, value):
    if field.type == FD.TYPE_MESSAGE:
        return message_to_yaml_data(value)
    if field.type == FD.TYPE_ENUM:
        ev = field.enum_type.values_by_number.get(value)
        return ev.name if ev is not None else value
    if field.type == FD.TYPE_BYTES:
        return value.decode("utf-8", errors="replace")
    if field.type == FD.TYPE_FLOAT:
        return float(str(np.float32(value)))  # shortest text that reads back to the same float32
    if field.type == FD.TYPE_DOUBLE:
        return float(value)
    return value


def to_yaml(msg):
    """YAML text for ``msg``: block style at the top level, compact flow style for small leaves."""
    data = message_to_yaml_data(msg)
    return "".join(yaml.dump({k: v}, Dumper=_SafeDumper, sort_keys=False, width=100,
                                  default_flow_style=None if isinstance(v, (dict, list)) else False)
                   for k, v in data.items())


def to_text(msg):
    return text_format.MessageToString(msg)


def write_message(path, msg, syntax=None):
    """Write ``msg`` to ``path`` (syntax from the extension; binary by default), atomically."""
    from numcaffe.net.io import atomic_write

    ext = os.path.splitext(path)[1].lower()
    syntax = syntax or ("yaml" if ext in YAML_EXTS else "text" if ext in TEXT_EXTS else "binary")
    if syntax == "yaml":
        data = to_yaml(msg).encode("utf-8")
    elif syntax == "text":
        data = to_text(msg).encode("utf-8")
    else:
        data = msg.SerializeToString()
    atomic_write(path, data)
