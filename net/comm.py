"""The communicator: which rank this process is, of how many, and the few collectives training needs.

numcaffe trains data-parallel over MPI the way Caffe trained over several GPUs:
every rank runs the same solver on its own share of the data, the parameter
gradients are averaged over ranks once per iteration, and every rank applies
the same update.  This module is the only one that talks to MPI:

* :func:`world` gives the process's :class:`Communicator`.  Started by an MPI
  launcher (``mpiexec``, ``srun``; detected from the launcher's environment
  variables, so mpi4py is imported only then) with more than one rank, it wraps
  ``MPI.COMM_WORLD``; otherwise it is a size-1 communicator whose collectives
  do nothing, so a one-process run goes through the same code.
* :func:`data_shard` is ``(rank, size)`` for the data layers: item ``i`` of a
  training source goes to rank ``i mod size`` (Caffe's DataLayer::Skip).
  pycaffe's ``set_solver_rank`` / ``set_solver_count`` override it.
* :class:`GradientBuffer` packs every learnable parameter's diff into one flat
  float32 array (the blobs' diffs become views into it, so nothing is copied)
  with a few extra slots behind it, and averages it over ranks with one
  ``Allreduce`` per iteration.

Determinism: an ``Allreduce`` of the same message size on the same
communicator takes the same algorithm and so the same summation order in every
run, and all ranks receive the same bits; two runs with the same number of
ranks give bitwise identical weights (tests/solvers/test_mpi.py checks both).
"""
import os
import sys
import time

import numpy as np

from numcaffe.net.errors import ConfigError

#: Environment variables by which launchers tell a process how many ranks its job has.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
#: ... and which one it is.
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")

INSTALL_HINT = "pip install 'numcaffe[mpi]'"


def launcher_size():
    """The number of ranks a launcher started this process as one of (1 when not under a launcher)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            if name == "SLURM_NTASKS" and not any(v in os.environ for v in ("PMI_RANK", "PMIX_RANK")):
                continue   # an sbatch allocation, not a task of srun
            return int(value)
    return 1


def launcher_rank():
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


class Communicator:
    """A size-1 communicator: rank 0 of 1; every collective returns its input."""

    rank = 0
    size = 1
    #: the MPI library's name and version, for the log
    library = None

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce_sum(self, buf):
        """Sum the float32 array ``buf`` over ranks, in place; every rank gets the same bits."""
        return buf

    def bcast(self, obj, root=0):
        """A picklable object of ``root``'s, on every rank."""
        return obj

    def bcast_array(self, array, root=0):
        """``root``'s values of a contiguous array, written into ``array`` on every rank."""
        return array

    def gather(self, obj, root=0):
        """Every rank's ``obj``, as a list in rank order on ``root``; None elsewhere."""
        return [obj]

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        """End this process now, without MPI's finalize (which would wait for the other ranks).

        The launcher sees a rank exit with a non-zero status and ends the whole
        job within a second or two (measured with Open MPI 5: 0.5 s); a rank that
        failed alone must not leave the others waiting in a collective.
        MPI_Abort would do the same with two more screens of text.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class MPICommunicator(Communicator):
    """``MPI.COMM_WORLD`` through mpi4py."""

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.library = MPI.Get_library_version().splitlines()[0].split(",")[0].strip()

    def allreduce_sum(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def bcast_array(self, array, root=0):
        self.comm.Bcast(array, root=root)
        return array

    def gather(self, obj, root=0):
        return self.comm.gather(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()



_world = None
_shard_override = {"rank": None, "size": None}     # pycaffe's set_solver_rank / set_solver_count


def world():
    """This process's communicator (created on first use)."""
    global _world
    if _world is None:
        size = launcher_size()
        if size <= 1:
            _world = Communicator()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise ConfigError(f"started by an MPI launcher as one of {size} ranks, but mpi4py is not "
                                  f"installed, and {size} separate trainings would overwrite each other's "
                                  f"snapshots; {INSTALL_HINT}") from None
            _world = MPICommunicator(MPI)
            if not _world.is_root:
                _quiet_non_root()
    return _world


def _log_all_ranks():
    return os.environ.get("NUMCAFFE_LOG_ALL_RANKS", "").strip() in ("1", "true", "yes")


def quiet_rank():
    """Whether this process is an MPI rank other than 0 that was not asked to log (``train --log_all_ranks``).

    Such a rank prints no notices (a config upgraded on the fly, a layer plugin
    that failed to load): every rank meets them alike, rank 0 says them once.
    Read from the launcher's environment, so it holds before :func:`world`
    exists (reading the solver, importing the layers).
    """
    return launcher_size() > 1 and launcher_rank() != 0 and not _log_all_ranks()


