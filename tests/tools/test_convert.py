"""``numcaffe convert``: prototxt <-> YAML <-> binary round trips give the same message."""
from pathlib import Path

import pytest

from numcaffe.net import upgrade
from numcaffe.net.config import read_message
from numcaffe.net.proto import caffe_pb2
from numcaffe.tools import convert
from numcaffe.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*") if p.suffix in (".prototxt", ".yaml", ".yml"))
FIXTURES = ROOT / "tests" / "fixtures" / "caffe"
TEXT_FIXTURES = sorted(FIXTURES.glob("*.prototxt"))


@pytest.fixture(autouse=True)
def quiet():
    saved = upgrade.NOTICES
    upgrade.NOTICES = False
    yield
    upgrade.NOTICES = saved


def _round_trip(src, tmp_path, type_name=None):
    original, type_name, _ = convert.read_any(str(src), type_name)
    cls = convert.TYPES[type_name]
    for ext in (".prototxt", ".yaml", ".pb"):
        out = tmp_path / f"out{ext}"
        convert.convert(str(src), str(out), type_name)
        again = read_message(str(out), cls)
        assert again == original, f"{src.name} -> {ext} changed the message"
        # and back again from the converted file
        back = tmp_path / f"back{ext}"
        convert.convert(str(out), str(back), type_name)
        assert read_message(str(back), cls) == original
    return original


@pytest.mark.parametrize("path", CONFIGS + TEXT_FIXTURES, ids=lambda p: p.name)
def test_every_config_round_trips(path, tmp_path):
    msg = _round_trip(path, tmp_path)
    expected = "SolverParameter" if "solver" in path.name else "NetParameter"
    assert msg.DESCRIPTOR.name == expected


def test_caffemodel_round_trips_through_text_bit_for_bit(tmp_path):
    src = FIXTURES / "lenet_iter_10000.caffemodel"
    text = tmp_path / "m.prototxt"
    binary = tmp_path / "m.caffemodel"
    assert convert.convert(str(src), str(text))[0] == "net"
    convert.convert(str(text), str(binary))
    assert binary.read_bytes() == src.read_bytes()


def test_solverstate_round_trips_through_yaml(tmp_path):
    state = caffe_pb2.SolverState()
    state.ParseFromString((FIXTURES / "lenet_iter_10000.solverstate").read_bytes())
    for h in state.history:  # keep the structure, trim the values so YAML stays quick
        del h.data[10:]
        h.shape.Clear()
        h.shape.dim.append(len(h.data))
    small = tmp_path / "small.solverstate"
    small.write_bytes(state.SerializeToString())
    assert _round_trip(small, tmp_path) == state


def test_binary_type_is_detected_without_a_telling_extension(tmp_path):
    src = FIXTURES / "lenet_iter_10000.solverstate"
    state = caffe_pb2.SolverState()
    state.ParseFromString(src.read_bytes())
    for h in state.history:
        del h.data[:]
    blob = tmp_path / "state.bin"
    blob.write_bytes(state.SerializeToString())
    msg, type_name, syntax = convert.read_any(str(blob))
    assert (type_name, syntax) == ("solverstate", "binary") and msg.iter == 10000


def test_v1_file_is_upgraded_by_convert(tmp_path, capsys):
    from tests.net.test_upgrade import CURRENT_LENET, V1_LENET

    old = tmp_path / "old.prototxt"
    old.write_text(V1_LENET)
    assert main(["convert", str(old), str(tmp_path / "new.yaml")]) == 0
    assert "upgraded" in capsys.readouterr().out
    new = read_message(str(tmp_path / "new.yaml"), caffe_pb2.NetParameter)
    from numcaffe.net.config import parse_text
    assert new == parse_text(CURRENT_LENET, caffe_pb2.NetParameter())
    # --no-upgrade keeps the V1 form
    assert main(["convert", "--no-upgrade", str(old), str(tmp_path / "kept.prototxt")]) == 0
    kept = read_message(str(tmp_path / "kept.prototxt"), caffe_pb2.NetParameter, upgrade=False)
    assert len(kept.layers) == 6 and not len(kept.layer)


def test_unknown_output_extension_needs_to(tmp_path, capsys):
    src = CONFIGS[0]
    assert main(["convert", str(src), str(tmp_path / "out.json")]) == 1
    assert "--to" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "out.json"), "--to", "yaml"]) == 0
    assert "layer" in (tmp_path / "out.json").read_text() or "base_lr" in (tmp_path / "out.json").read_text()


def test_lossy_conversion_is_refused(tmp_path, capsys):
    datum = caffe_pb2.Datum(channels=1, height=1, width=3, data=b"\xff\x00\xfe", label=2)
    src = tmp_path / "d.pb"
    src.write_bytes(datum.SerializeToString())
    assert main(["convert", "--type", "datum", str(src), str(tmp_path / "d.yaml")]) == 1
    assert "without loss" in capsys.readouterr().err
    assert not (tmp_path / "d.yaml").exists()
    # text format escapes bytes, so that one is lossless
    assert main(["convert", "--type", "datum", str(src), str(tmp_path / "d.prototxt")]) == 0
    assert read_message(str(tmp_path / "d.prototxt"), caffe_pb2.Datum) == datum


def test_unknown_binary_fields_are_not_silently_dropped(tmp_path, capsys):
    net = caffe_pb2.NetParameter(name="x")
    raw = net.SerializeToString() + bytes([0xF8, 0x3E, 0x01])  # field 999, varint 1: not in the schema
    src = tmp_path / "x.caffemodel"
    src.write_bytes(raw)
    assert main(["convert", str(src), str(tmp_path / "x.prototxt")]) == 1
    assert "does not know" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "y.caffemodel")]) == 0
    assert (tmp_path / "y.caffemodel").read_bytes() == raw


def test_written_files_get_the_usual_mode(tmp_path):
    import os
    import stat
    out = tmp_path / "net.yaml"
    convert.convert(str(CONFIGS[0]), str(out))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def test_an_hdf5_caffemodel_is_named_as_hdf5_not_called_corrupt(tmp_path, capsys):
    # Caffe writes weights as .caffemodel.h5 with snapshot_format: HDF5; convert reads protobuf files only,
    # and must say that rather than call a valid file corrupt
    from numcaffe.net import Net
    net = Net(str(ROOT / "configs" / "xor" / "net.prototxt"), "TEST")
    h5 = tmp_path / "xor.caffemodel.h5"
    net.save(str(h5))
    assert main(["convert", str(h5), str(tmp_path / "x.prototxt")]) == 1
    err = capsys.readouterr().err
    assert "HDF5" in err and "corrupt" not in err and "Traceback" not in err
