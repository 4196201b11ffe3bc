"""Reading and writing solver states (.solverstate and .solverstate.h5).

A ``SolverState`` holds what Caffe records: ``iter``, ``learned_net`` (the
weights file written with it), ``history`` (one blob per history array, in the
solver's order) and ``current_step``.  numcaffe adds ``numcaffe_state``: JSON
with everything else a run needs to continue exactly (every layer's random
state and data position, the smoothed-loss window, the plateau and
early-stopping counters).  Caffe ignores the unknown field, and a state
written by Caffe, lacking it, still restores what Caffe restores.

HDF5 states use Caffe's layout (``iter``, ``learned_net``, ``current_step``
datasets and a ``history`` group of datasets ``0``, ``1``, ...) plus a
``numcaffe_state`` dataset of the JSON's bytes.
"""
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from numcaffe.net.blob import proto_array, proto_shape
from numcaffe.net.config import parse_binary, read_bytes
from numcaffe.net.errors import ModelFileError
from numcaffe.net.io import atomic_write
from numcaffe.net.proto import caffe_pb2

STATE_FORMAT = "numcaffe-solver-state"
STATE_VERSION = 1


@dataclass
class SolverStateData:
    iter: int
    learned_net: Optional[str]
    history: List[np.ndarray]
    current_step: int = 0
    extra: Optional[dict] = None          # the decoded numcaffe_state, None for Caffe's own files
    path: str = ""
    history_shapes: List[tuple] = field(default_factory=list)


def _to_json_value(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"state value of type {type(o).__name__} cannot be saved in a solver state")


def encode_extra(extra):
    extra = dict(extra, format=STATE_FORMAT, version=STATE_VERSION)
    return json.dumps(extra, default=_to_json_value, separators=(",", ":"), allow_nan=True).encode("utf-8")


def decode_extra(raw, path):
    try:
        extra = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(f"{path}: its numcaffe_state is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(extra, dict) or extra.get("format") != STATE_FORMAT:
        raise ModelFileError(f"{path}: its numcaffe_state is not a numcaffe solver state")
    if extra.get("version", 0) > STATE_VERSION:
        raise ModelFileError(f"{path}: written by a newer numcaffe (state version {extra.get('version')}, "
                             f"this one reads up to {STATE_VERSION})")
    return extra


# ---------------------------------------------------------------- binary proto


def write_binary(path, it, learned_net, history, current_step, extra):
    state = caffe_pb2.SolverState()
    state.iter = it
    state.learned_net = learned_net
    state.current_step = current_step
    for h in history:
        bp = state.history.add()
        bp.shape.dim.extend(h.shape)
        bp.data.extend(np.asarray(h, dtype=np.float32).ravel().tolist())
    if extra is not None:
        state.numcaffe_state = encode_extra(extra)
    atomic_write(path, state.SerializeToString())


def read_binary(path):
    raw = read_bytes(path, "solver state file")
    state = caffe_pb2.SolverState()
    parse_binary(raw, state, path)
    if not state.HasField("iter"):
        raise ModelFileError(f"{path}: holds no iteration count; is it a .solverstate?")
    history, shapes = [], []
    for i, bp in enumerate(state.history):
        try:
            shape = proto_shape(bp)
            history.append(proto_array(bp, shape))
        except Exception as e:  # ShapeError and friends: a corrupt blob
            raise ModelFileError(f"{path}: history blob {i} is corrupt ({e})") from None
        shapes.append(tuple(shape))
    extra = decode_extra(state.numcaffe_state, path) if state.HasField("numcaffe_state") else None
    return SolverStateData(iter=state.iter, learned_net=state.learned_net if state.HasField("learned_net") else None,
                           history=history, current_step=state.current_step, extra=extra, path=path,
                           history_shapes=shapes)


# ---------------------------------------------------------------- HDF5


def write_hdf5(path, it, learned_net, history, current_step, extra):
    from numcaffe.net.hdf5 import atomic_h5_file
    with atomic_h5_file(path) as f:
        f.create_dataset("iter", data=np.array([it], dtype=np.int32))
        f.create_dataset("learned_net", data=np.bytes_(learned_net.encode("utf-8")))
        f.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        group = f.create_group("history")
        for i, h in enumerate(history):
            group.create_dataset(str(i), data=np.asarray(h, dtype=np.float32))
        if extra is not None:
            f.create_dataset("numcaffe_state", data=np.frombuffer(encode_extra(extra), dtype=np.uint8))


def _h5_int(f, name, path):
    if name not in f:
        raise ModelFileError(f"{path}: has no {name!r} dataset; is it a Caffe HDF5 solver state?")
    return int(np.asarray(f[name][()]).reshape(-1)[0])


def read_hdf5(path):
    from numcaffe.net.hdf5 import open_h5_for_reading
    with open_h5_for_reading(path, "solver state file") as f:
        it = _h5_int(f, "iter", path)
        current_step = _h5_int(f, "current_step", path) if "current_step" in f else 0
        learned_net = None
        if "learned_net" in f:
            v = f["learned_net"][()]
            v = v.reshape(-1)[0] if isinstance(v, np.ndarray) else v
            learned_net = v.decode("utf-8") if isinstance(v, bytes) else str(v)
        if "history" not in f:
            raise ModelFileError(f"{path}: has no 'history' group; is it a Caffe HDF5 solver state?")
        group = f["history"]
        history = []
        for i in range(len(group)):
            if str(i) not in group:
                raise ModelFileError(f"{path}: history dataset {i} is missing")
            history.append(np.asarray(group[str(i)][()], dtype=np.float32))
        extra = decode_extra(np.asarray(f["numcaffe_state"][()]).tobytes(), path) if "numcaffe_state" in f else None
    return SolverStateData(iter=it, learned_net=learned_net, history=history, current_step=current_step,
                           extra=extra, path=path, history_shapes=[h.shape for h in history])


def read_state(path):
    """Read a .solverstate (binary) or .solverstate.h5 (HDF5, by the ``.h5`` ending as Caffe decides)."""
    path = os.fspath(path)
    return read_hdf5(path) if path.endswith(".h5") else read_binary(path)


def write_state(path, hdf5, **kw):
    (write_hdf5 if hdf5 else write_binary)(path, **kw)
