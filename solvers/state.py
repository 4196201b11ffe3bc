"""Reading and writing solver states (.solverstate and .solverstate.h5).

A ``SolverState`` holds what Caffe records: ``iter``, ``learned_net`` (the
weights file written with it), ``history`` (one blob per history array, in the
solver's order) and ``current_step``.  numcaffe adds ``numcaffe_state``: JSON
with everything else a run needs to continue exactly (every layer's random
state and data position, the smoothed-loss window, the plateau and
early-stopping counters).  Caffe ignores the unknown field, and a state
written by Caffe, lacking it, still restores what Caffe restores.

numcaffe also seals what it writes, so a damaged or mismatched pair of files is
an error at resume rather than a run that quietly diverges later:

* ``learned_net_sha256``: the SHA-256 (64 hex digits, as ``sha256sum`` prints
  it) of the weights file's bytes as written with the state.  At resume the
  file ``learned_net`` names must have it, or it is not the one written with
  this state (replaced, overwritten by another run with the same
  snapshot_prefix, or corrupt).
* ``state_sha256``: the SHA-256 of the state itself, i.e. of the SolverState
  message serialized deterministically with this one field cleared.  A flipped
  byte that protobuf still parses changes the content and so the digest.

A state without them (Caffe's own, or numcaffe's from before they existed)
loads as before; the JSON says ``"sealed": true`` when they were written, so
one cannot be lost without notice.  ``--weights`` reads a weights file alone
and checks nothing: only a resume has a state to compare with.

HDF5 states use Caffe's layout (``iter``, ``learned_net``, ``current_step``
datasets and a ``history`` group of datasets ``0``, ``1``, ...) plus a
``numcaffe_state`` dataset of the JSON's bytes and ``learned_net_sha256`` and
``state_sha256`` string datasets.  There the state's digest is taken over the
values of its datasets (:func:`_hdf5_digest`), as an HDF5 file's bytes are not
a function of its content alone.
"""
import hashlib
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
    learned_net_sha256: Optional[str] = None     # 64 hex digits; None: the state does not say (Caffe's files)


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
    extra = dict(extra, format=STATE_FORMAT, version=STATE_VERSION, sealed=True)
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


# ---------------------------------------------------------------- checksums


def file_sha256(path):
    """The SHA-256 of a file's bytes (64 hex digits), read in 1 MiB pieces."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    return h.hexdigest()


def _corrupt(path, written, actual):
    return ModelFileError(f"{path}: the solver state is corrupt: its content does not match the SHA-256 written "
                          f"with it (written {written[:12]}, now {actual[:12]}); resume from another "
                          f"snapshot")


def _check_sealed(extra, sealed, path):
    if extra is not None and extra.get("sealed") and not sealed:
        raise ModelFileError(f"{path}: the solver state is corrupt: it was written with a SHA-256 of its content, "
                             f"which is missing now; resume from another snapshot")


def check_learned_net(st, model_path):
    """The weights file found for ``st.learned_net`` must be the one written with the state."""
    if st.learned_net_sha256 is None:
        return
    actual = file_sha256(model_path)
    if actual != st.learned_net_sha256:
        raise ModelFileError(f"{st.path}: its weights file {model_path} is not the one written with it (SHA-256 "
                             f"{st.learned_net_sha256[:12]} in the state, {actual[:12]} in the file): "
                             f"the file was replaced or overwritten (another run with the same snapshot_prefix?) "
                             f"or is corrupt")


def _history_label(i, history_names):
    return f" ({history_names[i]})" if history_names and i < len(history_names) else ""


# ---------------------------------------------------------------- binary proto


def _message_digest(state):
    """SHA-256 (hex) of ``state`` serialized deterministically without ``state_sha256``, which it clears."""
    state.ClearField("state_sha256")
    return hashlib.sha256(state.SerializeToString(deterministic=True)).hexdigest()


def _text(state, name, path):
    """A string field, or None when unset.  Python's protobuf hands a proto2 string that is not
    UTF-8 back as bytes: a damaged file."""
    if not state.HasField(name):
        return None
    value = getattr(state, name)
    if isinstance(value, bytes):
        raise ModelFileError(f"{path}: its {name} is not UTF-8 text ({value[:40]!r}); the file is corrupt")
    return value


def write_binary(path, it, learned_net, history, current_step, extra, learned_net_sha256=None):
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
    if learned_net_sha256 is not None:
        state.learned_net_sha256 = learned_net_sha256
    state.state_sha256 = _message_digest(state)
    atomic_write(path, state.SerializeToString(deterministic=True))


def read_binary(path, history_names=None):
    raw = read_bytes(path, "solver state file")
    state = caffe_pb2.SolverState()
    parse_binary(raw, state, path)
    sealed = state.HasField("state_sha256")
    if sealed:
        written = state.state_sha256
        if isinstance(written, bytes):           # a damaged digest (not UTF-8): it cannot match
            written = written.decode("utf-8", "replace")
        actual = _message_digest(state)
        if actual != written:
            raise _corrupt(path, written, actual)
    if not state.HasField("iter"):
        raise ModelFileError(f"{path}: holds no iteration count; is it a .solverstate?")
    history, shapes = [], []
    for i, bp in enumerate(state.history):
        try:
            shape = proto_shape(bp)
            history.append(proto_array(bp, shape))
        except Exception as e:  # ShapeError and friends: a corrupt blob
            raise ModelFileError(f"{path}: history blob {i}{_history_label(i, history_names)} is corrupt "
                                 f"({e})") from None
        shapes.append(tuple(shape))
    extra = decode_extra(state.numcaffe_state, path) if state.HasField("numcaffe_state") else None
    _check_sealed(extra, sealed, path)
    return SolverStateData(iter=state.iter, learned_net=_text(state, "learned_net", path), history=history,
                           current_step=state.current_step, extra=extra, path=path, history_shapes=shapes,
                           learned_net_sha256=_text(state, "learned_net_sha256", path))


# ---------------------------------------------------------------- HDF5


def _hdf5_digest(it, learned_net, current_step, history, extra_bytes, learned_net_sha256):
    """SHA-256 (hex) over an HDF5 state's values: each as name, length, bytes (history with its shape)."""
    h = hashlib.sha256()

    def put(name, data):
        h.update(f"{name}:{len(data)}:".encode("utf-8"))
        h.update(data)

    put("iter", str(int(it)).encode())
    put("learned_net", (learned_net or "").encode("utf-8"))
    put("current_step", str(int(current_step)).encode())
    for i, a in enumerate(history):
        a = np.ascontiguousarray(a, dtype="<f4")
        put(f"history/{i}", repr(tuple(a.shape)).encode() + a.tobytes())
    put("numcaffe_state", bytes(extra_bytes or b""))
    put("learned_net_sha256", (learned_net_sha256 or "").encode("ascii"))
    return h.hexdigest()




