"""Compose a net in Python and get its NetParameter, prototxt or YAML (pycaffe's net_spec).

::

    from numcaffe.net.pycaffe.net_spec import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.Input(ntop=2, shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64])])
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.ip1 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    print(n.to_prototxt(name="LeNet"))

As in pycaffe:

* ``L.<Type>(*bottoms, **kwargs)`` makes a layer; ``ntop=`` sets its number of
  tops (one top is returned as is, several as a tuple, none as the layer);
  ``in_place=True`` makes its tops its bottoms;
* a keyword names a field of the layer's parameter message
  (``kernel_size`` -> ``convolution_param.kernel_size``; for types with several,
  such as SoftmaxWithLoss, the first that has it), else a field of
  LayerParameter (``param``, ``loss_weight``, ``include``), or a whole message
  (``convolution_param=dict(...)``); dicts fill messages, lists fill repeated
  fields, a scalar given for a repeated field is one element;
* layers are named after their first top, tops after the attribute they are
  assigned to (unassigned ones get ``<Type><k>``); a layer without tops
  (``n.silence = L.Silence(n.data, ntop=0)``) is named after its attribute;
* ``P.<Type>.<ENUM>`` is the enum value (``P.Pooling.MAX``); enum fields also
  take the value's name as a string (``pool="MAX"``).

Unlike pycaffe, unknown layer types and unknown keywords are errors on the spot,
with the nearest valid names.
"""
import difflib
from collections import Counter, OrderedDict

from google.protobuf.descriptor import FieldDescriptor as FD

from numcaffe.layers.fields import param_fields, snake_case
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2

__all__ = ["NetSpec", "layers", "params", "to_proto", "param_fields", "snake_case"]


def _registry():
    import numcaffe.layers  # noqa: F401  (registers every layer type)
    from numcaffe.layers.base import LAYER_REGISTRY
    return LAYER_REGISTRY


# ----------------------------------------------------------------------------- filling messages


def _near(name, names):
    near = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(map(repr, near))}?" if near else ""


def _scalar(field, value, where):
    if field.type == FD.TYPE_ENUM and isinstance(value, str):
        ev = field.enum_type.values_by_name.get(value)
        if ev is None:
            raise ConfigError(f"{where}: {value!r} is not a {field.enum_type.name} value "
                              f"(expected one of {', '.join(field.enum_type.values_by_name)})")
        return ev.number
    return value


def assign_proto(proto, name, value, where="NetSpec"):
    """Set field ``name`` of ``proto`` from plain Python data (pycaffe's assign_proto)."""
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise ConfigError(f"{where}: {proto.DESCRIPTOR.name} has no field {name!r}"
                          f"{_near(name, proto.DESCRIPTOR.fields_by_name)}")
    where = f"{where}: {name}"
    try:
        if field.is_repeated:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            container = getattr(proto, name)
            for item in items:
                if field.type == FD.TYPE_MESSAGE:
                    _fill(container.add(), item, where)
                else:
                    container.append(_scalar(field, item, where))
        elif field.type == FD.TYPE_MESSAGE:
            sub = getattr(proto, name)
            sub.SetInParent()
            _fill(sub, value, where)
        else:
            setattr(proto, name, _scalar(field, value, where))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _fill(msg, value, where):
    if isinstance(value, type(msg)):
        msg.CopyFrom(value)
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a dict of {msg.DESCRIPTOR.name} fields, got {value!r}")
    for k, v in value.items():
        assign_proto(msg, k, v, where)


# ----------------------------------------------------------------------------- the graph


class Top:
    """One output of a :class:`Function` (a blob of the future net)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter holding this top and everything it depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class NotATopError(ConfigError, TypeError):
    """A layer function was given something other than a Top as a bottom (pycaffe raises TypeError)."""


class Function:
    """One layer: its type, its bottoms (Tops), its parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                # pycaffe's exact words, which its users match (the tuple an ntop=2 layer returns is the
                # usual case: pass its tops with *tops; keyword arguments give parameters)
                raise NotATopError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if self.in_place and self.ntop != len(inputs):
            raise ConfigError(f"L.{type_name}: in_place=True needs as many tops as bottoms "
                              f"({len(inputs)} bottoms, ntop={self.ntop})")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))
        # Check the keywords now, so a typo points at the line that made it.
        self._layer = self._make_layer()

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _make_layer(self):
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        where = f"L.{self.type_name}"
        cls = _registry().get(self.type_name)
        own = param_fields(self.type_name, cls)
        for k, v in self.params.items():
            if k.endswith("param"):            # a whole message (convolution_param=...), or `param`
                assign_proto(layer, k, v, where)
                continue
            target = next((p for p in own if k in getattr(layer, p).DESCRIPTOR.fields_by_name), None)
            if target is None and k in layer.DESCRIPTOR.fields_by_name:
                assign_proto(layer, k, v, where)   # loss_weight, include, propagate_down, ...
                continue
            if target is None:
                known = set(layer.DESCRIPTOR.fields_by_name) - {"name", "type", "bottom", "top"}
                for p in own:
                    known |= set(getattr(layer, p).DESCRIPTOR.fields_by_name)
                in_msgs = " nor ".join([f"of {p}" for p in own] + ["of LayerParameter"])
                raise ConfigError(f"{where}: no parameter {k!r} (not a field {in_msgs}){_near(k, known)}")
            assign_proto(getattr(layer, target), k, v, f"{where}: {target}")
        return layer

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(self._layer)
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        layers[self] = layer


def to_proto(*tops):
    """A NetParameter of the given tops and everything they depend on."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops, assigned as attributes (``n.conv1 = L.Convolution(...)``) or items."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        if not isinstance(value, (Top, Function)):   # a Function: a layer with ntop=0, named `name`
            raise ConfigError(f"NetSpec.{name}: expected a layer's output (L.<Type>(...)), got {value!r}")
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top {name!r}{_near(name, self.tops)}") from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self, name=None):
        """The NetParameter (layers in the order their tops were first needed)."""
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        if name:
            net.name = name
        net.layer.extend(layers.values())
        return net

    def to_prototxt(self, name=None):
        from numcaffe.net.config import to_text
        return to_text(self.to_proto(name))

    def to_yaml(self, name=None):
        from numcaffe.net.config import to_yaml
        return to_yaml(self.to_proto(name))

    def to_net(self, phase="TRAIN", name=None, **kwargs):
        """Build the numcaffe Net right away."""
        from numcaffe.net.net import Net
        return Net(self.to_proto(name), phase, **kwargs)


class Layers:
    """``L.<Type>(*bottoms, **params)`` for every registered layer type."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        registry = _registry()
        if name not in registry:
            near = difflib.get_close_matches(name, sorted(registry), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ConfigError(f"L.{name}: unknown layer type {name!r}{hint}")

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = name
        return layer_fn


class Parameters:
    """``P.<Type>.<ENUM>``: enum values of ``<Type>Parameter`` (``P.Pooling.MAX``)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter", None)
        if message is None:
            raise AttributeError(f"P.{name}: caffe_pb2 has no {name}Parameter")

        class Param:
            def __getattr__(self, value_name):
                try:
                    return getattr(message, value_name)
                except AttributeError:
                    raise AttributeError(f"P.{name}.{value_name}: {name}Parameter has no value "
                                         f"{value_name!r}") from None

        return Param()


layers = Layers()
params = Parameters()
