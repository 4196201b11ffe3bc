"""net/comm.py in one process: launcher detection, the flat gradient buffer, and the data layers' shares.

The shares are checked for every source type against the one-process stream:
with ``size`` ranks, rank ``r`` reads items ``r, r + size, ...`` of exactly the
sequence one process reads (shuffled sources included: one shuffle, dealt), and
restoring a rank's state continues its share.  tests/solvers/test_mpi.py runs
real MPI jobs.
"""
import numpy as np
import pytest

import numcaffe.layers  # noqa: F401
from numcaffe.net import comm
from numcaffe.net.proto import caffe_pb2
from tests.layers import cases_data as cd
from tests.layers.test_data import batches, make


@pytest.fixture
def shard():
    """Set this process's (rank, size) as pycaffe's set_solver_rank/count do; undone afterwards."""
    yield lambda rank, size: comm.set_shard(rank=rank, size=size)
    comm.set_shard(rank=None, size=None)


def test_launcher_detection(monkeypatch):
    for name in comm.SIZE_VARIABLES + comm.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert comm.launcher_size() == 1 and comm.launcher_rank() == 0
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    assert comm.launcher_size() == 4 and comm.launcher_rank() == 2
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK")
    monkeypatch.setenv("SLURM_NTASKS", "8")          # an sbatch allocation alone is not a task of srun
    assert comm.launcher_size() == 1
    monkeypatch.setenv("PMI_RANK", "3")
    assert comm.launcher_size() == 8 and comm.launcher_rank() == 3


def test_ranks_other_than_0_are_quiet_unless_asked(monkeypatch):
    for name in comm.SIZE_VARIABLES + comm.RANK_VARIABLES + ("NUMCAFFE_LOG_ALL_RANKS",):
        monkeypatch.delenv(name, raising=False)
    assert not comm.quiet_rank()                     # one process
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert not comm.quiet_rank()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    assert comm.quiet_rank()
    monkeypatch.setenv("NUMCAFFE_LOG_ALL_RANKS", "1")   # train --log_all_ranks
    assert not comm.quiet_rank()


