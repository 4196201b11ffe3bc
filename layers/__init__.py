"""numcaffe's layers.  Importing this package registers every layer type.

Each module holds one family of layers with the Numba kernels they call; all of
them are imported here (by walking the package), so a new module is registered
without touching this file.

Third-party packages add layer types without touching numcaffe: they register
their classes with ``@numcaffe.layers.register("MyType")`` and declare an entry
point in the group ``numcaffe.layers`` (pyproject.toml)::

    [project.entry-points."numcaffe.layers"]
    my_layers = "my_package.layers"            # a module whose import registers its classes
    MyType = "my_package.layers:MyTypeLayer"   # or one Layer class, registered under the entry's name

Entry points are loaded after the built-in modules.  A plugin that fails to
load is reported on stderr (and kept in ``PLUGIN_ERRORS``); the others and the
built-in types still work.
"""
import importlib
import inspect
import pkgutil
import sys

from numcaffe.layers.base import LAYER_REGISTRY, Layer, LossLayer, NeuronLayer, create_layer, register

__all__ = ["LAYER_REGISTRY", "Layer", "LossLayer", "NeuronLayer", "create_layer", "register", "PLUGIN_ERRORS",
           "load_plugins"]

ENTRY_POINT_GROUP = "numcaffe.layers"
#: (entry point name, value, message) for every plugin that failed to load.
PLUGIN_ERRORS = []

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "gradcheck") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def load_plugins(group=ENTRY_POINT_GROUP):
    """Load the layer plugins declared as entry points; returns the names loaded."""
    from importlib.metadata import entry_points

    loaded = []
    try:
        eps = entry_points(group=group)
    except Exception as e:  # noqa: BLE001 - broken package metadata must not break numcaffe
        _plugin_failed("(entry points)", group, e)
        return loaded
    for ep in eps:
        try:
            obj = ep.load()
            if inspect.isclass(obj) and issubclass(obj, Layer) and LAYER_REGISTRY.get(ep.name) is not obj:
                if obj.type_name is not None and LAYER_REGISTRY.get(obj.type_name) is obj:
                    pass  # registered by its own decorator under its own name
                else:
                    register(ep.name)(obj)
            loaded.append(ep.name)
        except Exception as e:  # noqa: BLE001 - a broken plugin is reported, not fatal
            _plugin_failed(ep.name, ep.value, e)
    return loaded


def _plugin_failed(name, value, exc):
    message = f"{type(exc).__name__}: {exc}"
    PLUGIN_ERRORS.append((name, value, message))
    from numcaffe.net.comm import quiet_rank
    if not quiet_rank():      # under MPI every rank fails alike: rank 0 says it
        print(f"numcaffe: warning: layer plugin {name!r} ({value}) failed to load and is skipped: {message}",
              file=sys.stderr)


load_plugins()
