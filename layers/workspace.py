"""One scratch workspace per thread, shared by every convolution layer that runs on it.

Layers of a thread run one at a time, so one column buffer serves them all (Caffe
gives each layer its own, which for a deep net -- or LeNet's TRAIN and TEST nets --
multiplies the biggest scratch array by the number of layers: LeNet's two nets held
four column buffers, 33 MB, and now hold one, 13 MB).  Arrays grow to the largest
request (conv.py's ``COL_LIMIT`` bounds the biggest).  Each name remembers which
layer took it last, so a layer knows whether what it wrote there (forward's columns)
is still there.  The arrays are freed when the last layer made on the thread is gone.

The worker threads of layers/parallel.py's ``Team`` (a convolution's image shares) have
workspaces of their own; no layer is made on them, so theirs live as long as the process, each
at most one chunk of columns (``COL_LIMIT``) plus a layer's parameter-gradient sums.
"""
import threading
import weakref

import numpy as np

from numcaffe.net.errors import ShapeError
from numcaffe.net.memory import fmt_bytes


class Workspace:
    """Named float32 scratch arrays, and which layer took each last."""

    def __init__(self):
        self.arrays = {}
        self.owners = {}
        self.users = 0

    def get(self, owner, name, size):
        a = self.arrays.get(name)
        if a is None or a.size < size:
            a = np.zeros(max(int(size), 1), dtype=np.float32)
            self.arrays[name] = a
        self.owners[name] = owner
        return a[:size]

    def leave(self):
        self.users -= 1
        if self.users <= 0:
            self.arrays.clear()
            self.owners.clear()


_THREAD = threading.local()


def thread_workspace():
    """This thread's workspace."""
    ws = getattr(_THREAD, "workspace", None)
    if ws is None:
        ws = _THREAD.workspace = Workspace()
    return ws


class Scratch:
    """One layer's handle on the workspace of the thread it runs on."""

    def __init__(self, what="a layer"):
        self.token = object()  # names the layer in the workspace without keeping it alive
        self.what = what       # the layer, for an error message
        home = thread_workspace()
        home.users += 1
        weakref.finalize(self, home.leave)

    def get(self, name, size):
        try:
            return thread_workspace().get(self.token, name, size)
        except MemoryError:
            # The net's memory check (net/memory.py) sees the workspace at build time; a net
            # reshaped bigger afterwards (pycaffe's blob.reshape + net.reshape) lands here.
            raise ShapeError(f"{self.what}: not enough memory for its {name!r} scratch array of {int(size)} "
                             f"floats ({fmt_bytes(4 * int(size))})") from None

    def holds(self, name):
        """Whether no other layer has taken ``name`` since this one did."""
        return thread_workspace().owners.get(name) is self.token
