"""Model exchange with ONNX: a numcaffe net out as an ONNX model, an ONNX model in as a net and weights.

    from numcaffe.net.onnx import export_model, import_model
    model = export_model("deploy.prototxt", "weights.caffemodel")          # an onnx.ModelProto
    net_param, weights = import_model("model.onnx")                        # two NetParameters

The layer <-> operator correspondence is one table, :mod:`numcaffe.net.onnx.table`;
:mod:`.export` and :mod:`.importer` hold one small function per row.  ``onnx``
is an optional dependency (``pip install 'numcaffe[onnx]'``), imported only here.
"""
from numcaffe.net.errors import NumcaffeError

#: The opset the exporter writes: ONNX 1.16's, run by every onnxruntime since 1.18.
OPSET = 21

INSTALL_HINT = "ONNX support needs the onnx package: pip install 'numcaffe[onnx]'"


class OnnxError(NumcaffeError):
    """A net or model that cannot cross to or from ONNX (unsupported layer or operator, bad file)."""


def require_onnx():
    """The ``onnx`` module, or one clear error saying what to install."""
    try:
        import onnx
    except ImportError:
        raise OnnxError(INSTALL_HINT) from None
    return onnx


def export_model(model, weights=None, phase="TEST", static_batch=False, **kw):
    """An ``onnx.ModelProto`` of the net ``model`` (a path, NetParameter or :class:`Net`)."""
    require_onnx()
    from numcaffe.net.onnx.export import export_model as _export
    return _export(model, weights, phase=phase, static_batch=static_batch, **kw)


def import_model(model, **kw):
    """``(net_param, weights)`` for an ONNX model (a path or ModelProto): the net definition and a
    NetParameter holding the layers' blobs, as a .caffemodel holds them."""
    require_onnx()
    from numcaffe.net.onnx.importer import import_model as _import
    return _import(model, **kw)
