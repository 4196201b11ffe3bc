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
reference to the layer, so a layer that is dropped stops its thread.  The
layer side (copying a batch into the tops, get_state/set_state) is
:class:`numcaffe.layers.base_data.PrefetchingDataLayer`.
Threads are daemons and are also stopped at interpreter exit.
"""
import atexit
import queue
import threading
import weakref

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
