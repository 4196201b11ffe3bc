"""numcaffe's layers.  Importing this package registers every layer type.

Each module holds one family of layers with the Numba kernels they call; all of
them are imported here (by walking the package), so a new module is registered
without touching this file.
"""
import importlib
import pkgutil

from numcaffe.layers.base import LAYER_REGISTRY, Layer, LossLayer, NeuronLayer, create_layer, register

__all__ = ["LAYER_REGISTRY", "Layer", "LossLayer", "NeuronLayer", "create_layer", "register"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "gradcheck") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