def write_hdf5(path, it, learned_net, history, current_step, extra, learned_net_sha256=None):
    from numcaffe.net.hdf5 import atomic_h5_file
    extra_bytes = encode_extra(extra) if extra is not None else None
    with atomic_h5_file(path) as f:
        f.create_dataset("iter", data=np.array([it], dtype=np.int32))
        f.create_dataset("learned_net", data=np.bytes_(learned_net.encode("utf-8")))
        f.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        group = f.create_group("history")
        for i, h in enumerate(history):
            group.create_dataset(str(i), data=np.asarray(h, dtype=np.float32))
        if extra_bytes is not None:
            f.create_dataset("numcaffe_state", data=np.frombuffer(extra_bytes, dtype=np.uint8))
        if learned_net_sha256 is not None:
            f.create_dataset("learned_net_sha256", data=np.bytes_(learned_net_sha256.encode("ascii")))
        f.create_dataset("state_sha256", data=np.bytes_(_hdf5_digest(
            it, learned_net, current_step, [np.asarray(h, dtype=np.float32) for h in history], extra_bytes,
            learned_net_sha256).encode("ascii")))


def _h5_int(f, name, path):
    if name not in f:
        raise ModelFileError(f"{path}: has no {name!r} dataset; is it a Caffe HDF5 solver state?")
    return int(np.asarray(f[name][()]).reshape(-1)[0])


def _h5_raw(f, name):
    return np.asarray(f[name][()]).tobytes() if name in f else None


def _h5_text(f, name):
    return _h5_raw(f, name).decode("ascii") if name in f else None


def read_hdf5(path, history_names=None):
    from numcaffe.net.hdf5 import open_h5_for_reading
    with open_h5_for_reading(path, "solver state file") as f:
        try:
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
                    raise ModelFileError(f"{path}: history dataset {i}{_history_label(i, history_names)} "
                                         f"is missing")
                history.append(np.asarray(group[str(i)][()], dtype=np.float32))
            extra_bytes = _h5_raw(f, "numcaffe_state")
            net_sha = _h5_text(f, "learned_net_sha256")
            written = _h5_text(f, "state_sha256")
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{path}: not a readable HDF5 solver state ({e}); the file is corrupt") from None
    if written is not None:
        actual = _hdf5_digest(it, learned_net, current_step, history, extra_bytes, net_sha)
        if actual != written:
            raise _corrupt(path, written, actual)
    extra = decode_extra(extra_bytes, path) if extra_bytes is not None else None
    _check_sealed(extra, written is not None, path)
    return SolverStateData(iter=it, learned_net=learned_net, history=history, current_step=current_step,
                           extra=extra, path=path, history_shapes=[h.shape for h in history],
                           learned_net_sha256=net_sha)


def read_state(path, history_names=None):
    """Read a .solverstate (binary) or .solverstate.h5 (HDF5, by the ``.h5`` ending as Caffe decides).

    A state whose own digest does not match, or lacks it though its JSON says it was sealed, is a
    ModelFileError naming the file; ``history_names`` (the solver's, for its parameters) go into the
    message about a damaged history blob."""
    path = os.fspath(path)
    return (read_hdf5 if path.endswith(".h5") else read_binary)(path, history_names)


def write_state(path, hdf5, **kw):
    (write_hdf5 if hdf5 else write_binary)(path, **kw)
