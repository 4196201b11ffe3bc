"""The ``Python`` layer: user-written layers with pycaffe's interface.

A net names a Python class by module and class name::

    layer {
      name: "scale" type: "Python" bottom: "x" top: "y"
      python_param { module: "my_layers" layer: "Scale" param_str: '{"factor": 2}' }
    }

The module is imported from ``sys.path`` and, failing that, from the directory
of the net's config file.  **This runs the code that the config names**: only
use configs you trust, as with any Python script.

The class follows pycaffe's ``caffe.Layer``; subclass :class:`Layer` from this
module (``import numcaffe.layers.python_layer as caffe`` makes pycaffe code
read as before) or write a plain class with the same methods::

    class Scale(Layer):
        def setup(self, bottom, top):         # once; read self.param_str, add self.blobs
            self.factor = json.loads(self.param_str)["factor"]
        def reshape(self, bottom, top):       # before every forward
            top[0].reshape(*bottom[0].data.shape)
        def forward(self, bottom, top):
            top[0].data[...] = self.factor * bottom[0].data
        def backward(self, top, propagate_down, bottom):
            if propagate_down[0]:
                bottom[0].diff[...] = self.factor * top[0].diff

Blobs have ``.data`` and ``.diff`` (numpy arrays, written in place),
``.reshape(*shape)``, ``.shape``, ``.count`` and ``.num/.channels/.height/.width``.
``self.param_str``, ``self.phase`` (``TRAIN`` 0 or ``TEST`` 1, as in pycaffe) and ``self.layer_param``
are set before ``setup``; ``self.blobs.add_blob(*shape)`` adds a learnable
parameter (saved in .caffemodel files, updated by the solver).  As for every
layer, ``backward`` overwrites bottom diffs and adds into parameter diffs.
"""
import difflib
import importlib
import inspect
import os
import sys
import traceback

from numcaffe.layers import base as _base
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, NumcaffeError, error_keeping_type
from numcaffe.net.proto.caffe_pb2 import TEST, TRAIN  # noqa: F401  (pycaffe's caffe.TRAIN / caffe.TEST)


class BlobVec(list):
    """A layer's parameter blobs, as pycaffe's ``self.blobs`` (with ``add_blob``)."""

    def add_blob(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        blob = Blob(tuple(int(d) for d in shape))
        self.append(blob)
        return blob


class Layer:
    """pycaffe's ``caffe.Layer``: subclass it and define setup/reshape/forward/backward."""

    def __init__(self, param=None):
        self.layer_param = param
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = param.phase if param is not None else 0
        self.blobs = BlobVec()

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} must define reshape(bottom, top)")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} must define forward(bottom, top)")

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__} must define backward(top, propagate_down, bottom)")


def import_module(name, base_dir=None, where=""):
    """Import ``name`` from sys.path, then from ``base_dir``; ConfigError saying which failed."""
    searched = "sys.path" + (f" and {base_dir}" if base_dir else "")
    for attempt in (0, 1):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            missing = e.name or ""
            if missing != name and not name.startswith(missing + "."):
                raise ConfigError(f"{where}importing Python module {name!r} failed: {e}") from None
            if attempt == 0 and base_dir and os.path.isdir(base_dir) and base_dir not in sys.path:
                sys.path.append(base_dir)
                importlib.invalidate_caches()
                continue
            raise ConfigError(f"{where}Python module {name!r} not found (searched {searched}); "
                              f"python_param.module must name an importable module") from None
        except NumcaffeError:
            raise
        except Exception as e:  # noqa: BLE001 - user code failing at import time
            raise ConfigError(f"{where}importing Python module {name!r} failed: {_summary(e)}") from e
    raise AssertionError("unreachable")


def _summary(exc):
    """``Type: message (file:line)`` of an exception raised in user code."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        f = frames[-1]
        text += f" (at {f.filename}:{f.lineno})"
    return text


@_base.register("Python")
class PythonLayer(_base.Layer):
    """Runs a user's Python class (``python_param.module`` / ``.layer``) as a layer."""

    def __init__(self, param):
        super().__init__(param)
        self.blobs = BlobVec(self.blobs)
        self.impl = None

    def _where(self):
        return f"{self.describe()}: "

    def _create(self):
        p = self.layer_param.python_param
        if not p.module or not p.layer:
            raise ConfigError(f"{self._where()}python_param needs both 'module' and 'layer' "
                              f"(got module {p.module!r}, layer {p.layer!r})")
        module = import_module(p.module, self.base_dir, self._where())
        cls = getattr(module, p.layer, None)
        if cls is None or not callable(cls):
            names = [n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_")]
            near = difflib.get_close_matches(p.layer, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else \
                (f"; it defines {', '.join(sorted(names)[:10])}" if names else "")
            raise ConfigError(f"{self._where()}Python module {p.module!r} ({getattr(module, '__file__', '?')}) "
                              f"has no class {p.layer!r}{hint}")
        try:
            takes_param = _accepts_one_argument(cls)
            impl = cls(self.layer_param) if takes_param else cls()
        except NumcaffeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise error_keeping_type(e, f"{self._where()}creating {p.module}.{p.layer} failed: {_summary(e)}") from e
        # What pycaffe sets on the object before setup().
        impl.layer_param = self.layer_param
        impl.param_str = p.param_str
        impl.phase = self.phase
        impl.blobs = self.blobs
        for method in ("reshape", "forward"):
            if not callable(getattr(impl, method, None)):
                raise ConfigError(f"{self._where()}{p.module}.{p.layer} has no {method}() method")
        return impl

    def _call(self, method, *args):
        fn = getattr(self.impl, method, None)
        if fn is None:
            if method in ("setup",):
                return None
            p = self.layer_param.python_param
            raise ConfigError(f"{self._where()}{p.module}.{p.layer} has no {method}() method")
        try:
            return fn(*args)
        except NumcaffeError:
            raise
        except Exception as e:  # noqa: BLE001 - an error in the user's layer code
            p = self.layer_param.python_param
            raise error_keeping_type(e, f"{self._where()}{p.module}.{p.layer}.{method}() raised {_summary(e)}") from e

    def LayerSetUp(self, bottom, top):
        self.impl = self._create()
        self._call("setup", bottom, top)
        if self.impl.blobs is not self.blobs:      # the layer replaced its blob list
            self.blobs = BlobVec(self.impl.blobs)
            self.impl.blobs = self.blobs

    def Reshape(self, bottom, top):
        self._call("reshape", bottom, top)

    def Forward_cpu(self, bottom, top):
        self._call("forward", bottom, top)

    def Backward_cpu(self, top, propagate_down, bottom):
        self._call("backward", top, list(propagate_down), bottom)


def _accepts_one_argument(cls):
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return True
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return bool(params)
