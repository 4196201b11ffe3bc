"""Background prefetch for data layers, with exact resume.

Caffe's ``BasePrefetchingDataLayer`` loads batches in a thread while the net
computes: a few batch buffers circulate between a *free* and a *full* queue.
numcaffe does the same, and adds what Caffe lacks: every batch carries the
position its source will read from *after* it (cursor and random state), so
the layer's ``get_state()`` describes the next batch the net will consume, not
how far the thread has read ahead.  ``set_state()`` stops the thread, drops
the queued batches, moves the source back and lets the thread start again.

A *source* is any object with

* ``load_batch(arrays) -> arrays``: fill (or reallocate) one array per top
  with the next batch and advance;
* ``position() -> dict``: JSON-serialisable description of where the next
  batch starts (including the random generator's state);
* ``seek(position)``: go back there;
* ``close()``.

The source runs only on the prefetch thread while that runs, and holds no
reference to the layer, so a layer that is dropped stops its thread.
Threads are daemons and are also stopped at interpreter exit.
"""
import atexit
import queue
import threading
import weakref

from numcaffe.layers.base import Layer

_LIVE = weakref.WeakSet()


@atexit.register
def _stop_all():
    for p in list(_LIVE):
        p.stop()


class _Failure:
    def __init__(self, exc):
        self.exc = exc


def _produce(source, free, full, stop):
    """The prefetch thread: fill free buffers, queue them with the position after each."""
    while not stop.is_set():
        try:
            arrays = free.get(timeout=0.05)
        except queue.Empty:
            continue
        try:
            arrays = source.load_batch(arrays)
            position = source.position()
        except BaseException as e:  # handed to the consumer, which re-raises it
            full.put(_Failure(e))
            return
        full.put((arrays, position))


class Prefetcher:
    """Runs ``source.load_batch`` on a daemon thread, ``depth`` batches ahead."""

    def __init__(self, source, depth=3, name="prefetch"):
        self.source = source
        self.depth = max(1, int(depth))
        self.name = name
        self._thread = None
        self._stop = threading.Event()
        self._free = queue.Queue()
        self._full = queue.Queue()
        for _ in range(self.depth):
            self._free.put([])
        _LIVE.add(self)

    @property
    def running(self):
        return self._thread is not None

    def start(self):
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=_produce, name=self.name, daemon=True,
                                            args=(self.source, self._free, self._full, self._stop))
            self._thread.start()

    def next(self):
        """(arrays, position after them) of the next batch; the arrays go back with ``recycle``."""
        self.start()
        while True:
            try:
                item = self._full.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._full.empty():
                    raise RuntimeError(f"{self.name}: the prefetch thread stopped")
        if isinstance(item, _Failure):
            self._thread.join()
            self._thread = None
            self._free.put([])
            raise item.exc
        return item

    def recycle(self, arrays):
        self._free.put(arrays)

    def stop(self):
        """Stop the thread and put every queued buffer back (their batches are dropped)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        while True:
            try:
                item = self._full.get_nowait()
            except queue.Empty:
                break
            self._free.put(item[0] if isinstance(item, tuple) else [])

    def close(self):
        self.stop()
        self.source.close()
        _LIVE.discard(self)


class PrefetchingDataLayer(Layer):
    """Base of data layers whose batches come from a source on a prefetch thread.

    Subclasses set up ``self.source`` in ``LayerSetUp`` (shaping the tops) and
    call :meth:`start_prefetch`.  Forward copies the next prefetched batch into
    the tops.  The thread starts at the first Forward, so restoring a state
    right after setup reads nothing twice.
    """

    exact_num_bottom = 0
    force_backward_bottoms = False
    #: batches kept ready (Caffe's PREFETCH_COUNT)
    prefetch_depth = 3

    def start_prefetch(self, source):
        if getattr(self, "prefetcher", None) is not None:
            self.prefetcher.close()
        self.source = source
        self.prefetcher = Prefetcher(source, self.prefetch_depth, name=f"prefetch {self.name}")
        self._next_position = source.position()
        self._finalizer = weakref.finalize(self, self.prefetcher.close)

    def Reshape(self, bottom, top):
        pass  # the tops take each batch's shape in Forward

    def Forward_cpu(self, bottom, top):
        arrays, position = self.prefetcher.next()
        try:
            for t, a in zip(top, arrays):
                if t.shape != a.shape:
                    t.reshape(a.shape)
                t.data[...] = a
        finally:
            self.prefetcher.recycle(arrays)
        self._next_position = position

    def Backward_cpu(self, top, propagate_down, bottom):
        pass

    def close(self):
        """Stop the prefetch thread and close the source (also done when the layer is dropped)."""
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer()

    # -- exact resume --------------------------------------------------------------
    def get_state(self):
        if getattr(self, "prefetcher", None) is None:
            return super().get_state()
        return {"position": self._next_position}

    def set_state(self, state):
        if getattr(self, "prefetcher", None) is None or "position" not in state:
            return super().set_state(state)
        self.prefetcher.stop()
        self.source.seek(state["position"])
        self._next_position = self.source.position()
