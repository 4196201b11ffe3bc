"""A NetParameter as a Graphviz graph (Caffe's python/caffe/draw.py).

Used by ``numcaffe draw`` (:mod:`numcaffe.tools.draw`) and pycaffe's ``caffe.draw``.
As Caffe's draw_net.py: layers are boxes (name, type and the settings that
shape their output: kernel, stride, pad, pooling method), blobs are octagons,
and edges leaving a layer carry its output size (``num_output``, batch size).
A layer that runs in place (ReLU on ``conv1``) gets its own blob node, so the
graph has no loops.  ``phase`` keeps the layers of one phase (default: all).

:func:`draw` writes the format of the file's extension: ``.dot``/``.gv`` the
Graphviz source (no Graphviz install needed), ``.png``, ``.svg``, ``.pdf``
rendered by Graphviz's ``dot`` program; :func:`render` returns those bytes.  graphviz (the Python package) is
optional (the ``tools`` extra) and imported only when a graph is built.
"""
import os

from numcaffe.net.errors import ConfigError, NumcaffeError
from numcaffe.net.proto import caffe_pb2

LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                "InnerProduct": "#CC33FF"}
DEFAULT_COLOR = "#6495ED"
BLOB_STYLE = {"shape": "octagon", "style": "filled", "fillcolor": "#E0E0E0"}
_RENDERED = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpg"}
_SOURCE = {".dot", ".gv"}


def _sizes(values):
    values = list(values)
    return "x".join(str(v) for v in values) if values else None


def layer_label(layer, rankdir="LR", show_lr=False):
    """Caffe's label of a layer node: name, type and the settings that shape its output."""
    sep = " " if rankdir in ("TB", "BT") else "\\n"   # as Caffe: wide nodes when the graph runs downwards
    parts = [layer.name, f"({layer.type})"]
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel = _sizes(p.kernel_size) or (f"{p.kernel_h}x{p.kernel_w}" if p.HasField("kernel_h") else "?")
        stride = _sizes(p.stride) or (f"{p.stride_h}x{p.stride_w}" if p.HasField("stride_h") else "1")
        pad = _sizes(p.pad) or (f"{p.pad_h}x{p.pad_w}" if p.HasField("pad_h") or p.HasField("pad_w") else "0")
        parts.append(f"kernel size: {kernel}{sep}stride: {stride}{sep}pad: {pad}")
        if p.group != 1:
            parts.append(f"group: {p.group}")
    elif layer.type == "Pooling":
        p = layer.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool) if p.pool in \
            caffe_pb2.PoolingParameter.PoolMethod.values() else str(p.pool)
        if p.global_pooling:
            parts.append(f"pool: {method}{sep}global")
        else:
            kernel = p.kernel_size if p.HasField("kernel_size") else f"{p.kernel_h}x{p.kernel_w}"
            parts.append(f"pool: {method}{sep}kernel size: {kernel}{sep}stride: {p.stride}{sep}pad: {p.pad}")
    if show_lr and len(layer.param):
        lr = ", ".join(f"{s.lr_mult:g}" for s in layer.param)
        decay = ", ".join(f"{s.decay_mult:g}" for s in layer.param)
        parts.append(f"lr mult: {lr}{sep}decay mult: {decay}")
    return sep.join(parts)


def edge_label(layer):
    """What Caffe writes on the edges leaving a layer."""
    if layer.type in ("Data", "ImageData", "HDF5Data", "WindowData", "MemoryData"):
        for name in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param",
                     "memory_data_param"):
            p = getattr(layer, name)
            if layer.HasField(name) and p.batch_size:
                return f"Batch {p.batch_size}"
    elif layer.type in ("Convolution", "Deconvolution") and layer.convolution_param.HasField("num_output"):
        return str(layer.convolution_param.num_output)
    elif layer.type == "InnerProduct" and layer.inner_product_param.HasField("num_output"):
        return str(layer.inner_product_param.num_output)
    return None


def select_layers(net, phase=None):
    """The net's layers for ``phase`` ('TRAIN', 'TEST' or None for all)."""
    if phase is None:
        return net
    from numcaffe.net.net import as_phase, filter_net

    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = as_phase(phase)
    return filter_net(net, state)


def build_graph(net, rankdir="LR", phase=None, label_edges=True, show_lr=False):
    """A ``graphviz.Digraph`` of ``net`` (a NetParameter)."""
    try:
        import graphviz
    except ImportError:
        raise NumcaffeError("drawing needs the graphviz package: pip install 'numcaffe[tools]'") from None
    net = select_layers(net, phase)
    g = graphviz.Digraph(name=net.name or "net", graph_attr={"rankdir": rankdir})
    current = {}          # blob name -> node id of its latest version
    count = [0]

    def blob_node(name):
        count[0] += 1
        node = f"blob{count[0]}"
        g.node(node, label=name, **BLOB_STYLE)
        current[name] = node
        return node

    for i, layer in enumerate(net.layer):
        node = f"layer{i}"
        g.node(node, label=layer_label(layer, rankdir, show_lr), shape="box", style="filled",
               fillcolor=LAYER_COLORS.get(layer.type, DEFAULT_COLOR))
        for name in layer.bottom:
            src = current.get(name) or blob_node(name)   # a blob from outside (missing producer)
            g.edge(src, node)
        label = edge_label(layer) if label_edges else None
        for name in layer.top:
            # in place: a new version of the blob; a name made again elsewhere (the TRAIN and TEST
            # data layers): the same node, as in Caffe's drawing
            dst = blob_node(name) if name in layer.bottom or name not in current else current[name]
            g.edge(node, dst, **({"label": label} if label else {}))
    return g


def render(net, ext, rankdir="LR", phase=None, show_lr=False):
    """``net`` (a NetParameter) as the bytes of a ``.dot`` source or a rendered ``.png``/``.svg``/``.pdf``."""
    ext = ext.lower() if ext.startswith(".") else "." + ext.lower()
    if ext not in _RENDERED and ext not in _SOURCE:
        raise ConfigError(f"unsupported format {ext!r}; use .png, .svg, .pdf or .dot")
    g = build_graph(net, rankdir, phase, show_lr=show_lr)
    if ext in _SOURCE:
        return g.source.encode("utf-8")
    import graphviz
    try:
        return g.pipe(format=_RENDERED[ext])
    except graphviz.ExecutableNotFound:
        raise NumcaffeError(f"rendering {ext[1:]} needs Graphviz's `dot` program, which is not installed "
                            f"(Debian/Ubuntu: apt install graphviz); or write a .dot file instead") from None
    except graphviz.CalledProcessError as e:
        detail = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise NumcaffeError(f"Graphviz could not render the net: {detail[-1] if detail else e}") from None


def draw(net, out, rankdir="LR", phase=None, show_lr=False):
    """Write ``net`` (a NetParameter) to ``out`` as .dot source or a rendered image."""
    ext = os.path.splitext(out)[1].lower()
    if ext not in _RENDERED and ext not in _SOURCE:
        raise ConfigError(f"{out}: unsupported format {ext or '(none)'!r}; use .png, .svg, .pdf or .dot")
    data = render(net, ext, rankdir, phase, show_lr)
    from numcaffe.net.io import atomic_write
    try:
        atomic_write(out, data)
    except OSError as e:
        raise ConfigError(f"{out}: cannot write: {e.strerror or e}") from None
    return out
