"""The base of data layers whose batches are loaded on a prefetch thread (Caffe's BasePrefetchingDataLayer).

The thread and its queues are :class:`numcaffe.net.data.prefetch.Prefetcher`;
this layer copies the next prefetched batch into its tops and reports, for
exact resume, the source position after the batch the net consumed last.
"""
import weakref

from numcaffe.layers.base import Layer
from numcaffe.net.data.prefetch import Prefetcher


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
