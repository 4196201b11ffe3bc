"""``numcaffe layers [TYPE...] [--markdown]``: the registered layer types and their parameters.

Everything is read from the layer registry and the schema, so the list cannot
drift from the code:

* the types are the keys of ``LAYER_REGISTRY`` (built-in and plugin layers);
* blob counts come from the class attributes (``exact_num_bottom``, ...);
* the parameter messages a type reads are derived: its name in snake case plus
  ``_param`` (``InnerProduct`` -> ``inner_product_param``), or lower-cased
  (``ReLU`` -> ``relu_param``), plus every ``layer_param.<x>_param`` its class
  reads (``SoftmaxWithLoss`` -> ``softmax_param``, ``loss_param``; data layers
  -> ``transform_param``); a class may also list them in ``param_fields``;
* field types and defaults come from the message descriptors, the one-line
  descriptions from the comments in caffe.proto.

``numcaffe layers --markdown > docs/layers.md`` regenerates the reference page.
"""
import inspect
import os
import re

from numcaffe.net.errors import ConfigError
from numcaffe.layers.fields import param_fields, snake_case  # noqa: F401  (the derivation lives there)

COMMAND = "layers"
HELP = "list the registered layer types with their parameters (--markdown for the docs)"

def _layer_fields():
    from numcaffe.net.proto import caffe_pb2
    return caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name


def _count(cls, kind):
    exact = getattr(cls, f"exact_num_{kind}")
    lo = getattr(cls, f"min_num_{kind}")
    hi = getattr(cls, f"max_num_{kind}")
    if kind == "top" and getattr(cls, "equal_num_bottom_top", False):
        return "as many as bottoms"
    if exact is not None:
        return str(exact)
    if lo is not None and hi is not None:
        return f"{lo}-{hi}" if lo != hi else str(lo)
    if lo is not None:
        return f"{lo} or more"
    if hi is not None:
        return f"up to {hi}"
    return "any"


# ----------------------------------------------------------------------------- the schema's comments


def _proto_comments():
    """{(message name, field name): comment} from caffe.proto's ``//`` lines above each field."""
    from numcaffe.net import proto as proto_pkg
    path = os.path.join(os.path.dirname(proto_pkg.__file__), "caffe.proto")
    out = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    stack, pending = [], []
    for line in lines:
        s = line.strip()
        if s.startswith("//"):
            pending.append(s[2:].strip())
            continue
        m = re.match(r"(message|enum)\s+(\w+)\s*\{", s)
        if m:
            stack.append((m.group(1), m.group(2)))
            pending = []
            continue
        if s.startswith("}"):
            if stack:
                stack.pop()
            pending = []
            continue
        m = re.match(r"(?:optional|repeated|required)\s+[\w.]+\s+(\w+)\s*=", s)
        if m and stack and stack[-1][0] == "message":
            trailing = s.split("//", 1)[1].strip() if "//" in s else ""
            text = " ".join(pending + ([trailing] if trailing else []))
            if text:
                out[(stack[-1][1], m.group(1))] = text
        pending = []
    return out


_TYPE_NAMES = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string",
               12: "bytes", 13: "uint32", 17: "sint32", 18: "sint64"}


def field_rows(message_desc, comments):
    """(name, type, default, description) for each field of a message."""
    rows = []
    for f in message_desc.fields:
        if f.message_type is not None:
            typ = f.message_type.name
        elif f.enum_type is not None:
            typ = f"{f.enum_type.name} ({' | '.join(f.enum_type.values_by_name)})"
        else:
            typ = _TYPE_NAMES.get(f.type, str(f.type))
        if f.is_repeated:
            typ = f"repeated {typ}"
        default = ""
        if not f.is_repeated and f.message_type is None and f.has_default_value:
            d = f.default_value
            if f.enum_type is not None:
                d = f.enum_type.values_by_number[d].name
            elif isinstance(d, bool):
                d = "true" if d else "false"
            elif isinstance(d, float):
                d = f"{d:.7g}"
            elif isinstance(d, str):
                d = repr(d)
            default = str(d)
        rows.append((f.name, typ, default, comments.get((message_desc.name, f.name), "")))
    return rows