def test_without_mpi4py_a_rank_refuses_in_one_line(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    monkeypatch.setattr(comm, "_world", None)
    with pytest.raises(comm.ConfigError, match=r"one of 2 ranks.*pip install 'numcaffe\[mpi\]'"):
        comm.world()


def test_one_process_world_is_size_one():
    w = comm.Communicator()
    assert (w.rank, w.size, w.is_root) == (0, 1, True)
    buf = np.arange(4, dtype=np.float32)
    assert w.allreduce_sum(buf) is buf and w.bcast({"a": 1}) == {"a": 1} and w.gather(5) == [5]


def _small_net():
    from numcaffe.net.net import Net
    from google.protobuf import text_format
    p = caffe_pb2.NetParameter()
    text_format.Parse("""
      layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
      layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
              inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
      layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
              inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
    """, p)
    return Net(p, phase=caffe_pb2.TRAIN)


def test_gradient_buffer_makes_the_diffs_views_of_one_array():
    net = _small_net()
    for i, b in enumerate(net.learnable_params):
        b.diff[...] = i + 1
    g = comm.GradientBuffer(net, comm.Communicator(), extra=3)
    assert g.flat.size == sum(b.count for b in net.learnable_params) + 3
    expected = np.concatenate([np.full(b.count, i + 1, np.float32) for i, b in enumerate(net.learnable_params)])
    np.testing.assert_array_equal(g.flat[:g.count], expected)       # the diffs moved in
    net.layers[2].blobs[0].diff[...] = 7         # the shared weight of layer b is layer a's: one slot
    assert (g.flat[:net.learnable_params[0].count] == 7).all()
    net.ClearParamDiffs()
    assert not g.flat[:g.count].any() and g.attached()
    g.reduce()
    assert g.attached()


# ------------------------------------------------------------------ data shares


def _items(layer, top, m, key):
    return [key(x) for b in batches(layer, top, m) for x in zip(*b)]


def _pixels(item):
    return item[0].tobytes()


def _label(item):
    return float(item[1])


SOURCES = {
    "LMDB": (cd._data(cd.UINT8_DB, "batch_size: 3"), _pixels),
    "ImageData": (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{cd.IMAGE_LIST}" '
                  f'root_folder: "{cd.IMAGE_ROOT}" batch_size: 3 }}', _label),
    "ImageData shuffled": (f'type: "ImageData" top: "data" top: "label" image_data_param {{ '
                           f'source: "{cd.IMAGE_LIST}" root_folder: "{cd.IMAGE_ROOT}" batch_size: 3 shuffle: true }}',
                           _label),
    "HDF5": (f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{cd.H5_LIST}" '
             f'batch_size: 3 }}', _label),
    "HDF5 shuffled": (f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{cd.H5_LIST}" '
                      f'batch_size: 3 shuffle: true }}', _label),
}
if cd.LEVEL_DB:
    SOURCES["LevelDB"] = (cd._data(cd.LEVEL_DB, "batch_size: 3", backend="LEVELDB"), _pixels)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("name", list(SOURCES))
def test_rank_r_reads_items_r_mod_size_of_the_one_process_stream(shard, name, size):
    text, key = SOURCES[name]
    m = 7                                   # several passes over every source, with reshuffles
    one, top = make(text, seed=4)
    stream = _items(one, top, m * size, key)
    one.close()
    for rank in range(size):
        shard(rank, size)
        layer, top = make(text, seed=4)
        assert _items(layer, top, m, key) == stream[rank::size], f"rank {rank} of {size}"
        layer.close()


@pytest.mark.parametrize("name", ["LMDB", "ImageData shuffled", "HDF5 shuffled"])
def test_a_rank_resumes_its_own_share(shard, name):
    text, key = SOURCES[name]
    shard(1, 2)
    a, ta = make(text, seed=9)
    _items(a, ta, 3, key)
    state = a.get_state()
    rest = _items(a, ta, 4, key)
    b, tb = make(text, seed=9)
    b.set_state(state)
    assert _items(b, tb, 4, key) == rest
    a.close(), b.close()


def test_a_state_from_another_number_of_ranks_starts_this_ranks_share_at_rank_0s_position(shard):
    text, key = SOURCES["LMDB"]
    one, top = make(text, seed=1)
    stream = _items(one, top, 12, key)
    one.close()
    shard(0, 2)
    a, ta = make(text, seed=1)
    _items(a, ta, 2, key)                 # rank 0 of 2 took stream items 0, 2, ..., 10
    state = a.get_state()
    a.close()
    shard(1, 3)
    b, tb = make(text, seed=1)
    b.set_state(state)                    # rank 1 of 3 continues from item 12: 13, 16, ...
    assert _items(b, tb, 2, key) == stream[13:13 + 18:3]
    b.close()


def test_memory_data_deals_rows(shard):
    from numcaffe.layers.base import create_layer
    from numcaffe.net.blob import Blob
    from google.protobuf import text_format
    data = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)

    def layer_for():
        p = caffe_pb2.LayerParameter()
        text_format.Parse('name: "m" type: "MemoryData" top: "d" top: "l" '
                          'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 1 }', p)
        p.phase = caffe_pb2.TRAIN
        layer, top = create_layer(p), [Blob(), Blob()]
        layer.SetUp([], top)
        layer.reset(data, data.ravel())
        return layer, top

    one = layer_for()
    stream = []
    for _ in range(6):
        one[0].Forward([], one[1])
        stream += one[1][1].data.tolist()
    for rank in range(2):
        shard(rank, 2)
        layer, top = layer_for()
        got = []
        for _ in range(3):
            layer.Forward([], top)
            got += top[1].data.tolist()
        assert got == stream[rank::2]
        np.testing.assert_array_equal(top[0].data.ravel(), top[1].data)


def test_test_phase_reads_everything_on_every_rank(shard):
    text, key = SOURCES["LMDB"]
    shard(1, 2)
    layer, top = make(text, phase=caffe_pb2.TEST, seed=0)
    got = _items(layer, top, 2, key)
    layer.close()
    assert got == [cd.PIXELS[i].astype(np.float32).tobytes() for i in range(6)]

