"""pycaffe's multi-device calls (net/pycaffe/parallel.py) in one process; tests/solvers/test_mpi.py runs
a python/train.py-style loop under mpiexec."""
import pytest

from numcaffe.net import comm


@pytest.fixture
def shard():
    yield lambda rank, size: comm.set_shard(rank=rank, size=size)
    comm.set_shard(rank=None, size=None)


def test_pycaffe_solver_count_and_rank_follow_the_world_and_the_setters(shard):
    import numcaffe.net.pycaffe as caffe
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(4)
    caffe.set_solver_rank(3)
    caffe.set_multiprocess(True)
    assert (caffe.solver_count(), caffe.solver_rank()) == (4, 3)


def test_pycaffe_nccl_refuses_solvers_that_are_not_mpi_ranks(shard):
    import numcaffe.net.pycaffe as caffe
    from tests.solvers.nets import least_squares_solver
    solver, _, _ = least_squares_solver("SGD")
    nccl = caffe.NCCL(solver, caffe.NCCL.new_uid())       # 1 solver of 1: fine, and a no-op
    nccl.bcast()
    solver.add_callback(nccl)
    solver.step(2)
    shard(1, 2)
    with pytest.raises(comm.ConfigError, match=r"solver 1 of 2 but it is rank 0 of 1 .*mpiexec -n 2"):
        caffe.NCCL(solver, caffe.NCCL.new_uid())


def test_net_layer_callbacks_and_solver_callbacks_run_in_caffes_order():
    from tests.solvers.nets import least_squares_solver
    solver, _, _ = least_squares_solver("SGD")
    events = []
    solver.net.before_forward(lambda i: events.append(("f", i)))
    solver.net.after_backward(lambda i: events.append(("b", i)))
    solver.add_callback(lambda: events.append("start"), lambda: events.append("ready"))
    solver.step(1)
    n = len(solver.net.layers)
    assert events == ["start"] + [("f", i) for i in range(n)] + [("b", i) for i in reversed(range(n))] + ["ready"]
