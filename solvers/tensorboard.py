"""TensorBoard event files of a training run: ``numcaffe train --tensorboard DIR``.

A :class:`TensorBoardWriter` is a solver listener (solvers/listener.py) that
writes, through tensorboardX, what the log shows at the iteration it shows it
(the step of every point is the solver's iteration):

================================  ====================================================
``train/smoothed_loss``           the ``loss = L`` of ``Iteration N (...), loss = L``
``train/<output>``                each ``Train net output`` (``<output>/<k>`` for the
                                  k-th element of a blob with several)
``test/<output>``                 each ``Test net output`` of test net #0
``test/net<i>/<output>``          the same for test net #i, i >= 1
``solver/lr``                     ``Iteration N, lr = R``
``solver/iter_per_s``             the ``X iter/s`` of the display line (not where the
                                  line shows 0 iter/s: a display that timed no
                                  iterations, the first of a run)
``params/<layer>/<j>``            histogram of the layer's j-th parameter blob (Caffe's
``gradients/<layer>/<j>``         ``net.params[layer][j]``) and of its gradient, every
                                  ``histograms`` iterations (0: never)
================================  ====================================================

plus the train net's graph, once: one node per layer (op: the layer type),
edges from the layer that last wrote each bottom blob (in-place layers
included; the Split layers the net inserts are left out), each node carrying
its top blobs' shapes, bottom and top names and its parameters.  tensorboardX
replaces characters other than letters, digits, ``_ - . /`` in a tag by ``_``.

A gradient histogram shows the parameter's diff as the update will use it:
after backward, divided by ``iter_size``, before weight decay and the update
rule (an iteration's mean gradient).  A shared parameter appears once, under
the layer that owns it.  The histograms have TensorBoard's buckets (0 and
+-1e-12 * 1.1^i, as tensorboardX's ``add_histogram``); :func:`bucket_counts`
counts them in one pass where numpy's histogram sorts (LeNet's 431,080
parameters and their gradients: 175 ms per histogram iteration against 489 ms
for ``add_histogram``, medians of 7 interleaved rounds on 2 cores at load 11).

Resuming: the writer opens its event file at the first thing it is told, and
marks it to supersede every step from that iteration on (tensorboardX's
``purge_step``: TensorBoard hides the points an earlier file has at those
steps).  A run resumed from ``X_iter_500.solverstate`` into the same directory
therefore continues the curves at 500, without a second copy of the steps the
stopped run wrote after its snapshot, and a new run from iteration 0 into a
used directory replaces what was there.  (TensorBoard's fast loader ignores
the mark and drops a tag's later points only when a newer file writes that
tag: the same curves as long as the resumed run writes the same tags.)  Keep runs to compare in sibling
directories (``--tensorboard runs/a``, ``runs/b``, ``tensorboard --logdir runs``).

Only the process that logs should write: a listener is added where the log
is written (``numcaffe train`` adds it when ``--tensorboard`` is given).
"""
import math
import os
import sys
import tempfile
import time

import numpy as np
from numba import njit

from numcaffe.net.errors import ConfigError, NumcaffeError
from numcaffe.solvers.listener import SolverListener


@njit(cache=True)
def bucket_counts(values, edges, counts):
    """counts[k] += #{v : edges[k] <= v < edges[k + 1]} (the last bucket closed), as np.histogram(values, edges).

    ``edges`` are TensorBoard's: 0 at index m = (len - 1) / 2, e_i ~ 1e-12 * 1.1^i
    at m + 1 + i and -e_i at m - 1 - i.  i = floor(log_1.1(|v| / 1e-12)) guesses
    the bucket, the edges themselves settle it.  Returns (min, max, sum, sum of
    squares) of all values, in float64.
    """
    n = edges.size - 1
    m = n // 2
    log_base = math.log(1.1)
    lo, hi, total, squares = math.inf, -math.inf, 0.0, 0.0
    for j in range(values.size):
        v = np.float64(values[j])
        lo = min(lo, v)
        hi = max(hi, v)
        total += v
        squares += v * v
        if not (edges[0] <= v <= edges[n]):
            continue
        if v > 0.0:
            k = m + 1 + int(math.floor(math.log(v * 1e12) / log_base)) if v >= edges[m + 1] else m
        elif v < 0.0:
            k = m - 2 - int(math.floor(math.log(-v * 1e12) / log_base)) if v < edges[m - 1] else m - 1
        else:
            k = m
        k = min(max(k, 0), n - 1)
        while k > 0 and v < edges[k]:
            k -= 1
        while k < n - 1 and v >= edges[k + 1]:
            k += 1
        counts[k] += 1
    return lo, hi, total, squares


