"""Which ``*_param`` fields of LayerParameter a layer type reads, derived from the schema and its class.

NetSpec (``L.Convolution(kernel_size=5)`` -> ``convolution_param.kernel_size``)
and ``numcaffe layers`` (the reference of every type's parameters) both ask
:func:`param_fields`; nothing is listed by hand except the types whose message
is named after another type (Caffe shares them).
"""
import inspect
import re

from numcaffe.net.proto import caffe_pb2

#: Types whose parameter message is named after another type (Caffe shares them).
SHARED_PARAMS = {"Deconvolution": "convolution_param", "Im2col": "convolution_param",
                 "RNN": "recurrent_param", "LSTM": "recurrent_param", "SoftmaxWithLoss": "softmax_param"}
#: LayerParameter fields common to every layer (never a type's own parameters).
COMMON_FIELDS = {"name", "type", "bottom", "top", "phase", "loss_weight", "param", "blobs", "propagate_down",
                 "include", "exclude"}


def snake_case(name):
    """``InnerProduct`` -> ``inner_product``, ``HDF5Data`` -> ``hdf5_data``, ``LRN`` -> ``lrn``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return s.lower()


def param_fields(type_name, cls=None):
    """The LayerParameter ``*_param`` fields that layers of ``type_name`` read, in order.

    Derived, not listed: the class's own ``param_fields`` attribute, then the shared
    messages above, the type in snake case or lower case plus ``_param``, then every
    ``layer_param.<x>_param`` that the class's source reads.
    """
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    found = []

    def add(name):
        if name in fields and name not in COMMON_FIELDS and name not in found:
            found.append(name)

    for name in (getattr(cls, "param_fields", ()) or ()):
        add(name)
    add(SHARED_PARAMS.get(type_name, ""))
    add(snake_case(type_name) + "_param")
    add(type_name.lower() + "_param")
    for klass in (cls.__mro__ if cls is not None else ()):
        if klass.__module__ == "numcaffe.layers.base" or klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for name in re.findall(r"layer_param\.(\w+_param)\b", source):
            add(name)
    return found
