"""Net: a DAG of layers built from a NetParameter, as Caffe's ``Net<float>``.

Assembly is a pipeline of small passes, each a function of its own:

1. :func:`filter_net` keeps the layers whose include/exclude rules match the
   NetState (phase, level, stages);
2. :func:`insert_splits` adds a Split layer wherever one blob feeds several
   consumers, so their gradients add up;
3. ``Net._build`` creates the blobs (a top named like its bottom runs in place),
   sets every layer up and records loss weights;
4. ``Net._append_params`` shares parameters by ``ParamSpec.name`` and records
   ``lr_mult`` / ``decay_mult``;
5. ``Net._prune_backward`` decides, in a reverse pass, which layers and bottoms
   need a gradient at all.

Each step logs what Caffe's Net::Init logs (the filtered net, ``Creating
Layer``, ``x <- bottom``, ``x -> top``, ``Top shape: 64 20 24 24 (737280)``,
``Memory required for data``, which layers need backward, the outputs), so a
Caffe user reads a net's shapes off the log as before; ``GLOG_minloglevel=1``
silences it, as it does Caffe.

Then ``forward`` and ``backward`` are a loop over the layers each.
"""
import os
from collections import OrderedDict

import numpy as np
from google.protobuf import text_format

import numcaffe.layers  # noqa: F401  (registers every layer type)
from numcaffe.layers.base import create_layer
from numcaffe.net import random as nc_random
from numcaffe.net.blob import Blob, proto_array, proto_shape
from numcaffe.net.config import parse_binary, read_bytes, read_message
from numcaffe.net.errors import ConfigError, ModelFileError, NumcaffeError, ShapeError
from numcaffe.net.memory import Budget
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.upgrade import check_current

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

_PHASES = {"TRAIN": TRAIN, "TEST": TEST, "train": TRAIN, "test": TEST}


def as_phase(phase):
    if isinstance(phase, str):
        try:
            return _PHASES[phase]
        except KeyError:
            raise ConfigError(f"unknown phase {phase!r} (expected TRAIN or TEST)") from None
    return int(phase)


# ------------------------------------------------------------------ passes