def histogram(values, edges):
    """The fields of tensorboardX's ``add_histogram_raw`` for ``values`` over ``edges``, trimmed as its
    ``add_histogram`` trims them (one empty bucket left of the first full one); None if no value is in range."""
    values = np.ascontiguousarray(values).reshape(-1)
    counts = np.zeros(edges.size - 1, dtype=np.int64)
    lo, hi, total, squares = bucket_counts(values, edges, counts)
    full = np.flatnonzero(counts)
    if not full.size:
        return None
    start, end = int(full[0]), int(full[-1]) + 1
    kept = counts[start - 1:end] if start > 0 else np.concatenate([[0], counts[:end]])
    return dict(min=lo, max=hi, num=values.size, sum=total, sum_squares=squares,
                bucket_limits=edges[start:end + 1].tolist(), bucket_counts=kept.astype(np.float64).tolist())


def require_tensorboardx():
    """tensorboardX's SummaryWriter, or one line saying what to install.

    tensorboardX's writer imports torch, where it is installed, only to name
    ``torch.Tensor`` in its type hints: 190 MB more resident memory and 1.1 ->
    17 s of start-up (2 cores at load 12).  Unless torch is loaded already, it
    is hidden while tensorboardX loads (and only then).
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None          # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise NumcaffeError("writing TensorBoard event files needs tensorboardX: "
                            "pip install 'numcaffe[tensorboard]'") from None
    finally:
        if hide and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


def output_tags(prefix, outputs):
    """``(tag, value)`` for a net's ``(name, value)`` outputs: ``prefix/name``, or ``prefix/name/k`` per element."""
    counts = {}
    for name, _ in outputs:
        counts[name] = counts.get(name, 0) + 1
    seen = {}
    tags = []
    for name, value in outputs:
        k = seen.get(name, 0)
        seen[name] = k + 1
        tags.append((f"{prefix}/{name}" if counts[name] == 1 else f"{prefix}/{name}/{k}", value))
    return tags


def test_prefix(test_net_id):
    return "test" if test_net_id == 0 else f"test/net{test_net_id}"


def param_blobs(net):
    """``(layer name, j, blob)`` for each learnable parameter, once (shared ones under their owner)."""
    out = []
    for blob, layer_name in zip(net.learnable_params, net.param_layer_names):
        j = next(i for i, b in enumerate(net.params[layer_name]) if b is blob)
        out.append((layer_name, j, blob))
    return out


def _is_inserted_split(layer):
    return layer.type == "Split" and layer.layer_param.name.endswith("_split")


def net_graph(net):
    """The net as a TensorFlow GraphDef (tensorboardX's copy of the proto), for TensorBoard's graph view."""
    from google.protobuf import text_format
    from tensorboardX.proto.attr_value_pb2 import AttrValue
    from tensorboardX.proto.graph_pb2 import GraphDef
    from tensorboardX.proto.node_def_pb2 import NodeDef
    from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboardX.proto.versions_pb2 import VersionDef

    def shape(blob):
        return TensorShapeProto(dim=[TensorShapeProto.Dim(size=int(d)) for d in blob.shape])

    def strings(names):
        return AttrValue(list=AttrValue.ListValue(s=[n.encode() for n in names]))

    producer = {}                 # blob name -> "node" or "node:k", the last layer that wrote it
    nodes = []
    for (name, layer), bottoms, tops, top_blobs in zip(net.layer_dict.items(), net.bottom_names.values(),
                                                       net.top_names.values(), net.top_vecs):
        inputs = [producer[b] for b in bottoms if b in producer]
        if _is_inserted_split(layer):
            for t in tops:
                producer[t] = inputs[0]
            continue
        settings = caffe_layer_settings(layer.layer_param, text_format)
        attr = {"_output_shapes": AttrValue(list=AttrValue.ListValue(shape=[shape(b) for b in top_blobs])),
                "bottom": strings(bottoms), "top": strings(tops)}
        if settings:
            attr["parameters"] = AttrValue(s=settings.encode())
        if layer.blobs:
            attr["param_shapes"] = AttrValue(list=AttrValue.ListValue(shape=[shape(b) for b in layer.blobs]))
        nodes.append(NodeDef(name=name, op=layer.type, input=inputs, attr=attr))
        for k, t in enumerate(tops):
            producer[t] = name if k == 0 else f"{name}:{k}"
    return GraphDef(node=nodes, versions=VersionDef(producer=22))


