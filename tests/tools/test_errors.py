"""Every user-facing failure of every subcommand: one ``numcaffe: error: ...`` line, exit 1, no traceback."""
import os

import pytest

from numcaffe.tools.cli import main


def cli(argv, capsys=None):
    """Run the command line; (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as e:          # argparse's own exit on bad flags
        status = e.code
    if capsys is None:
        return status, "", ""
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_clean_error(status, err, *needles):
    assert status == 1, err
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("numcaffe: error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ----------------------------------------------------------------------------- fixtures

NET = """name: "e"
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }
"""

YAML_NET = """name: e
layer:
  - {name: in, type: Input, top: [x, t], input_param: {shape: [{dim: [2, 3]}, {dim: [2, 3]}]}}
  - {name: ip, type: InnerProduct, bottom: x, top: ip, inner_product_param: {num_output: 3}}
  - {name: loss, type: EuclideanLoss, bottom: [ip, t], top: loss}
"""

SOLVER = 'net: "net.prototxt"\nbase_lr: 0.01\nmax_iter: 2\nlr_policy: "fixed"\nsnapshot_after_train: false\n'


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "net.yaml").write_text(YAML_NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    from numcaffe.net.net import TEST, Net
    Net(str(tmp_path / "net.prototxt"), TEST).save(str(tmp_path / "net.caffemodel"))
    return tmp_path


def _variant(files, old, new, name="bad.prototxt", base=NET):
    assert old in base, old
    (files / name).write_text(base.replace(old, new))
    return name


# Commands that read a net definition, as argv builders.
NET_COMMANDS = {
    "time": lambda net: ["time", "--model", net, "--iterations", "1"],
    "test": lambda net: ["test", "--model", net, "--iterations", "1", "--weights", "net.caffemodel"],
    "gradcheck": lambda net: ["gradcheck", net, "--max-checks", "2"],
    "draw": lambda net: ["draw", net, "out.dot"],
    "convert": lambda net: ["convert", net, "out.yaml"],
}
BUILDS_NET = ("time", "test", "gradcheck")     # these construct the Net, the others only read the file


def test_the_fixture_net_is_fine(files, capsys):
    for name, argv in NET_COMMANDS.items():
        status, _, err = cli(argv("net.prototxt"), capsys)
        assert status == 0, (name, err)


@pytest.mark.parametrize("command", sorted(NET_COMMANDS))
def test_misspelled_field_in_prototxt(files, capsys, command):
    bad = _variant(files, "num_output: 3", "num_ouput: 3")
    status, _, err = cli(NET_COMMANDS[command](bad), capsys)
    assert_clean_error(status, err, "bad.prototxt:3:", "num_ouput", "did you mean 'num_output'")


@pytest.mark.parametrize("command", sorted(NET_COMMANDS))
def test_misspelled_field_in_yaml(files, capsys, command):
    bad = _variant(files, "num_output: 3", "num_ouput: 3", "bad.yaml", YAML_NET)
    status, _, err = cli(NET_COMMANDS[command](bad), capsys)
    assert_clean_error(status, err, "bad.yaml:4:", "num_ouput", "did you mean 'num_output'")


def test_misspelled_enum_value(files, capsys):
    bad = _variant(files, 'name: "e"', 'name: "e"\nstate { phase: TRAINING }')
    status, _, err = cli(["time", "--model", bad], capsys)
    assert_clean_error(status, err, "bad.prototxt:2:", "TRAINING", "did you mean 'TRAIN'")


@pytest.mark.parametrize("command", BUILDS_NET)
def test_misspelled_layer_type(files, capsys, command):
    bad = _variant(files, '"InnerProduct"', '"InnerProdcut"')
    status, _, err = cli(NET_COMMANDS[command](bad), capsys)
    assert_clean_error(status, err, "layer 'ip'", "unknown layer type 'InnerProdcut'", "'InnerProduct'")


@pytest.mark.parametrize("command", BUILDS_NET)
def test_unknown_bottom_blob(files, capsys, command):
    bad = _variant(files, 'bottom: "ip" bottom: "t"', 'bottom: "ipp" bottom: "t"')
    status, _, err = cli(NET_COMMANDS[command](bad), capsys)
    assert_clean_error(status, err, "layer 'loss'", "unknown bottom blob 'ipp'")


@pytest.mark.parametrize("command", BUILDS_NET)
def test_shape_mismatch_names_both_shapes_and_the_layer(files, capsys, command):
    bad = _variant(files, "num_output: 3", "num_output: 4")
    status, _, err = cli(NET_COMMANDS[command](bad), capsys)
    assert_clean_error(status, err, "layer 'loss'", "(2, 4)", "(2, 3)")


@pytest.mark.parametrize("command", sorted(NET_COMMANDS))
def test_missing_net_file(files, capsys, command):
    status, _, err = cli(NET_COMMANDS[command]("nope.prototxt"), capsys)
    assert_clean_error(status, err, "nope.prototxt", "no such")


@pytest.mark.parametrize("command", sorted(NET_COMMANDS))
def test_directory_instead_of_a_file(files, capsys, command):
    (files / "adir.prototxt").mkdir()
    status, _, err = cli(NET_COMMANDS[command]("adir.prototxt"), capsys)
    assert_clean_error(status, err, "adir.prototxt", "directory")


@pytest.mark.parametrize("command", sorted(NET_COMMANDS))
def test_unreadable_file(files, capsys, command):
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        (files / "locked.prototxt").write_text(NET)
        os.chmod(files / "locked.prototxt", 0)
        path = "locked.prototxt"
    else:
        # root reads any file whatever its mode; a path through a regular file fails to open for anyone
        (files / "plain").write_text("not a directory")
        path = os.path.join("plain", "locked.prototxt")
    status, _, err = cli(NET_COMMANDS[command](path), capsys)
    assert_clean_error(status, err, "locked.prototxt", "cannot read")


@pytest.mark.parametrize("command", sorted(NET_COMMANDS))
def test_binary_garbage_as_a_net(files, capsys, command):
    (files / "junk.prototxt").write_bytes(bytes(range(256)) * 4)
    status, _, err = cli(NET_COMMANDS[command]("junk.prototxt"), capsys)
    assert_clean_error(status, err, "junk.prototxt")


@pytest.mark.parametrize("doc", [
    "name: !!python/name:os.system\n",
    "layer:\n  - !!python/object:collections.OrderedDict {name: x}\n",
    "name: !custom x\n",
])
def test_yaml_tags_anywhere_are_refused(files, capsys, doc):
    (files / "tagged.yaml").write_text(doc)
    status, _, err = cli(["convert", "tagged.yaml", "o.prototxt"], capsys)
    assert_clean_error(status, err, "tagged.yaml:", "is not allowed in configs")


def test_yaml_python_tags_are_refused(files, capsys):
    (files / "evil.yaml").write_text('name: !!python/object/apply:os.system ["echo pwned"]\n')
    for argv in (["time", "--model", "evil.yaml"], ["convert", "evil.yaml", "o.prototxt"]):
        status, out, err = cli(argv, capsys)
        assert_clean_error(status, err, "evil.yaml:1", "tag:yaml.org,2002:python/object/apply:os.system", "not allowed")
        assert "pwned" not in out


@pytest.mark.parametrize("command", ["test", "time", "gradcheck"])
def test_corrupt_weights(files, capsys, command):
    (files / "bad.caffemodel").write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    argv = NET_COMMANDS[command]("net.prototxt") + ["--weights", "bad.caffemodel"]
    status, _, err = cli(argv, capsys)
    assert_clean_error(status, err, "bad.caffemodel", "corrupt")


@pytest.mark.parametrize("command", ["test", "time", "gradcheck"])
def test_weights_of_the_wrong_shape(files, capsys, command):
    from numcaffe.net.net import Net
    from numcaffe.net.proto import caffe_pb2

    other = NET.replace("dim: 2 dim: 3 } shape", "dim: 2 dim: 5 } shape")
    (files / "other.prototxt").write_text(other)
    Net("other.prototxt", caffe_pb2.TEST).save("other.caffemodel")
    status, _, err = cli(NET_COMMANDS[command]("net.prototxt") + ["--weights", "other.caffemodel"], capsys)
    assert_clean_error(status, err, "other.caffemodel", "'ip'", "(3, 5)", "(3, 3)")


def test_missing_weights_file(files, capsys):
    status, _, err = cli(["test", "--model", "net.prototxt", "--weights", "nope.caffemodel"], capsys)
    assert_clean_error(status, err, "nope.caffemodel")


def test_truncated_caffemodel(files, capsys):
    from pathlib import Path
    real = Path(__file__).resolve().parents[1] / "fixtures" / "caffe" / "lenet_iter_10000.caffemodel"
    (files / "cut.caffemodel").write_bytes(real.read_bytes()[:5000])
    status, _, err = cli(["convert", "cut.caffemodel", "cut.prototxt"], capsys)
    assert_clean_error(status, err, "cut.caffemodel", "corrupt")


@pytest.mark.parametrize("argv,needle", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["time", "--model", "net.prototxt", "--iterations", "many"], "invalid int value: 'many'"),
    (["time"], "--model"),
    (["draw", "net.prototxt"], "output"),
    (["convert", "net.prototxt", "o.yaml", "--type", "nett"], "invalid choice: 'nett'"),
    (["plot", "x.log", "--bogus"], "unrecognized arguments: --bogus"),
    (["layers", "--markdwn"], "unrecognized arguments: --markdwn"),
    (["train", "--solver", "solver.prototxt", "--sigint_effect", "explode"], "sigint_effect"),
])
def test_bad_flags(files, capsys, argv, needle):
    status, _, err = cli(argv, capsys)
    assert_clean_error(status, err, needle)


def test_an_abbreviated_flag_is_refused_not_taken_for_the_full_one(files, capsys):
    status, _, err = cli(["train", "--solver", "solver.prototxt", "--proc", "2"], capsys)
    assert_clean_error(status, err, "unrecognized arguments: --proc 2", "--proc is not --procs",
                       "numcaffe train --help")
    assert not os.path.exists("snapshot_after_train")      # nothing ran
    status, _, err = cli(["train", "--solver", "solver.prototxt", "--proc=2"], capsys)
    assert_clean_error(status, err, "--proc is not --procs")
    status, _, err = cli(["--deb", "time", "--model", "net.prototxt"], capsys)
    assert_clean_error(status, err, "--deb is not --debug")


def test_no_subcommand_takes_abbreviations(capsys):
    """Every long flag of every subcommand, one letter short, is not read as the flag; for train (no
    positional arguments to get in the way) it is the one-line error, exit 1."""
    from numcaffe.tools.cli import _Parser, _long_options, build_parser
    parser = build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0].choices
    assert len(subparsers) >= 10
    tried = 0
    for name, sub in subparsers.items():
        assert isinstance(sub, _Parser), name
        options = _long_options(sub)
        for option in options:
            short = option[:-1]
            if len(short) > 3 and short not in options:
                found = sub._parse_optional(short)      # (action, flag, value) when argparse takes it as a flag
                assert found is None or found[0] is None, (name, short, found)
                tried += 1
                if name == "train":
                    status, _, err = cli(["train", short, "1"], capsys)
                    assert_clean_error(status, err, f"unrecognized arguments: {short} 1", f"{short} is not ")
    assert tried > 30


def test_caffe_single_dash_and_equals_spellings_still_work(files, capsys):
    for argv in (["time", "-model", "net.prototxt", "-iterations", "1"],
                 ["time", "-model=net.prototxt", "--iterations=1"]):
        status, _, err = cli(argv, capsys)
        assert status == 0, err


@pytest.mark.parametrize("argv,needle", [
    (["train", "--solver", "nope.prototxt"], "nope.prototxt"),
    (["test", "--model", "nope.prototxt", "--weights", "net.caffemodel"], "nope.prototxt"),
    (["parse-log", "nope.log"], "nope.log"),
    (["plot", "nope.log"], "nope.log"),
    (["compute-mean", "nope_lmdb"], "nope_lmdb"),
    (["convert-idx", "nope-images", "nope-labels", "out_lmdb"], "nope-images"),
])
def test_missing_files_in_every_command(files, capsys, argv, needle):
    status, _, err = cli(argv, capsys)
    assert_clean_error(status, err, needle)


def test_misspelled_solver_field(files, capsys):
    (files / "bad_solver.prototxt").write_text(SOLVER.replace("base_lr", "base_rl"))
    status, _, err = cli(["train", "--solver", "bad_solver.prototxt"], capsys)
    assert_clean_error(status, err, "bad_solver.prototxt:2", "base_rl", "did you mean 'base_lr'")


def test_debug_shows_the_traceback(files, capsys):
    with pytest.raises(Exception) as e:
        main(["--debug", "time", "--model", "nope.prototxt"])
    assert "nope.prototxt" in str(e.value)
