"""The thread budget: one number of threads, shared by numcaffe's Numba loops and OpenBLAS's GEMMs.

Where the number comes from, the first that is set:

1. ``--threads N`` on the command line (every ``numcaffe`` command has it);
2. the environment variable ``NUMCAFFE_THREADS``;
3. ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` or
   ``NUMBA_NUM_THREADS`` when the user set any of them (the smallest one counts;
   ``numcaffe train --procs N`` sets them to 1 for each MPI rank, so each rank
   keeps one thread);
4. the cores this process may run on (``os.sched_getaffinity``).

How the two pools share the cores without fighting (docs/threads.md has the
measurements):

* OpenBLAS and Numba get the same count.  The ``numcaffe`` command writes it
  into the environment before numpy is imported (``prepare_environment``), so
  OpenBLAS starts with exactly that many threads; a program that imports numcaffe
  as a library calls :func:`set_threads`, which uses threadpoolctl (the
  ``threads`` extra) for OpenBLAS and ``numba.set_num_threads`` for Numba.
* Their idle threads must not spin on a core the other pool needs.  Numba runs
  its loops on GNU OpenMP (its threading layer of first choice here,
  ``NUMBA_THREADING_LAYER_PRIORITY``), whose idle threads spin 300,000 rounds
  by default, ~15 ms on this Skylake: every GEMM right after a parallel loop
  lost that long to a spinning thread (30 GEMM + loop pairs: 757 ms against 405
  serial; the 2x slowdown of the first ``parallel=True`` attempt).
  ``GOMP_SPINCOUNT=10000`` (~0.5 ms) keeps a launch cheap (8 us for 65,000
  floats, against 59 us on Numba's workqueue layer, whose threads sleep on a
  condition variable) and the pairs at 424 ms; ``OPENBLAS_THREAD_TIMEOUT=4``
  sends OpenBLAS's idle threads to sleep at once instead of after 2^28 cycles.
  Variables the user set are left alone.
* The layers run a loop's parallel twin only when :func:`parallel` says so:
  more than one thread, and enough work to pay for waking the other threads.
"""
import os

from numcaffe.net.errors import ConfigError

#: The variable that sets the budget when ``--threads`` is not given.
ENV = "NUMCAFFE_THREADS"
#: The pools' own variables: when the user set one, it is the budget (the smallest of them).
POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
#: Set before numpy and Numba load, unless the user set them (see the module docstring).
QUIET_POOLS = {"NUMBA_THREADING_LAYER_PRIORITY": "omp tbb workqueue", "GOMP_SPINCOUNT": "10000",
               "OPENBLAS_THREAD_TIMEOUT": "4"}
#: Elements (or multiply-adds) below which a loop stays serial: waking a second thread costs
#: ~10-30 us, the time of a serial loop over ~50,000 floats.
PARALLEL_MIN = 1 << 16

_count = None
_requested = None


def parse(text, where):
    """``text`` as a thread count (a positive integer), or a ConfigError naming ``where`` it came from."""
    s = str(text).strip()
    if not (s.isascii() and s.isdigit()) or int(s) < 1:
        raise ConfigError(f"{where} must be a positive whole number of threads, got {text!r}")
    return int(s)


def cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve(flag=None, environ=None):
    """The budget: ``flag`` (``--threads``), else ``NUMCAFFE_THREADS``, else the pools' variables
    the user set (the smallest), else the cores."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        return parse(flag, "--threads")
    if environ.get(ENV, "").strip():
        return parse(environ[ENV], ENV)
    user = []
    for v in POOL_VARIABLES:
        text = environ.get(v, "").strip()
        if text:
            user.append(parse(text.split(",")[0], v))     # OMP_NUM_THREADS may be a nested list "4,2"
    return min(user) if user else cores()


def prepare_environment(n, explicit, environ=None):
    """Before numpy and Numba are imported (the ``numcaffe`` command's first step): idle pool threads
    sleep rather than spin (``QUIET_POOLS``, unless the user set them), and when the budget was asked
    for (``explicit``: ``--threads`` or ``NUMCAFFE_THREADS``), OpenBLAS, OpenMP and Numba start with
    ``n`` threads.  Otherwise the pools' variables stay as the user left them (``--procs`` gives each
    rank one thread only when none is set) and :func:`set_threads` sizes the pools once loaded."""
    environ = os.environ if environ is None else environ
    for v, value in QUIET_POOLS.items():
        environ.setdefault(v, value)
    if explicit:
        for v in POOL_VARIABLES:
            environ[v] = str(n)


def argv_threads(argv):
    """The value of ``--threads`` / ``-threads`` / ``--threads=N`` in ``argv``, or None (not checked here)."""
    for i, a in enumerate(argv):
        if a in ("--threads", "-threads") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(("--threads=", "-threads=")):
            return a.split("=", 1)[1]
    return None


def set_threads(n):
    """Give Numba's loops and OpenBLAS ``n`` threads (threadpoolctl when installed), and remember ``n``
    for :func:`parallel`.  Numba's pool cannot grow past the ``NUMBA_NUM_THREADS`` it started with:
    the count is clamped to it."""
    global _count
    n = parse(n, "the thread count")
    # A program that imported numpy itself: Numba's OpenMP pool and its spin count still follow
    # QUIET_POOLS if no parallel loop has run yet (OpenBLAS's timeout is fixed at numpy's import).
    for v, value in QUIET_POOLS.items():
        os.environ.setdefault(v, value)
    import numba
    if numba.config.THREADING_LAYER_PRIORITY != os.environ["NUMBA_THREADING_LAYER_PRIORITY"].split():
        numba.config.THREADING_LAYER_PRIORITY = os.environ["NUMBA_THREADING_LAYER_PRIORITY"].split()
    numba_n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(numba_n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(limits=n, user_api="blas")
    _count = numba_n
    return numba_n


def request(n):
    """Use ``n`` threads from the first loop that asks on (:func:`set_threads` then): a command that
    never runs a kernel does not load Numba for it."""
    global _count, _requested
    _requested, _count = parse(n, "the thread count"), None


def count():
    """The thread budget in force (on first use: the one requested, else resolved from the environment)."""
    if _count is None:
        set_threads(_requested if _requested is not None else resolve())
    return _count


def parallel(work):
    """Whether a loop over ``work`` elements should run its parallel twin."""
    return work >= PARALLEL_MIN and count() > 1