def _quiet_non_root():
    """Ranks other than 0 log nothing, unless asked: NUMCAFFE_LOG_ALL_RANKS=1 (``train --log_all_ranks``)
    or an explicit GLOG_minloglevel (every rank then logs at that level, as glog would)."""
    if _log_all_ranks() or os.environ.get("GLOG_minloglevel", "").strip():
        return
    import logging
    from numcaffe.net.log import get_logger
    get_logger().setLevel(logging.CRITICAL + 1)


def set_world(comm):
    """Use ``comm`` as this process's communicator (tests; pycaffe)."""
    global _world
    _world = comm


def data_shard():
    """``(rank, size)``: a training data source deals item ``i`` to rank ``i mod size``."""
    rank, size = _shard_override["rank"], _shard_override["size"]
    w = world() if rank is None or size is None else None
    return (w.rank if rank is None else rank), (w.size if size is None else size)


def layer_shard(layer):
    """``(rank, size)`` for a data layer: its share in the TRAIN phase; every rank tests on everything."""
    from numcaffe.net.proto import caffe_pb2
    return data_shard() if layer.phase == caffe_pb2.TRAIN else (0, 1)


def realign(position, rank, size):
    """How many items a source restored to ``position`` must skip to reach this rank's share.

    A position records the (rank, size) it was taken for; restored by the same
    rank of a job of the same size it is already this rank's.  Otherwise it is
    rank 0's (the solver hands every rank rank 0's state when the number of
    ranks changed), and rank ``r`` skips ``r`` items.
    """
    shard = position.get("shard", [0, 1]) if isinstance(position, dict) else [0, 1]
    return 0 if list(shard) == [rank, size] else rank


def set_shard(**kw):
    """Override :func:`data_shard`'s ``rank`` or ``size`` (pycaffe's set_solver_rank / set_solver_count);
    None follows the communicator again."""
    for key, value in kw.items():
        if key not in _shard_override:
            raise TypeError(f"set_shard() takes rank and size, not {key!r}")
        _shard_override[key] = None if value is None else int(value)


# ---------------------------------------------------------------- the gradient buffer


class GradientBuffer:
    """Every learnable parameter's diff in one flat float32 array, followed by ``extra`` slots.

    The blobs' diffs become views into the array (shared parameters share the
    holder, so they follow), and :meth:`reduce` averages the whole array over
    the ranks with one Allreduce.  The extra slots ride along in the same
    message: the solver puts each rank's loss, its finite-gradient flag and
    its signal requests there, so one collective per iteration also agrees on
    when to stop.
    """

    def __init__(self, net, comm, extra=0):
        self.net = net
        self.comm = comm
        self.extra = int(extra)
        self.blobs = list(net.learnable_params)
        self.offsets = []
        total = 0
        for b in self.blobs:
            self.offsets.append(total)
            total += b.count
        self.count = total
        self.flat = np.zeros(total + self.extra, dtype=np.float32)
        self._attach(copy=True)
        self.seconds = 0.0       # spent in the Allreduce (waiting for the slowest rank included)
        self.calls = 0

    def _attach(self, copy):
        for b, off in zip(self.blobs, self.offsets):
            view = self.flat[off:off + b.count]
            if copy:
                view[...] = b.flat_diff
            b._diff_mem.buf = view

    def attached(self):
        """Whether every diff is still the view into the buffer (a diff's holder can be replaced)."""
        base = self.flat.ctypes.data
        return all(b._diff_mem.buf.ctypes.data == base + 4 * off and b._diff_mem.buf.size == b.count
                   for b, off in zip(self.blobs, self.offsets))

    @property
    def tail(self):
        """The extra slots behind the gradients."""
        return self.flat[self.count:]

    def reduce(self):
        """Sum the buffer over ranks (in place) and divide the gradients by the number of ranks."""
        if self.comm.size == 1:
            return
        if not self.attached():
            self._attach(copy=True)
        start = time.perf_counter()
        self.comm.allreduce_sum(self.flat)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        grads = self.flat[:self.count]
        grads *= np.float32(1.0 / self.comm.size)


def bcast_params(net, comm, root=0):
    """Every rank takes ``root``'s parameter values (initial weights, restored weights)."""
    if comm.size == 1:
        return
    for b in net.learnable_params:
        data = b.flat_data
        comm.bcast_array(data, root=root)
