"""Reading configs: prototxt and YAML give one message; bad configs give one clear error."""
import pytest

from numcaffe.net.config import detect_syntax, parse_text, parse_yaml, read_message, to_text, to_yaml
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2

PROTOTXT = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer {
  name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } }
  include { phase: TRAIN }
}
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "data" top: "loss" loss_weight: 0.5 }
"""

YAML = """
name: mlp
layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [4, 3]}}}
  - name: ip
    type: InnerProduct
    bottom: data
    top: ip
    param: [{lr_mult: 1}, {lr_mult: 2, decay_mult: 0}]
    inner_product_param:
      num_output: 5
      weight_filler: {type: xavier}
    include: {phase: TRAIN}
  - name: loss
    type: EuclideanLoss
    bottom: [ip, data]
    top: loss
    loss_weight: 0.5
"""


def test_yaml_and_prototxt_give_the_same_message():
    a = parse_text(PROTOTXT, caffe_pb2.NetParameter())
    b = parse_yaml(YAML, caffe_pb2.NetParameter())
    assert a == b
    assert b.layer[1].include[0].phase == caffe_pb2.TRAIN
    assert list(b.layer[2].bottom) == ["ip", "data"]


def test_yaml_round_trip_through_writer():
    a = parse_text(PROTOTXT, caffe_pb2.NetParameter())
    assert parse_yaml(to_yaml(a), caffe_pb2.NetParameter()) == a
    assert parse_text(to_text(a), caffe_pb2.NetParameter()) == a


def test_yaml_float_forms():
    s = parse_yaml("base_lr: 1e-4\nweight_decay: 5.0e-4\nmomentum: 1\n", caffe_pb2.SolverParameter())
    assert s.base_lr == pytest.approx(1e-4) and s.weight_decay == pytest.approx(5e-4) and s.momentum == 1


@pytest.mark.parametrize("text,needle,line", [
    ("name: x\nlayer:\n  - name: a\n    typo: Input\n", "no field 'typo'", 4),
    ("layer:\n  - name: a\n    bottm: x\n", "did you mean 'bottom'", 3),
    ("layer:\n  - name: a\n    include: {phase: TRIAN}\n", "unknown Phase value 'TRIAN'", 3),
    ("layer:\n  - name: a\n    loss_weight: heavy\n", "expects a number", 3),
    ("layer:\n  - name: a\n    propagate_down: 3\n", "expects true or false", 3),
    ("layer: [\n", "YAML syntax error", None),
    ("layer:\n  - !!python/object/apply:os.system ['true']\n", "", 2),
    ("force_backward: !!python/name:os.system\n", "not allowed", 1),
    ("layer:\n  - name: a\n    top: {x: 1}\n", "expects a single value", 3),
    ("- 1\n- 2\n", "expected a mapping", 1),
])
def test_yaml_errors_name_file_line_and_field(text, needle, line):
    with pytest.raises(ConfigError) as e:
        parse_yaml(text, caffe_pb2.NetParameter(), "net.yaml")
    msg = str(e.value)
    assert msg.startswith("net.yaml")
    assert needle in msg
    if line:
        assert msg.startswith(f"net.yaml:{line}:")


@pytest.mark.parametrize("text,needle", [
    ('layer { name: "a" typo: 1 }', "typo"),
    ('layer { name: "a" include { phase: TRIAN } }', "TRIAN"),
    ('layer { name: "a"', '"}"'),
    ('layer { name: "a" loss_weight: "x" }', "loss_weight"),
])
def test_prototxt_errors_name_file_line_and_field(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_text(text, caffe_pb2.NetParameter(), "net.prototxt")
    assert str(e.value).startswith("net.prototxt:1")
    assert needle in str(e.value)


def test_read_message_by_extension_and_sniff(tmp_path):
    for name, text in [("a.prototxt", PROTOTXT), ("a.yaml", YAML), ("a.cfg", PROTOTXT), ("b.cfg", YAML)]:
        p = tmp_path / name
        p.write_text(text)
        msg = read_message(str(p), caffe_pb2.NetParameter)
        assert msg.name == "mlp" and len(msg.layer) == 3
    binary = tmp_path / "a.bin"
    binary.write_bytes(parse_text(PROTOTXT, caffe_pb2.NetParameter()).SerializeToString())
    assert read_message(str(binary), caffe_pb2.NetParameter).name == "mlp"


def test_detect_syntax():
    assert detect_syntax("x.yml", b"") == "yaml"
    assert detect_syntax("x", b'layer {\n name: "a"\n}') == "text"
    assert detect_syntax("x", b"name: a\nlayer:\n  - name: b\n") == "yaml"
    assert detect_syntax("x", b"\x08\x01\xff\xfe") == "binary"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        read_message(str(tmp_path / "nope.prototxt"), caffe_pb2.NetParameter)


def test_net_level_input_is_upgraded_to_an_input_layer():
    msg = parse_text('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8', caffe_pb2.NetParameter())
    from numcaffe.net.upgrade import upgrade_message
    assert upgrade_message(msg)
    assert msg.layer[0].type == "Input" and list(msg.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert not len(msg.input)


def test_deprecated_solver_type_becomes_type():
    msg = parse_text("solver_type: ADAM base_lr: 0.1", caffe_pb2.SolverParameter())
    from numcaffe.net.upgrade import upgrade_message
    upgrade_message(msg)
    assert msg.type == "Adam" and not msg.HasField("solver_type")


def test_yaml_aliases_are_walked_once_and_bombs_refused():
    from numcaffe.net import config
    # Each alias level multiplies by ten: 4 levels expand to ~11,000 nodes and load; 6 levels
    # (~1.1 million) pass the limit and are refused before the message is filled.
    def nested(levels):
        lines = ["a0: &a0 [" + ", ".join(["1"] * 10) + "]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
        return "\n".join(lines) + "\n"
    with pytest.raises(ConfigError, match=r"a\.yaml: YAML aliases expand to more than \d+ nodes .*alias bombs"):
        parse_yaml(nested(6), caffe_pb2.NetParameter(), "a.yaml")
    # under the limit the walk reaches the schema check, not the alias check
    with pytest.raises(ConfigError, match="NetParameter has no field 'a0'"):
        parse_yaml(nested(4), caffe_pb2.NetParameter(), "a.yaml")
    assert config.ALIAS_EXPANSION_LIMIT < 1_100_000


def test_yaml_shared_blocks_fill_each_place():
    text = ("layer:\n- {name: a, type: ReLU, param: &p [{lr_mult: 3}]}\n- {name: b, type: ReLU, param: *p}\n")
    msg = parse_yaml(text, caffe_pb2.NetParameter())
    assert [l.param[0].lr_mult for l in msg.layer] == [3, 3]