def rule_mismatch(state, rule, layer_name):
    """Why a NetState fails one NetStateRule, in Caffe's words, or None when it meets it."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return (f"The NetState phase ({state.phase}) differed from the phase ({rule.phase}) specified by a "
                f"rule in layer {layer_name}")
    if rule.HasField("min_level") and state.level < rule.min_level:
        return (f"The NetState level ({state.level}) is below the min_level ({rule.min_level}) specified by a "
                f"rule in layer {layer_name}")
    if rule.HasField("max_level") and state.level > rule.max_level:
        return (f"The NetState level ({state.level}) is above the max_level ({rule.max_level}) specified by a "
                f"rule in layer {layer_name}")
    stages = set(state.stage)
    for s in rule.stage:
        if s not in stages:
            return f"The NetState did not contain stage '{s}' specified by a rule in layer {layer_name}"
    for s in rule.not_stage:
        if s in stages:
            return f"The NetState contained a not_stage '{s}' specified by a rule in layer {layer_name}"
    return None


def state_meets_rule(state, rule):
    """Whether a NetState satisfies one NetStateRule (Caffe's StateMeetsRule)."""
    return rule_mismatch(state, rule, "") is None


def layer_included(layer, state, log=None):
    """Whether ``state`` keeps ``layer``; ``log`` (a logger) hears why a layer is left out."""
    if len(layer.include) and len(layer.exclude):
        raise ConfigError(f"layer {layer.name!r} has both include and exclude rules; give only one kind")
    if len(layer.include):
        reasons = [rule_mismatch(state, r, layer.name) for r in layer.include]
        if all(reasons) and log is not None:
            for reason in reasons:
                log.info("%s", reason)
        return not all(reasons)
    for r in layer.exclude:
        if state_meets_rule(state, r):
            if log is not None:
                log.info("The NetState met an exclude rule of layer %s", layer.name)
            return False
    return True


def filter_net(param, state, log=None):
    """A copy of ``param`` holding only the layers that ``state`` includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    out.layer.extend(l for l in param.layer if layer_included(l, state, log))
    return out


def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(param):
    """Insert Split layers where a top blob feeds more than one bottom (Caffe's InsertSplits).

    A top that carries a loss weight and is also consumed gets a split as well,
    the loss weight moving to the split's first top.
    """
    # Who produced the current version of each blob name, and who consumes each version.
    last_producer = {}                 # blob name -> (layer index, top index)
    consumers = {}                     # (layer index, top index) -> count of bottoms using it
    bottom_source = {}                 # (layer index, bottom index) -> (layer index, top index)
    loss_weight = {}                   # (layer index, top index) -> weight
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise ConfigError(f"layer {layer.name!r} ({layer.type}): unknown bottom blob {name!r} "
                                  f"(bottom {j}); no earlier layer produces it")
            src = last_producer[name]
            bottom_source[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j, w in enumerate(layer.loss_weight):
            loss_weight[(i, j)] = w

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    split_used = {}                    # (layer, top) -> next split index handed out
    for i, layer in enumerate(param.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = bottom_source[(i, j)]
            if _needs_split(src, consumers, loss_weight):
                k = split_used.get(src, 1 if loss_weight.get(src, 0.0) else 0)
                split_used[src] = k + 1
                new.bottom[j] = split_blob_name(param.layer[src[0]].name, name, src[1], k)
        for j, name in enumerate(layer.top):
            key = (i, j)
            if not _needs_split(key, consumers, loss_weight):
                continue
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            n = consumers.get(key, 0)
            w = loss_weight.get(key, 0.0)
            for k in range(n):
                split.top.append(split_blob_name(layer.name, name, j, k))
            if w:
                # As in Caffe, the loss moves to the split's first top (nobody consumes it)
                # and the consumers take tops 1..n.
                split.top.append(split_blob_name(layer.name, name, j, n))
                split.loss_weight.extend([w] + [0.0] * n)
                new.loss_weight[j] = 0.0
    return out


def _needs_split(key, consumers, loss_weight):
    n = consumers.get(key, 0)
    return n > 1 or (n >= 1 and loss_weight.get(key, 0.0) != 0.0)



# ------------------------------------------------------------------ net


class Net:
    """A net for one phase, built from a prototxt, YAML or NetParameter.

    ``Net(model_file, phase, weights=None, stages=(), level=0)`` as in pycaffe, which also takes
    its older form ``Net(model_file, weights_file, phase)``.  A file is upgraded from old Caffe
    formats as it is read (:func:`~numcaffe.net.config.read_message`); a NetParameter is taken as
    it is (as Caffe's ``Net(NetParameter)``: one that sets deprecated fields is an error), copied,
    never changed.  ``state`` (a NetState, as the
    solver merges it from the net's and its own ``train_state``/``test_state``) replaces the
    net's state, and then ``phase``, ``stages`` and ``level`` are not used.
    """

    def __init__(self, model, phase=TRAIN, weights=None, stages=(), level=0, base_dir=None, state=None):
        phase_is_a_path = isinstance(phase, os.PathLike) or (isinstance(phase, str) and phase not in _PHASES)
        weights_is_a_phase = isinstance(weights, (int, str)) and (weights in _PHASES or weights in (TRAIN, TEST))
        if phase_is_a_path and weights_is_a_phase:
            phase, weights = weights, phase   # pycaffe's Net(model_file, weights_file, phase)
        if isinstance(model, caffe_pb2.NetParameter):
            check_current(model, "Net")
            param = caffe_pb2.NetParameter()
            param.CopyFrom(model)
            self.source = "<net>"
        else:
            model = os.fspath(model)
            param = read_message(model, caffe_pb2.NetParameter)
            self.source = model
            if base_dir is None:
                base_dir = os.path.dirname(os.path.abspath(model))
        self.base_dir = base_dir
        if state is not None:
            param.state.CopyFrom(state)
            phase = state.phase
        self.phase = as_phase(phase)
        # pycaffe's net.before_forward(fn) & co.: callables run with the layer index around each layer.
        self._before_forward, self._after_forward = [], []
        self._before_backward, self._after_backward = [], []
        state = param.state
        state.phase = self.phase
        if level:
            state.level = level
        for s in stages:
            if s not in state.stage:
                state.stage.append(s)
        self.name = param.name
        self.param = param
        self.debug_info = param.debug_info
        log = _log()
        filtered = filter_net(param, state, log)
        log.info("Initializing net from parameters: \n%s", text_format.MessageToString(filtered).rstrip())
        self.net_param = insert_splits(filtered)
        self._build(self.net_param, log)
        if weights:
            for w in ([weights] if isinstance(weights, (str, os.PathLike)) else weights):
                self.copy_from(w)

    # -- assembly -------------------------------------------------------------------
    def _build(self, param, log):
        self.layers = []
        self._layer_names = []
        self.blobs = OrderedDict()
        self.bottom_vecs, self.top_vecs = [], []
        self._bottom_names, self._top_names = [], []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.blob_need_backward = {}
        self.inputs = []
        self.params = OrderedDict()
        self.learnable_params = []
        self.params_lr = []
        self.params_weight_decay = []
        self.param_display_names = []
        self.param_layer_names = []       # the layer that owns each learnable parameter
        self._param_index = []            # and its index among that layer's blobs
        self._param_owner = {}            # ParamSpec name -> index into learnable_params
        self._param_lr_set = {}
        self._param_decay_set = {}
        available = OrderedDict()
        seen_layer_names = set()
        memory_used = 0               # elements of all tops so far, as Caffe counts them
        budget = Budget(param.name, self.source)   # tops + parameters + workspace against the machine's memory
        for layer_param in param.layer:
            if not layer_param.HasField("phase"):
                layer_param.phase = self.phase
            if layer_param.name in seen_layer_names:
                raise ConfigError(f"{self.source}: two layers are named {layer_param.name!r}")
            seen_layer_names.add(layer_param.name)
            try:
                layer = create_layer(layer_param)
            except ModelFileError as e:        # blobs stored in the definition itself that do not fit
                raise ModelFileError(f"{self.source}: {e}") from None
            layer.base_dir = self.base_dir
            layer.rng = nc_random.new_generator()
            log.info("Creating Layer %s", layer_param.name)
            bottoms, tops = [], []
            need = []
            if len(layer_param.propagate_down) not in (0, len(layer_param.bottom)):
                raise ConfigError(f"layer {layer_param.name!r}: propagate_down must be given once per bottom "
                                  f"({len(layer_param.bottom)} bottoms, {len(layer_param.propagate_down)} given)")
            for j, name in enumerate(layer_param.bottom):
                if name not in self.blobs:
                    raise ConfigError(f"layer {layer_param.name!r} ({layer_param.type}): unknown bottom blob "
                                      f"{name!r} (bottom {j})")
                bottoms.append(self.blobs[name])
                log.info("%s <- %s", layer_param.name, name)
                ok = self.blob_need_backward[name]
                if len(layer_param.propagate_down):
                    ok = ok and layer_param.propagate_down[j]
                need.append(ok)
                available.pop(name, None)
            for j, name in enumerate(layer_param.top):
                if j < len(layer_param.bottom) and layer_param.bottom[j] == name:
                    tops.append(self.blobs[name])          # in place
                    log.info("%s -> %s (in-place)", layer_param.name, name)
                elif name in self.blobs:
                    raise ConfigError(f"layer {layer_param.name!r}: top blob {name!r} is produced by more "
                                      f"than one layer (only in-place reuse, top == bottom at the same "
                                      f"position, is allowed)")
                else:
                    blob = Blob()
                    self.blobs[name] = blob
                    tops.append(blob)
                    log.info("%s -> %s", layer_param.name, name)
                available[name] = True
                if layer_param.type == "Input":
                    self.inputs.append(name)
            try:
                layer.SetUp(bottoms, tops)
            except NumcaffeError as e:
                msg = str(e)
                prefix = f"layer {layer_param.name!r}"
                if prefix in msg:
                    raise
                raise type(e)(f"{prefix} ({layer_param.type}): {msg}") from None
            log.info("Setting up %s", layer_param.name)
            for j, top in enumerate(tops):
                log.info("Top shape: %s", _shape_string(top))
                if layer.loss(j):
                    log.info("    with loss weight %g", layer.loss(j))
                memory_used += top.count
            log.info("Memory required for data: %d", memory_used * 4)
            self.layers.append(layer)
            self._layer_names.append(layer_param.name)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self._bottom_names.append(list(layer_param.bottom))
            self._top_names.append(list(layer_param.top))
            layer_needs = any(need)
            layer_needs |= self._append_params(layer, layer_param)
            budget.add_layer(layer, tops, layer.blobs)
            for name in layer_param.top:
                self.blob_need_backward[name] = layer_needs
            self.bottom_need_backward.append(need)
            self.layer_need_backward.append(layer_needs)
        self._prune_backward(param)
        for layer, need in zip(self.layers, self.layer_need_backward):
            layer.backward_wanted = need     # Backward never runs a layer that needs none
        for i in range(len(self.layers) - 1, -1, -1):
            log.info("%s %s backward computation.", self._layer_names[i],
                     "needs" if self.layer_need_backward[i] else "does not need")
        self.outputs = sorted(available)   # Caffe keeps them in a std::set: sorted by name
        for name in self.outputs:
            log.info("This network produces output %s", name)
        self._layer_index = {n: i for i, n in enumerate(self._layer_names)}
        log.info("Network initialization done.")

    def _append_params(self, layer, layer_param):
        """Register the layer's learnable blobs; share by ParamSpec name. Returns param need."""
        if not layer.blobs:
            return False
        if len(layer_param.param) > len(layer.blobs):
            raise ConfigError(f"layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} parameter blob(s) "
                              f"but {len(layer_param.param)} param specs")
        self.params[layer.name] = layer.blobs
        any_need = False
        for j, blob in enumerate(layer.blobs):
            spec = layer_param.param[j] if j < len(layer_param.param) else caffe_pb2.ParamSpec()
            lr = spec.lr_mult
            name = spec.name
            if name and name in self._param_owner:
                k = self._param_owner[name]
                owner = self.learnable_params[k]
                _log().info("Sharing parameters '%s' owned by layer '%s', param index %d", name,
                            self.param_layer_names[k], self._param_index[k])
                strict = spec.share_mode == caffe_pb2.ParamSpec.STRICT
                if (owner.shape != blob.shape) if strict else (owner.count != blob.count):
                    raise ConfigError(f"layer {layer.name!r}: shared parameter {name!r} has shape {blob.shape} "
                                      f"here but {owner.shape} where it was first defined")
                blob.share_data(owner)
                blob.share_diff(owner)
                if spec.HasField("lr_mult"):
                    if k in self._param_lr_set and self._param_lr_set[k] != spec.lr_mult:
                        raise ConfigError(f"layer {layer.name!r}: shared parameter {name!r} has lr_mult "
                                          f"{spec.lr_mult} but {self._param_lr_set[k]} elsewhere")
                    self._param_lr_set[k] = spec.lr_mult
                    self.params_lr[k] = spec.lr_mult
                if spec.HasField("decay_mult"):
                    if k in self._param_decay_set and self._param_decay_set[k] != spec.decay_mult:
                        raise ConfigError(f"layer {layer.name!r}: shared parameter {name!r} has decay_mult "
                                          f"{spec.decay_mult} but {self._param_decay_set[k]} elsewhere")
                    self._param_decay_set[k] = spec.decay_mult
                    self.params_weight_decay[k] = spec.decay_mult
                lr = self.params_lr[k]
            else:
                k = len(self.learnable_params)
                self.learnable_params.append(blob)
                self.params_lr.append(spec.lr_mult)
                self.params_weight_decay.append(spec.decay_mult)
                self.param_display_names.append(name or f"{layer.name}[{j}]")
                self.param_layer_names.append(layer.name)
                self._param_index.append(j)
                if spec.HasField("lr_mult"):
                    self._param_lr_set[k] = spec.lr_mult
                if spec.HasField("decay_mult"):
                    self._param_decay_set[k] = spec.decay_mult
                if name:
                    self._param_owner[name] = k
            need = lr != 0
            layer.param_propagate_down[j] = need
            any_need |= need
        return any_need

    def _prune_backward(self, param):
        """Caffe's reverse pass: skip layers that lead to no loss or get no gradient."""
        under_loss, skip = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            contributes, skip_down = False, True
            for j, name in enumerate(self._top_names[i]):
                if layer.loss(j) or name in under_loss:
                    contributes = True
                if name not in skip:
                    skip_down = False
            if self.layer_need_backward[i] and skip_down:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_need_backward[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, name in enumerate(self._bottom_names[i]):
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip.add(name)
        if param.force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                for j, name in enumerate(self._bottom_names[i]):
                    self.bottom_need_backward[i][j] = (self.bottom_need_backward[i][j]
                                                       or layer.allow_force_backward(j))
                    self.blob_need_backward[name] = self.blob_need_backward.get(name) or \
                        self.bottom_need_backward[i][j]
                layer.param_propagate_down = [True] * len(layer.blobs)

    @property
    def layer_dict(self):
        """pycaffe's ``layer_dict``: {layer name: layer}, in layer order."""
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def top_names(self):
        """pycaffe's ``top_names``: {layer name: the names of its top blobs}, in layer order."""
        return OrderedDict((n, list(t)) for n, t in zip(self._layer_names, self._top_names))

    @property
    def bottom_names(self):
        """pycaffe's ``bottom_names``: {layer name: the names of its bottom blobs}, in layer order."""
        return OrderedDict((n, list(b)) for n, b in zip(self._layer_names, self._bottom_names))

    @property
    def _blob_names(self):
        """pycaffe's ``_blob_names``: the blob names in creation order (the keys of ``blobs``)."""
        return list(self.blobs)

    @property
    def _blobs(self):
        """pycaffe's ``_blobs``: the blobs in creation order."""
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self):
        """pycaffe's ``_blob_loss_weights``: the loss weight of each blob, in ``_blob_names`` order."""
        return list(self.blob_loss_weights.values())

    @property
    def _inputs(self):
        """pycaffe's ``_inputs``: the indices of the input blobs in ``_blob_names``."""
        names = self._blob_names
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        """pycaffe's ``_outputs``: the indices of the output blobs in ``_blob_names``."""
        names = self._blob_names
        return [names.index(n) for n in self.outputs]

    @property
    def blob_loss_weights(self):
        """pycaffe's ``blob_loss_weights``: {blob name: the loss weight its producer gives it (0: none)}."""
        weights = OrderedDict((name, 0.0) for name in self.blobs)
        for layer, names in zip(self.layers, self._top_names):
            for j, name in enumerate(names):
                weights[name] = float(layer.loss(j))
        return weights

    # -- running --------------------------------------------------------------------
    def ForwardFromTo(self, start, end):
        loss = 0.0
        for i in range(start, end + 1):
            for hook in self._before_forward:
                hook(i)
            loss += self.layers[i].Forward(self.bottom_vecs[i], self.top_vecs[i])
            if self.debug_info:
                self._forward_debug_info(i)
            for hook in self._after_forward:
                hook(i)
        return loss

    def Forward(self):
        """Run every layer forward; returns the total weighted loss."""
        return self.ForwardFromTo(0, len(self.layers) - 1)

    def BackwardFromTo(self, start, end):
        for i in range(start, end - 1, -1):
            for hook in self._before_backward:
                hook(i)
            if self.layer_need_backward[i]:
                self.layers[i].Backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])
                if self.debug_info:
                    self._backward_debug_info(i)
            for hook in self._after_backward:
                hook(i)

    # -- pycaffe's hooks: fn(layer index), run by every forward / backward, as Net::add_before_forward & co.
    def before_forward(self, fn):
        """Run ``fn(i)`` before layer ``i``'s forward, on every forward pass from now on."""
        self._before_forward.append(_hook(fn, "before_forward"))

    def after_forward(self, fn):
        """Run ``fn(i)`` after layer ``i``'s forward."""
        self._after_forward.append(_hook(fn, "after_forward"))

    def before_backward(self, fn):
        """Run ``fn(i)`` before layer ``i``'s backward (for every layer, as Caffe, needed or not)."""
        self._before_backward.append(_hook(fn, "before_backward"))

    def after_backward(self, fn):
        """Run ``fn(i)`` after layer ``i``'s backward."""
        self._after_backward.append(_hook(fn, "after_backward"))

    # -- debugging: Caffe's debug_info lines and a NaN/Inf locator ------------------------
    def _forward_debug_info(self, i):
        log = _log()
        name = self._layer_names[i]
        for blob_name, blob in zip(self._top_names[i], self.top_vecs[i]):
            log.info("    [Forward] Layer %s, top blob %s data: %.6g", name, blob_name, _abs_mean(blob.flat_data))
        for j, blob in enumerate(self.layers[i].blobs):
            log.info("    [Forward] Layer %s, param blob %d data: %.6g", name, j, _abs_mean(blob.flat_data))

    def _backward_debug_info(self, i):
        log = _log()
        name = self._layer_names[i]
        for j, (blob_name, blob) in enumerate(zip(self._bottom_names[i], self.bottom_vecs[i])):
            if self.bottom_need_backward[i][j]:
                log.info("    [Backward] Layer %s, bottom blob %s diff: %.6g", name, blob_name,
                         _abs_mean(blob.flat_diff))
        for j, blob in enumerate(self.layers[i].blobs):
            if self.layers[i].param_propagate_down[j]:
                log.info("    [Backward] Layer %s, param blob %d diff: %.6g", name, j, _abs_mean(blob.flat_diff))

    def update_debug_info(self):
        """Caffe's per-parameter [Update] lines (the solver calls this after an update)."""
        log = _log()
        for k, blob in enumerate(self.learnable_params):
            log.info("    [Update] Layer %s, param %s data: %.6g; diff: %.6g", self.param_layer_names[k],
                     self.param_display_names[k], _abs_mean(blob.flat_data), _abs_mean(blob.flat_diff))

    def locate_nonfinite(self):
        """Re-run forward and backward on the current inputs, checking every blob.

        Returns ``(phase, layer name, what)`` for the first NaN or Inf, e.g.
        ``("forward", "ip1", "top blob ip1 data")``, or None when all values are
        finite.  Layers without bottoms (data layers) are not re-run, so the
        batch already loaded is the one examined.
        """
        for i, layer in enumerate(self.layers):
            if not self.bottom_vecs[i]:
                continue
            layer.Forward(self.bottom_vecs[i], self.top_vecs[i])
            for blob_name, blob in zip(self._top_names[i], self.top_vecs[i]):
                if not np.isfinite(blob.flat_data).all():
                    return ("forward", layer.name, f"top blob {blob_name!r} data")
        for i in range(len(self.layers) - 1, -1, -1):
            if not self.layer_need_backward[i]:
                continue
            layer = self.layers[i]
            layer.Backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])
            for j, (blob_name, blob) in enumerate(zip(self._bottom_names[i], self.bottom_vecs[i])):
                if self.bottom_need_backward[i][j] and not np.isfinite(blob.flat_diff).all():
                    return ("backward", layer.name, f"bottom blob {blob_name!r} diff")
            for j, blob in enumerate(layer.blobs):
                if layer.param_propagate_down[j] and not np.isfinite(blob.flat_diff).all():
                    return ("backward", layer.name, f"parameter {j} diff")
        for i, layer in enumerate(self.layers):
            for j, blob in enumerate(layer.blobs):
                if not np.isfinite(blob.flat_data).all():
                    return ("weights", layer.name, f"parameter {j} data")
        return None

    def Backward(self):
        self.BackwardFromTo(len(self.layers) - 1, 0)

    def ForwardBackward(self):
        loss = self.Forward()
        self.Backward()
        return loss

    def Reshape(self):
        for layer, b, t in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.Reshape(b, t)

    def ClearParamDiffs(self):
        for p in self.learnable_params:
            p.flat_diff[...] = 0.0

    def clear_param_diffs(self):
        """pycaffe's name: zero every learnable parameter's diff (what the solver does each iteration)."""
        self.ClearParamDiffs()

    # -- pycaffe's API --------------------------------------------------------------------
    def layer_index(self, name):
        try:
            return self._layer_index[name]
        except KeyError:
            raise ConfigError(f"net has no layer {name!r}") from None

    def _set_blobs(self, values, what):
        for name, value in values.items():
            if name not in self.blobs:
                raise ConfigError(f"net has no blob {name!r} to set the {what} of")
            blob = self.blobs[name]
            value = np.asarray(value, dtype=np.float32)
            if value.shape != blob.shape:
                if what == "data" and name in self.inputs:
                    blob.reshape(value.shape)
                else:
                    raise ConfigError(f"blob {name!r} has shape {blob.shape}; the {what} given has "
                                      f"shape {value.shape}")
            getattr(blob, what)[...] = value

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Set inputs from ``kwargs``, run forward, return {output name: data array}."""
        self._set_blobs(kwargs, "data")
        s = 0 if start is None else self.layer_index(start)
        e = len(self.layers) - 1 if end is None else self.layer_index(end)
        self.ForwardFromTo(s, e)
        names = self.outputs if end is None else self._top_names[e]
        names = list(names) + [b for b in (blobs or ()) if b not in names]
        return {n: self.blobs[n].data for n in names}

    def _batches(self, arrays, what):
        """Split {blob name: array of N rows} into batches of the net's batch size.

        Yields ({name: rows}, rows used); the last batch is padded with zeros.  Returns nothing
        for an empty dict.  All arrays must have one number of rows and name blobs of the net.
        """
        arrays = {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}
        if not arrays:
            return
        for name in arrays:
            if name not in self.blobs:
                raise ConfigError(f"{what}: net has no blob {name!r} to set")
        total = {len(a) for a in arrays.values()}
        if len(total) != 1:
            raise ConfigError(f"{what} needs arrays with one number of rows; got "
                              f"{ {name: len(a) for name, a in arrays.items()} }")
        total = total.pop()
        batch = self.blobs[next(iter(arrays))].shape[0]
        for begin in range(0, total, batch):
            chunk = {}
            for name, a in arrays.items():
                rows = a[begin:begin + batch]
                if len(rows) < batch:
                    rows = np.concatenate([rows, np.zeros((batch - len(rows),) + rows.shape[1:], np.float32)])
                chunk[name] = rows
            yield chunk, min(batch, total - begin)

    @staticmethod
    def _gather(parts, rows_total, batch):
        """Join per-batch results; drop the padding rows of outputs that have one row per input."""
        out = {}
        for name, values in parts.items():
            joined = np.concatenate(values)
            out[name] = joined[:rows_total] if values[0].shape[0] == batch else joined
        return out

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's forward_all: run input arrays of any length through in batches of the net's batch size.

        The last batch is padded with zeros; returns {output (and ``blobs``) name: array} with one row per
        input row (a 0-d output, such as a loss, gives one value per batch).
        """
        if not kwargs:
            return {name: value.copy() for name, value in self.forward(blobs=blobs).items()}
        parts, total, batch = OrderedDict(), 0, None
        for chunk, used in self._batches(kwargs, "forward_all"):
            batch = len(next(iter(chunk.values())))
            total += used
            for name, value in self.forward(blobs=blobs, **chunk).items():
                parts.setdefault(name, []).append(np.array(value, copy=True, ndmin=1))
        return self._gather(parts, total, batch)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's forward_backward_all: forward and backward over arrays of any length, in batches.

        ``kwargs`` give input arrays (set as data before each forward) and output arrays (set as diffs
        before each backward); a side given none runs on what the net holds.  Returns two dicts,
        {output (and ``blobs``) name: data} and {input (and ``diffs``) name: diff}, one row per row
        given (padding dropped), as :meth:`forward_all` does.
        """
        inputs = {n: v for n, v in kwargs.items() if n in self.inputs}
        outputs = {n: v for n, v in kwargs.items() if n in self.outputs}
        other = sorted(set(kwargs) - set(inputs) - set(outputs))
        if other:
            raise ConfigError(f"forward_backward_all: {', '.join(map(repr, other))} "
                              f"{'is' if len(other) == 1 else 'are'} neither an input ({self.inputs}) "
                              f"nor an output ({self.outputs}) of the net")
        forward_batches = list(self._batches(inputs, "forward_backward_all"))
        backward_batches = list(self._batches(outputs, "forward_backward_all"))
        if forward_batches and backward_batches and len(forward_batches) != len(backward_batches):
            raise ConfigError(f"forward_backward_all: the inputs make {len(forward_batches)} batches but "
                              f"the output diffs {len(backward_batches)}; give both the same number of rows")
        steps = max(len(forward_batches), len(backward_batches), 1)
        out_parts, diff_parts = OrderedDict(), OrderedDict()
        total, batch = 0, None
        for k in range(steps):
            fb, used = forward_batches[k] if k < len(forward_batches) else ({}, None)
            bb, used_b = backward_batches[k] if k < len(backward_batches) else ({}, None)
            used = used if used is not None else used_b
            if used is not None:
                total += used
                batch = len(next(iter((fb or bb).values())))
            for name, value in self.forward(blobs=blobs, **fb).items():
                out_parts.setdefault(name, []).append(np.array(value, copy=True, ndmin=1))
            for name, value in self.backward(diffs=diffs, **bb).items():
                diff_parts.setdefault(name, []).append(np.array(value, copy=True, ndmin=1))
        if batch is None:   # nothing given: one pass over what the net holds
            return ({n: v[0] for n, v in out_parts.items()}, {n: v[0] for n, v in diff_parts.items()})
        return self._gather(out_parts, total, batch), self._gather(diff_parts, total, batch)

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Set output diffs from ``kwargs``, run backward, return {input name: diff array}."""
        self._set_blobs(kwargs, "diff")
        s = len(self.layers) - 1 if start is None else self.layer_index(start)
        e = 0 if end is None else self.layer_index(end)
        self.BackwardFromTo(s, e)
        names = self.inputs if end is None else self._bottom_names[e]
        names = list(names) + [b for b in (diffs or ()) if b not in names]
        return {n: self.blobs[n].diff for n in names}

    def reshape(self):
        self.Reshape()

    def set_input_arrays(self, data, labels, layer_idx=0):
        """pycaffe: hand (N, C, H, W) data and N labels to the MemoryData layer at ``layer_idx``."""
        layer = self.layers[layer_idx]
        if layer.type != "MemoryData":
            raise ConfigError(f"set_input_arrays needs a MemoryData layer; layer {layer_idx} "
                              f"({layer.name!r}) is {layer.type}")
        layer.reset(data, labels)

    # -- weights ---------------------------------------------------------------------------------
    def share_trained_layers_with(self, other):
        """Use ``other``'s parameter data (Caffe's ShareTrainedLayersWith), by layer name."""
        for layer in self.layers:
            if layer.name not in other.params or not layer.blobs:
                continue
            src = other.params[layer.name]
            if len(src) != len(layer.blobs):
                raise ConfigError(f"layer {layer.name!r}: {len(layer.blobs)} parameter blobs here, "
                                  f"{len(src)} in the net it shares with")
            for mine, theirs in zip(layer.blobs, src):
                if mine.shape != theirs.shape:
                    raise ConfigError(f"layer {layer.name!r}: cannot share a parameter of shape "
                                      f"{theirs.shape} into one of shape {mine.shape}")
                mine.share_data(theirs)

    def share_with(self, other):
        """pycaffe's ``share_with``: use ``other``'s trained parameters, by layer name (no copy)."""
        self.share_trained_layers_with(other)

    def save_hdf5(self, filename):
        """pycaffe's ``save_hdf5``: the weights in Caffe's HDF5 layout (Net::ToHDF5), whatever the extension."""
        from numcaffe.net.hdf5 import save_net_hdf5
        save_net_hdf5(self, os.fspath(filename))

    def load_hdf5(self, filename):
        """pycaffe's ``load_hdf5``: copy weights by layer name from a Caffe HDF5 weights file."""
        from numcaffe.net.hdf5 import load_net_hdf5
        return load_net_hdf5(self, os.fspath(filename))

    def copy_from(self, source):
        """Copy weights by layer name from a .caffemodel (binary or HDF5) or a NetParameter."""
        if isinstance(source, caffe_pb2.NetParameter):
            param, where = source, "<net>"
        else:
            where = os.fspath(source)
            if where.endswith((".h5", ".hdf5")):
                from numcaffe.net.hdf5 import load_net_hdf5
                return load_net_hdf5(self, where)
            raw = read_bytes(where, "weights file")
            param = caffe_pb2.NetParameter()
            parse_binary(raw, param, where)
            if not len(param.layer) and not len(param.layers):
                raise ModelFileError(f"{where}: holds no layers; is it a .caffemodel?")
        sources = [(l.name, l.blobs) for l in param.layer] + [(l.name, l.blobs) for l in param.layers]
        copied = 0
        log = _log()
        for name, blobs in sources:
            if name not in self._layer_index:
                log.info("Ignoring source layer %s", name)   # as Caffe: renamed layers start afresh
                continue
            layer = self.layers[self._layer_index[name]]
            if len(blobs) == 0:
                continue
            if len(blobs) != len(layer.blobs):
                raise ModelFileError(f"{where}: layer {name!r} has {len(blobs)} parameter blob(s) in the file "
                                     f"but {len(layer.blobs)} in the net")
            for j, (bp, blob) in enumerate(zip(blobs, layer.blobs)):
                if not shapes_match(bp, blob.shape):
                    raise ModelFileError(f"{where}: layer {name!r} parameter {j}: the file has shape "
                                         f"{proto_shape(bp)}, the net expects {blob.shape}")
                try:
                    blob.data[...] = proto_array(bp, blob.shape)
                except ShapeError as e:        # the shape fits but not the number of values under it
                    raise ModelFileError(f"{where}: layer {name!r} parameter {j}: {e}") from None
            copied += 1
        if sources and not any(name in self._layer_index for name, _ in sources):
            log.warning("%s: no layer of this net has a name that is in the file; nothing was copied", where)
        return copied

    def to_proto(self, write_diff=False):
        """The net and its weights as a NetParameter, as Caffe's Net::ToProto writes it."""
        out = caffe_pb2.NetParameter()
        out.name = self.name
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.layer_param)
            lp.ClearField("blobs")
            for blob in layer.blobs:
                blob.to_proto(lp.blobs.add(), write_diff)
        return out

    def save(self, path):
        """Write the weights as a binary .caffemodel (or HDF5 for .h5), atomically."""
        path = os.fspath(path)
        if path.endswith((".h5", ".hdf5")):
            from numcaffe.net.hdf5 import save_net_hdf5
            return save_net_hdf5(self, path)
        from numcaffe.net.io import atomic_write
        atomic_write(path, self.to_proto().SerializeToString())

    # -- state for exact resume ------------------------------------------------------------------
    def get_state(self):
        return {name: layer.get_state() for name, layer in zip(self._layer_names, self.layers)}

    def set_state(self, state):
        for name, layer in zip(self._layer_names, self.layers):
            if name in state:
                layer.set_state(state[name])

    def __repr__(self):
        return f"Net({self.name!r}, {len(self.layers)} layers)"


def _hook(fn, what):
    if not callable(fn):
        raise ConfigError(f"net.{what}() needs a callable taking the layer index; got {fn!r}")
    return fn


def _abs_mean(values):
    return float(np.abs(values).mean()) if values.size else 0.0


def _shape_string(blob):
    """Caffe's Blob::shape_string: the axes, then the count in parentheses (``64 1 28 28 (50176)``)."""
    return "".join(f"{d} " for d in blob.shape) + f"({blob.count})"


def _log():
    from numcaffe.net.log import get_logger
    return get_logger("numcaffe.net")


def shapes_match(proto, shape):
    """Caffe's Blob::ShapeEquals: the legacy 4-D form compares left-padded with ones."""
    if proto.HasField("shape"):
        return tuple(proto.shape.dim) == tuple(shape)
    if len(shape) > 4:
        return False
    legacy = (1,) * (4 - len(shape)) + tuple(shape)
    return legacy == (proto.num, proto.channels, proto.height, proto.width)
