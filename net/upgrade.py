"""Upgrading old Caffe definitions on the fly, as Caffe's upgrade_proto does.

Reading a config calls :func:`upgrade_message`; it rewrites deprecated forms
into the current ones and prints a notice naming the file:

* net-level ``input`` / ``input_dim`` / ``input_shape`` become an ``Input`` layer;
* the deprecated ``solver_type`` enum becomes the ``type`` string.
"""
import sys

from numcaffe.net.errors import ConfigError

_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}

#: Upgraders run by :func:`upgrade_message`, keyed by message name: fn(msg, path) -> bool (changed).
UPGRADERS = {}


def notice(path, what):
    print(f"numcaffe: {path}: {what}", file=sys.stderr)


def _upgrader(message_name):
    def deco(fn):
        UPGRADERS.setdefault(message_name, []).append(fn)
        return fn
    return deco


def upgrade_message(msg, path="<config>"):
    changed = False
    for fn in UPGRADERS.get(msg.DESCRIPTOR.name, ()):
        changed |= bool(fn(msg, path))
    return changed


@_upgrader("NetParameter")
def upgrade_net_input(net, path):
    """Turn net-level inputs into an Input layer (Caffe's UpgradeNetInput)."""
    if not len(net.input):
        if len(net.input_dim) or len(net.input_shape):
            raise ConfigError(f"{path}: input_dim/input_shape given without input names")
        return False
    names = list(net.input)
    shapes = []
    if len(net.input_shape):
        if len(net.input_shape) != len(names):
            raise ConfigError(f"{path}: {len(names)} inputs but {len(net.input_shape)} input_shape entries")
        shapes = [list(s.dim) for s in net.input_shape]
    elif len(net.input_dim):
        if len(net.input_dim) != 4 * len(names):
            raise ConfigError(f"{path}: input_dim must give 4 dimensions per input "
                              f"({len(names)} inputs, {len(net.input_dim)} dims)")
        dims = list(net.input_dim)
        shapes = [dims[4 * i: 4 * i + 4] for i in range(len(names))]
    else:
        raise ConfigError(f"{path}: net-level inputs {names} have no input_shape or input_dim")
    old_layers = [type(l)() for l in net.layer]
    for src, dst in zip(net.layer, old_layers):
        dst.CopyFrom(src)
    del net.layer[:]
    layer = net.layer.add()
    layer.name = "input"
    layer.type = "Input"
    for name, dims in zip(names, shapes):
        layer.top.append(name)
        layer.input_param.shape.add().dim.extend(dims)
    net.layer.extend(old_layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")
    return True


@_upgrader("SolverParameter")
def upgrade_solver_type(solver, path):
    """Map the deprecated ``solver_type`` enum onto the ``type`` string."""
    if not solver.HasField("solver_type"):
        return False
    name = _SOLVER_TYPES.get(solver.solver_type)
    if solver.HasField("type") and solver.type != name:
        raise ConfigError(f"{path}: both type {solver.type!r} and solver_type {name!r} are set; keep only type")
    solver.type = name
    solver.ClearField("solver_type")
    notice(path, f"upgraded deprecated solver_type to type: {name!r}")
    return True
