"""numcaffe.net: Blob, the Caffe-compatible schema, config reading, fillers and Net.

``from numcaffe.net import Net, TRAIN, TEST`` as in pycaffe.  Attributes load
lazily so that importing a submodule (``numcaffe.net.blob``) stays cheap and
free of import cycles with ``numcaffe.layers``.
"""

__all__ = ["Net", "TRAIN", "TEST", "Blob", "set_random_seed"]


def __getattr__(name):
    if name in ("Net", "TRAIN", "TEST"):
        import numcaffe.layers  # noqa: F401  (registers every layer type)
        from numcaffe.net import net as _net
        return getattr(_net, name)
    if name == "Blob":
        from numcaffe.net.blob import Blob
        return Blob
    if name == "set_random_seed":
        from numcaffe.net.random import set_random_seed
        return set_random_seed
    raise AttributeError(f"module 'numcaffe.net' has no attribute {name!r}")
