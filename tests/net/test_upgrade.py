"""Old Caffe definitions (V0, V1, net-level inputs, solver_type) are upgraded as Caffe does."""
import pytest

from numcaffe.net import upgrade
from numcaffe.net.config import parse_text, read_message
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2

V1_LENET = """
name: "LeNet"
layers {
  name: "mnist" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" backend: LMDB batch_size: 64 scale: 0.00390625 mirror: true }
  include { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } }
}
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1" param: "shared_w"
         blob_share_mode: PERMISSIVE inner_product_param { num_output: 10 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss" loss_weight: 2 }
"""

CURRENT_LENET = """
name: "LeNet"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 mirror: true }
  data_param { source: "train_lmdb" backend: LMDB batch_size: 64 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } }
}
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        param { name: "shared_w" share_mode: PERMISSIVE } inner_product_param { num_output: 10 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" loss_weight: 2 }
"""

V0_NET = """
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers { layer { name: "ip" type: "innerproduct" num_output: 10 } bottom: "norm1" top: "ip" }
"""


@pytest.fixture(autouse=True)
def quiet():
    saved = upgrade.NOTICES
    upgrade.NOTICES = False
    yield
    upgrade.NOTICES = saved


def _net(text):
    return parse_text(text, caffe_pb2.NetParameter())


def test_v1_net_becomes_the_current_form_exactly():
    old = _net(V1_LENET)
    assert upgrade.upgrade_message(old, "old.prototxt")
    assert old == _net(CURRENT_LENET)


def test_v1_type_table_covers_every_enum_value():
    names = set(caffe_pb2.V1LayerParameter.LayerType.keys())
    assert names == set(upgrade.V1_TYPES)


def test_v1_layer_keeps_weights_for_caffemodels():
    old = caffe_pb2.NetParameter()
    layer = old.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.blobs.add(data=[1.0, 2.0]).shape.dim.extend([2])
    upgrade.upgrade_message(old)
    assert old.layer[0].type == "InnerProduct" and list(old.layer[0].blobs[0].data) == [1.0, 2.0]


def test_mixing_v1_and_current_layers_is_an_error():
    net = _net(CURRENT_LENET + 'layers { name: "x" type: RELU }')
    with pytest.raises(ConfigError, match="mixes current 'layer'"):
        upgrade.upgrade_message(net, "mixed.prototxt")


def test_v0_net_with_padding_layer():
    net = _net(V0_NET)
    upgrade.upgrade_message(net)
    assert [l.type for l in net.layer] == ["Input", "Convolution", "Pooling", "LRN", "Dropout", "InnerProduct"]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is folded in
    assert list(conv.convolution_param.pad) == [2] and list(conv.convolution_param.kernel_size) == [3]
    assert list(conv.convolution_param.stride) == [2] and conv.convolution_param.bias_term is False
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert [p.lr_mult for p in conv.param] == [1, 2]
    pool = net.layer[2].pooling_param
    assert pool.pool == caffe_pb2.PoolingParameter.AVE and pool.kernel_size == 2 and pool.stride == 2
    assert net.layer[3].lrn_param.local_size == 3
    assert net.layer[4].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert net.layer[5].inner_product_param.num_output == 10
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_v0_unknown_type_is_a_clear_error():
    net = _net('layers { layer { name: "x" type: "frobnicate" } }')
    with pytest.raises(ConfigError, match="unknown V0 layer type 'frobnicate'"):
        upgrade.upgrade_message(net, "v0.prototxt")


def test_batchnorm_statistics_get_zero_lr():
    net = _net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }')
    assert upgrade.upgrade_message(net)
    assert all(p.lr_mult == 0 and p.decay_mult == 0 for p in net.layer[0].param)
    assert not upgrade.upgrade_message(net)  # already up to date


def test_solver_type_and_inline_nets_are_upgraded():
    solver = parse_text("solver_type: NESTEROV base_lr: 0.1 net_param { " + V1_LENET.replace("\n", " ") + " }",
                        caffe_pb2.SolverParameter())
    upgrade.upgrade_message(solver, "solver.prototxt")
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver.net_param == _net(CURRENT_LENET)


def test_solver_type_conflict():
    solver = parse_text('solver_type: ADAM type: "SGD"', caffe_pb2.SolverParameter())
    with pytest.raises(ConfigError, match="both type"):
        upgrade.upgrade_message(solver, "s.prototxt")


def test_reading_a_v1_file_upgrades_with_a_notice(tmp_path, capsys):
    upgrade.NOTICES = True
    path = tmp_path / "old.prototxt"
    path.write_text(V1_LENET)
    net = read_message(str(path), caffe_pb2.NetParameter)
    assert net == _net(CURRENT_LENET)
    err = capsys.readouterr().err
    assert "old.prototxt" in err and "V1" in err


def test_current_files_need_no_upgrade():
    assert not upgrade.needs_upgrade(_net(CURRENT_LENET))
    assert upgrade.needs_upgrade(_net(V1_LENET))


def test_an_upgrade_notice_is_printed_once_per_file(tmp_path, capsys):
    from numcaffe.net.config import read_message
    from numcaffe.net.proto import caffe_pb2
    path = tmp_path / "old_solver.prototxt"
    path.write_text('solver_type: NESTEROV base_lr: 0.1 lr_policy: "fixed"')
    saved = upgrade.NOTICES
    upgrade.NOTICES = True
    try:
        for _ in range(3):  # a solver reads its files more than once
            assert read_message(str(path), caffe_pb2.SolverParameter).type == "Nesterov"
    finally:
        upgrade.NOTICES = saved
    assert capsys.readouterr().err.count("upgraded deprecated solver_type") == 1


def test_under_mpi_rank_0_alone_prints_the_notices(tmp_path, capsys, monkeypatch):
    from numcaffe.net import comm
    for name in comm.SIZE_VARIABLES + comm.RANK_VARIABLES + ("NUMCAFFE_LOG_ALL_RANKS",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(upgrade, "NOTICES", True)
    monkeypatch.setattr(upgrade, "_told", set())
    path = tmp_path / "old.prototxt"
    path.write_text(V1_LENET)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("OMPI_COMM_WORLD_RANK", rank)
        upgrade._told.clear()
        assert read_message(str(path), caffe_pb2.NetParameter) == _net(CURRENT_LENET)
        assert ("old.prototxt" in capsys.readouterr().err) == said, rank


def test_messages_built_in_memory_are_taken_as_they_are_and_old_forms_refused():
    from numcaffe.net import Net
    from numcaffe.solvers import get_solver
    old = _net('input: "data" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2\n'
               'layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }')
    with pytest.raises(ConfigError, match=r"^Net: the NetParameter sets deprecated Caffe fields \(input, input_dim\); "
                                          r"upgrade it first with numcaffe\.net\.upgrade\.upgrade_message"):
        Net(old)
    with pytest.raises(ConfigError, match=r"deprecated Caffe fields \(layers\)"):
        Net(_net(V1_LENET))
    upgrade.upgrade_message(old)
    assert [layer.type for layer in Net(old).layers] == ["Input", "ReLU"]
    solver = caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.ADAM, base_lr=0.1, lr_policy="fixed")
    solver.net_param.CopyFrom(old)
    with pytest.raises(ConfigError, match=r"^Solver: the SolverParameter sets deprecated Caffe fields \(solver_type\)"):
        get_solver(solver)
    upgrade.upgrade_message(solver)
    assert type(get_solver(solver)).__name__ == "AdamSolver"