def caffe_layer_settings(layer_param, text_format):
    """The layer's settings in prototxt, without what the graph shows already (name, type, blobs, phase)."""
    from numcaffe.net.proto import caffe_pb2
    p = caffe_pb2.LayerParameter()
    p.CopyFrom(layer_param)
    for field in ("name", "type", "bottom", "top", "phase", "blobs", "include", "exclude"):
        p.ClearField(field)
    return text_format.MessageToString(p, as_one_line=True)


def check_logdir(logdir):
    """Make ``logdir`` if missing and write a file into it: a directory that cannot be made or written
    (another user's, a read-only mount) fails now, in one line, not at the first display of a long run."""
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the TensorBoard directory {logdir}: {e.strerror or e}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=logdir, prefix=".numcaffe-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write into the TensorBoard directory {logdir}: {e.strerror or e}") from None


class TensorBoardWriter(SolverListener):
    """Writes a run's curves, histograms and graph into ``logdir`` (see the module doc).

    ``histograms``: every how many iterations to write the parameter and
    gradient histograms (0, the default: never).  ``close()`` when done (or
    let the interpreter's exit do it); ``flush()`` writes what is pending.
    """

    def __init__(self, logdir, histograms=0, flush_secs=10):
        self.SummaryWriter = require_tensorboardx()     # fail now, not at the first display
        histograms = int(histograms)
        if histograms < 0:
            raise ConfigError(f"the TensorBoard histogram interval must be >= 0 (got {histograms})")
        self.logdir = os.fspath(logdir)
        check_logdir(self.logdir)
        self.histograms = histograms
        self.flush_secs = flush_secs
        self.writer = None

    def _open(self, solver):
        if self.writer is None:
            # Event file names carry the second; the suffix orders two files of one second.
            suffix = f".{time.time_ns() % 10**9:09d}.{os.getpid()}.numcaffe"
            self.writer = self.SummaryWriter(self.logdir, purge_step=solver.iter, flush_secs=self.flush_secs,
                                             filename_suffix=suffix)
            from tensorboardX.proto.event_pb2 import Event
            self.writer.file_writer.add_event(Event(graph_def=net_graph(solver.net).SerializeToString()))
        return self.writer

    def on_display(self, solver, smoothed_loss, outputs, iters_per_s):
        w = self._open(solver)
        w.add_scalar("train/smoothed_loss", smoothed_loss, solver.iter)
        for tag, value in output_tags("train", outputs):
            w.add_scalar(tag, value, solver.iter)
        if iters_per_s:
            w.add_scalar("solver/iter_per_s", iters_per_s, solver.iter)

    def on_learning_rate(self, solver, rate):
        self._open(solver).add_scalar("solver/lr", rate, solver.iter)

    def on_test(self, solver, test_net_id, outputs):
        w = self._open(solver)
        for tag, value in output_tags(test_prefix(test_net_id), outputs):
            w.add_scalar(tag, value, solver.iter)
        w.flush()               # a watching TensorBoard shows a test as soon as it is done

    def on_gradients_ready(self, solver):
        w = self._open(solver)
        if not self.histograms or solver.iter % self.histograms:
            return
        iter_size = solver.param.iter_size
        edges = np.asarray(w.default_bins, dtype=np.float64)
        for layer, j, blob in param_blobs(solver.net):
            diff = blob.diff if iter_size == 1 else blob.diff / iter_size
            for tag, values in ((f"params/{layer}/{j}", blob.data), (f"gradients/{layer}/{j}", diff)):
                h = histogram(values, edges)
                if h is not None:
                    w.add_histogram_raw(tag, global_step=solver.iter, **h)

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
