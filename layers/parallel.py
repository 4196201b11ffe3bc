"""What the parallel twins of the kernels share.

A kernel that pays for more threads has a twin next to it in its family module,
``<kernel>_parallel``, decorated ``@njit(parallel=True, cache=True)``: the same
loop with its outer, independent axis (images x channels, channels, or equal
shares of a flat array) run by ``prange``.  No twin changes the order of a sum
within one output, so each gives bitwise the plain kernel's numbers (a test per
twin says so).  The layers call a twin only when :func:`parts` says the loop is
worth cutting: the thread budget (net/threads.py) is above one and the loop
touches at least ``threads.PARALLEL_MIN`` elements.  Which twins exist, and the
measurements that kept them, are in docs/threads.md.

Convolutions cut work differently: by images (``image_shares`` and ``Team``).
Each share of a batch runs the plain path -- serial column copies and a
one-thread GEMM -- on its own thread, while OpenBLAS is held at one thread.
For the small per-image GEMMs of CIFAR-10 quick that beats handing each GEMM to
OpenBLAS's two threads, which wake and split every one of them, with Numba's
pool taking turns in between (docs/threads.md has the figures).
"""
import os
import queue
import threading

from numba import njit

from numcaffe.net import threads

#: Multiply-adds per share below which a convolution does not cut its batch (handing a share to a
#: thread and collecting it costs some 20-50 us, the time of ~2-4 M multiply-adds).
SHARE_MIN = 1 << 22


@njit(inline="always")
def share(n, t, parts):
    """The range [lo, hi) of items the t-th of ``parts`` near-equal shares of ``n`` items covers."""
    return n * t // parts, n * (t + 1) // parts


_local = threading.local()


def in_share():
    """Whether this thread is running one share of a ``Team``: its loops stay serial."""
    return getattr(_local, "share", False)


def parts(work):
    """Into how many shares to cut a loop over ``work`` elements: 1 (run the plain kernel) with one
    thread, too little work, or inside a team's share, else the thread count."""
    return threads.count() if threads.parallel(work) and not in_share() else 1


_twins = {}


def twin_of(plain):
    """Decorator: the decorated parallel kernel is the twin of ``plain`` (same arguments)."""
    def register(parallel_kernel):
        _twins[plain] = parallel_kernel
        return parallel_kernel
    return register


def pick(kernel, work):
    """``kernel``, or its twin (``twin_of``) when a loop over ``work`` elements is worth cutting."""
    return _twins[kernel] if parts(work) > 1 else kernel


# ---------------------------------------------------------------- image shares on a team of threads

class Team:
    """``size - 1`` worker threads that, with the calling thread, run the shares of one job at once.

    Share 0 runs on the caller and share t on worker t, always the same thread, so what a share
    left in its thread's workspace (layers/workspace.py: forward's columns) is there for the same
    share in backward.  The kernels a share calls release the GIL (``nogil``), as numpy's GEMM does.
    Passes from several threads at once (two nets run by a program's own threads) take the team in
    turn; a share's cached columns are then simply not found (layers/workspace.py), never wrong.
    """

    def __init__(self, size):
        self.size = size
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.inbox = [queue.SimpleQueue() for _ in range(size - 1)]
        self.outbox = queue.SimpleQueue()
        for i, box in enumerate(self.inbox):
            threading.Thread(target=self._serve, args=(box,), name=f"numcaffe-share-{i + 1}",
                             daemon=True).start()

    def _serve(self, box):
        _local.share = True
        while True:
            job = box.get()
            if job is None:
                return
            fn, t = job
            try:
                self.outbox.put((t, fn(t), None))
            except BaseException as e:   # handed to the caller, which raises it
                self.outbox.put((t, None, e))

    def run(self, fn, shares):
        """``[fn(0), ..., fn(shares - 1)]``, each on its own thread, OpenBLAS at one thread meanwhile.
        An exception in any share, or a Ctrl-C while waiting, is raised here once every share has
        finished: no worker is still writing into the layer's arrays when the caller goes on."""
        results, errors = [None] * shares, [None] * shares
        interrupted = None
        with self.lock, _blas_one_thread():
            for t in range(1, shares):
                self.inbox[t - 1].put((fn, t))
            _local.share = True
            try:
                results[0] = fn(0)
            except BaseException as e:
                errors[0] = e
            finally:
                _local.share = False
            waiting = shares - 1
            while waiting:
                try:
                    t, r, e = self.outbox.get()
                except BaseException as e:     # KeyboardInterrupt: wait for the shares, then raise it
                    interrupted = interrupted or e
                    continue
                results[t], errors[t] = r, e
                waiting -= 1
        for e in [interrupted] + errors:
            if e is not None:
                raise e
        return results

    def close(self):
        for box in self.inbox:
            box.put(None)


_team = None
_blas = None


def _blas_pools():
    """threadpoolctl's controllers of the loaded BLAS libraries (none without threadpoolctl)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = ()
        else:
            _blas = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


class _blas_one_thread:
    """OpenBLAS (every BLAS library loaded) at one thread inside, at the thread budget after."""

    def __enter__(self):
        for lib in _blas_pools():
            lib.set_num_threads(1)

    def __exit__(self, *exc):
        for lib in _blas_pools():
            lib.set_num_threads(threads.count())


def team():
    """The team for the thread budget in force (made on first use, again after a fork or a new budget)."""
    global _team
    size = threads.count()
    if _team is None or _team.size != size or _team.pid != os.getpid():
        if _team is not None and _team.pid == os.getpid():
            _team.close()
        _team = Team(size)
    return _team


def in_shares(images, shares, step):
    """``[step(lo, hi)]`` over ``shares`` shares of ``images`` images: on this thread when one,
    else at once on the team (``step`` takes the first image and the one past the last)."""
    if shares == 1:
        return [step(0, images)]
    return team().run(lambda s: step(*share(images, s, shares)), shares)


def image_shares(images, work):
    """Into how many shares of images a convolution over ``images`` images doing ``work``
    multiply-adds cuts its batch: 1 (the whole batch on this thread, GEMMs on OpenBLAS's threads)
    with one thread, one image, too little work per share, inside a share already, or without
    threadpoolctl to hold OpenBLAS at one thread; else the thread budget (at most one per image)."""
    n = threads.count()
    if n <= 1 or images < 2 or in_share() or not _blas_pools():
        return 1
    n = min(n, images)
    return n if work // n >= SHARE_MIN else 1