def describe_types(names=None):
    """[{type, class, module, doc, bottoms, tops, params: [(field, message desc)]}] for the registry."""
    import numcaffe.layers  # noqa: F401  (registers every layer type, plugins included)
    from numcaffe.layers.base import LAYER_REGISTRY, layer_class

    fields = _layer_fields()
    if names:
        chosen = [(n, layer_class(n)) for n in names]
    else:
        chosen = sorted(LAYER_REGISTRY.items(), key=lambda kv: kv[0].lower())
    out = []
    for name, cls in chosen:
        doc = inspect.getdoc(cls) or ""
        out.append({
            "type": name, "class": cls.__name__, "module": cls.__module__,
            "doc": doc.split("\n\n")[0].replace("\n", " ").strip(),
            "bottoms": _count(cls, "bottom"), "tops": _count(cls, "top"),
            "params": [(p, fields[p].message_type) for p in param_fields(name, cls)],
        })
    return out


# ----------------------------------------------------------------------------- output


def _md_escape(text):
    return text.replace("|", "\\|")


def to_markdown(types):
    comments = _proto_comments()
    lines = ["# Layer types", "",
             "Generated by `numcaffe layers --markdown` from the layer registry and the schema "
             "(net/proto/caffe.proto); do not edit by hand.", "",
             f"{len(types)} registered types. Every layer also takes the common LayerParameter fields "
             "(`name`, `type`, `bottom`, `top`, `param`, `loss_weight`, `propagate_down`, `include`, "
             "`exclude`, `blobs`).", "",
             "| type | bottoms | tops | parameters |", "|---|---|---|---|"]
    for t in types:
        params = ", ".join(f"`{p}`" for p, _ in t["params"]) or "-"
        lines.append(f"| [{t['type']}](#{t['type'].lower()}) | {t['bottoms']} | {t['tops']} | {params} |")
    for t in types:
        lines += ["", f"## {t['type']}", ""]
        if t["doc"]:
            lines += [t["doc"], ""]
        lines.append(f"Bottoms: {t['bottoms']}. Tops: {t['tops']}. Class `{t['module']}.{t['class']}`.")
        for pname, desc in t["params"]:
            lines += ["", f"`{pname}` ({desc.name}):", ""]
            rows = field_rows(desc, comments)
            if not rows:
                lines.append("(no fields)")
                continue
            lines += ["| field | type | default | description |", "|---|---|---|---|"]
            for name, typ, default, text in rows:
                lines.append(f"| `{name}` | {_md_escape(typ)} | {_md_escape(default)} | {_md_escape(text)} |")
    return "\n".join(lines) + "\n"


def to_text(types, detail=False):
    comments = _proto_comments() if detail else {}
    width = max((len(t["type"]) for t in types), default=0)
    lines = []
    for t in types:
        params = " ".join(t_p for t_p, _ in t["params"])
        head = f"{t['type']:<{width}}  bottoms {t['bottoms']}, tops {t['tops']}"
        lines.append(head + (f"; {params}" if params else ""))
        if detail:
            if t["doc"]:
                lines.append(f"    {t['doc']}")
            for pname, desc in t["params"]:
                lines.append(f"    {pname} ({desc.name}):")
                for name, typ, default, text in field_rows(desc, comments):
                    d = f" = {default}" if default else ""
                    lines.append(f"      {name}: {typ}{d}" + (f"  -- {text}" if text else ""))
    return "\n".join(lines) + "\n"


def add_arguments(p):
    p.add_argument("types", nargs="*", metavar="TYPE", help="show only these types, with all their fields")
    p.add_argument("--markdown", action="store_true", help="write the Markdown reference page (docs/layers.md)")
    p.add_argument("-o", "--output", default=None, help="write to this file instead of stdout")


def run(args):
    types = describe_types(args.types or None)
    text = to_markdown(types) if args.markdown else to_text(types, detail=bool(args.types))
    if args.output:
        from numcaffe.net.io import atomic_write
        try:
            atomic_write(args.output, text.encode("utf-8"))
        except OSError as e:
            raise ConfigError(f"{args.output}: cannot write: {e.strerror or e}") from None
        print(f"wrote {args.output}: {len(types)} layer types")
    else:
        print(text, end="")
    return 0
