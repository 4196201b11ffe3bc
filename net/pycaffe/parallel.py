"""pycaffe's multi-device calls on MPI: ``solver_count``, ``solver_rank``, ``set_solver_count``,
``set_solver_rank``, ``set_multiprocess`` and ``NCCL``.

Caffe's Python training loops for several GPUs (python/train.py) make one
solver per device, each in its own process, and join them with
``caffe.NCCL(solver, uid)``: ``nccl.bcast()`` gives every solver rank 0's
weights and ``solver.add_callback(nccl)`` averages the gradients every
iteration.  Here the processes are MPI ranks (``mpiexec -n N python
script.py``) and the solver already averages its gradients over them
(net/comm.py), so ``NCCL`` is the thin object such scripts expect:
``bcast()`` broadcasts rank 0's weights, its callbacks have nothing left to do,
and it refuses, in one line, a script that asks for N solvers in a process
that is not one of N ranks (N unconnected trainings would each learn alone).

``caffe.has_nccl()`` stays False (no NCCL library, as a CPU-only Caffe), but
unlike a CPU-only Caffe's stub, this ``NCCL`` works: ``new_uid()`` (bytes) and
``bcast()`` exist.  Nothing depends on a script making one: under ``mpiexec``
a plain ``SGDSolver`` loop trains data-parallel too (tests/solvers/test_mpi.py
runs both and gets ``numcaffe train --procs 2``'s weights bitwise).
"""
from numcaffe.net import comm as nc_comm
from numcaffe.net.errors import ConfigError

_multiprocess = [False]


def solver_count():
    """The number of solvers (ranks) training together."""
    return nc_comm.data_shard()[1]


def solver_rank():
    """This process's solver (rank), 0 .. solver_count() - 1."""
    return nc_comm.data_shard()[0]


def set_solver_count(count):
    """Declare the number of solvers; data layers made afterwards take their 1/count share."""
    nc_comm.set_shard(size=count)


def set_solver_rank(rank):
    """Declare this process's solver rank; data layers made afterwards read items i with i mod count == rank."""
    nc_comm.set_shard(rank=rank)


def set_multiprocess(multiprocess):
    """Accepted (Caffe's switch between threads and processes per device); MPI ranks are processes."""
    _multiprocess[0] = bool(multiprocess)


def multiprocess():
    return _multiprocess[0]


class NCCL:
    """``caffe.NCCL(solver, uid)`` for MPI ranks: ``bcast()``, and a callback the solver may be given."""

    def __init__(self, solver, uid=None):
        world = nc_comm.world()
        rank, count = nc_comm.data_shard()
        if count != world.size or rank != world.rank:
            raise ConfigError(
                f"caffe.NCCL joins MPI ranks: this process was declared solver {rank} of {count} but it is rank "
                f"{world.rank} of {world.size} MPI rank(s); start the script with `mpiexec -n {count} python "
                f"SCRIPT`, one solver per rank (with multiprocessing.Process instead, the solvers would each "
                f"train alone)")
        self.solver = solver
        self.uid = uid

    @staticmethod
    def new_uid():
        """A session id, as Caffe's; MPI needs none (the ranks of one mpiexec are the session)."""
        return b"mpi"

    def bcast(self):
        """Every rank takes rank 0's weights (the solver already did at start; again after a restore)."""
        nc_comm.bcast_params(self.solver.net, self.solver.comm)

    def on_start(self):
        pass

    def on_gradients_ready(self):
        pass   # the solver averaged the gradients over the ranks before calling this

    def __call__(self, layer=None):
        pass   # net.after_backward(nccl): one Allreduce per iteration serves every layer (see docs/mpi.md)
