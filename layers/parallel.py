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
"""
from numba import njit

from numcaffe.net import threads


@njit(inline="always")
def share(n, t, parts):
    """The range [lo, hi) of items the t-th of ``parts`` near-equal shares of ``n`` items covers."""
    return n * t // parts, n * (t + 1) // parts


def parts(work):
    """Into how many shares to cut a loop over ``work`` elements: 1 (run the plain kernel) with one
    thread or too little work, else the thread count."""
    return threads.count() if threads.parallel(work) else 1


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
