"""Hostile inputs (issue 12, section 2): each ends in one clean line, exit status 1, no traceback.

Every test runs the real command line in a subprocess, as a user would, so a signal death
(SIGBUS from a truncated LMDB) or a hang would show here as it would in a shell; and each
checks that the files the user gave are still there, unchanged.
"""
import hashlib
import os
import signal
import subprocess
import sys

import pytest

NET = """name: "e"
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }
"""


def run(cwd, *argv, timeout=60, env=None):
    """``numcaffe argv...`` in a new process: (exit status, stdout, stderr)."""
    full_env = {**os.environ, "GLOG_minloglevel": "1", **(env or {})}
    res = subprocess.run([sys.executable, "-m", "numcaffe.tools.cli", *argv], cwd=cwd, capture_output=True,
                         text=True, timeout=timeout, env=full_env)
    return res.returncode, res.stdout, res.stderr


def assert_one_clean_line(status, err, *needles):
    assert status == 1, (status, err)    # not a signal death (negative), not success
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("numcaffe: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def digests(folder):
    """{relative path: sha256} of every file under ``folder``: what must not be lost."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ----------------------------------------------------------------------------- YAML alias bombs

BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, k in zip([None, "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi"))


def test_the_bomb_is_small_and_would_expand_to_hundreds_of_millions():
    import yaml
    assert len(BOMB) < 400
    node = yaml.SafeLoader(BOMB).get_single_node()

    def expanded(n):                 # by the same rule as the reader, for the test's own check
        memo = {}

        def size(m):
            if id(m) not in memo:
                kids = m.value if isinstance(m, yaml.SequenceNode) else (
                    [x for kv in m.value for x in kv] if isinstance(m, yaml.MappingNode) else [])
                memo[id(m)] = 1 + sum(size(k) for k in kids)
            return memo[id(m)]
        return size(n)
    assert expanded(node) > 10 ** 8


@pytest.mark.parametrize("argv", [["convert", "bomb.yaml", "out.prototxt"],
                                  ["draw", "bomb.yaml", "out.dot"],
                                  ["time", "--model", "bomb.yaml", "--iterations", "1"]])
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, argv):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    before = digests(tmp_path)
    status, _, err = run(tmp_path, *argv, timeout=30)
    assert_one_clean_line(status, err, "bomb.yaml: YAML aliases expand to more than", "refuses alias bombs")
    assert digests(tmp_path) == before            # and no half-written output


def test_a_yaml_solver_alias_bomb_is_refused(tmp_path):
    (tmp_path / "solver.yaml").write_text(BOMB)
    status, _, err = run(tmp_path, "train", "--solver", "solver.yaml", timeout=30)
    assert_one_clean_line(status, err, "solver.yaml: YAML aliases expand to more than")


def test_a_recursive_yaml_alias_is_refused(tmp_path):
    (tmp_path / "rec.yaml").write_text("name: x\nlayer: &l [{name: a, type: Input}, *l]\n")
    status, _, err = run(tmp_path, "convert", "rec.yaml", "out.prototxt", timeout=30)
    assert_one_clean_line(status, err, "rec.yaml:2:", "contains itself")
    assert not (tmp_path / "out.prototxt").exists()


SHARED_YAML = """name: shared
layer:
  - {name: in, type: Input, top: [x], input_param: {shape: {dim: [2, 3]}}}
  - name: ip1
    type: InnerProduct
    bottom: x
    top: ip1
    param: &lr [{lr_mult: 1}, {lr_mult: 2}]
    inner_product_param: &ipp {num_output: 3, weight_filler: {type: xavier}}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2, param: *lr, inner_product_param: *ipp}
"""


def test_a_yaml_net_with_legitimate_aliases_still_loads(tmp_path):
    (tmp_path / "net.yaml").write_text(SHARED_YAML)
    status, out, err = run(tmp_path, "convert", "net.yaml", "net.prototxt")
    assert status == 0, err
    from numcaffe.net.config import read_message
    from numcaffe.net.proto import caffe_pb2
    net = read_message(str(tmp_path / "net.prototxt"), caffe_pb2.NetParameter)
    assert [l.name for l in net.layer] == ["in", "ip1", "ip2"]
    assert [p.lr_mult for p in net.layer[2].param] == [1, 2]
    assert net.layer[2].inner_product_param.num_output == 3
    assert net.layer[2].inner_product_param.weight_filler.type == "xavier"


# ----------------------------------------------------------------------------- a net with no layers

@pytest.fixture(params=["empty.prototxt", "empty.yaml"])
def empty_net(request, tmp_path):
    (tmp_path / request.param).write_text("# nothing\n")
    (tmp_path / "solver.prototxt").write_text(f'net: "{request.param}"\nbase_lr: 0.01\nmax_iter: 2\n'
                                              f'lr_policy: "fixed"\nsolver_mode: CPU\n')
    status, _, err = run(tmp_path, "convert", request.param, "empty.caffemodel")
    assert status == 0, err
    return tmp_path, request.param


def test_time_of_an_empty_net_is_a_clean_result(empty_net):
    folder, net = empty_net
    status, out, err = run(folder, "time", "--model", net, "--iterations", "2", env={"GLOG_minloglevel": "0"})
    assert status == 0 and "Traceback" not in err, err
    assert "Average Forward pass: " in err and "*** Benchmark ends ***" in err


def test_gradcheck_draw_and_convert_of_an_empty_net_are_clean_results(empty_net):
    folder, net = empty_net
    status, out, err = run(folder, "gradcheck", net)
    assert (status, err) == (0, "") and "checked 0 layer(s)" in out
    status, out, err = run(folder, "draw", net, "empty.dot")
    assert (status, err) == (0, "") and "digraph" in (folder / "empty.dot").read_text()
    status, out, err = run(folder, "convert", net, "back.prototxt")
    assert (status, err) == (0, "") and (folder / "back.prototxt").read_text() == ""


@pytest.mark.parametrize("argv, needle", [
    (["test", "--model", "NET", "--weights", "empty.caffemodel", "--iterations", "1"],
     "NET: the net has no layers in the TEST phase; nothing to score"),
    (["train", "--solver", "solver.prototxt"],
     "solver.prototxt: its train net has no layers in the TRAIN phase; nothing to train"),
    (["convert", "NET", "empty.onnx"],
     "NET: the net has no layers in the TEST phase; an ONNX model needs at least one output"),
])
def test_scoring_training_or_exporting_an_empty_net_is_one_clean_line(empty_net, argv, needle):
    folder, net = empty_net
    before = digests(folder)
    status, _, err = run(folder, *[a.replace("NET", net) for a in argv])
    assert_one_clean_line(status, err, needle.replace("NET", net))
    assert digests(folder) == before          # no snapshot, no half-written model


# ----------------------------------------------------------------------------- a truncated LMDB

DATA_NET = """name: "d"
layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 50 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def write_lmdb(path, n=2000):
    """A real LMDB of n 1x8x8 Datums, written by numcaffe's convert tools' writer."""
    import numpy as np

    from numcaffe.net.data.db import array_datum, open_writer
    rng = np.random.default_rng(0)
    with open_writer(str(path)) as w:
        for i in range(n):
            w.put(b"%08d" % i, array_datum(rng.integers(0, 255, (1, 8, 8), dtype=np.uint8), i % 2)
                  .SerializeToString())


@pytest.fixture
def data_folder(tmp_path):
    write_lmdb(tmp_path / "db")
    (tmp_path / "net.prototxt").write_text(DATA_NET)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nmax_iter: 4\nlr_policy: "fixed"\n'
                                              'solver_mode: CPU\nsnapshot: 2\nsnapshot_prefix: "snap"\n')
    from numcaffe.net import TEST, Net
    Net(str(tmp_path / "net.prototxt"), TEST).save(str(tmp_path / "net.caffemodel"))
    return tmp_path


def test_a_truncated_lmdb_reads_as_a_signal_death_without_the_check(data_folder):
    """The hazard itself: lmdb walking a data.mdb cut short touches a mapped page past its end."""
    data = data_folder / "db" / "data.mdb"
    assert data.stat().st_size > 120_000
    os.truncate(data, 120_000)
    code = ("import lmdb\nenv = lmdb.open('db', readonly=True, lock=False)\n"
            "print(sum(1 for _ in env.begin().cursor()))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=data_folder, capture_output=True, timeout=60)
    assert res.returncode == -signal.SIGBUS


@pytest.mark.parametrize("size", [0, 8_000, 120_000])
@pytest.mark.parametrize("argv", [["test", "--model", "net.prototxt", "--weights", "net.caffemodel", "--iterations", "40"],
                                  ["train", "--solver", "solver.prototxt"],
                                  ["compute-mean", "db", "mean.binaryproto"]])
def test_a_truncated_lmdb_is_one_clean_line_not_sigbus(data_folder, argv, size):
    os.truncate(data_folder / "db" / "data.mdb", size)
    before = digests(data_folder)
    status, _, err = run(data_folder, *argv)
    assert_one_clean_line(status, err, "LMDB database 'db' is truncated: data.mdb ")
    assert digests(data_folder) == before       # no snapshot, no mean file, the database as it was


def test_a_damaged_lmdb_page_is_one_clean_line(data_folder):
    with open(data_folder / "db" / "data.mdb", "r+b") as f:
        f.seek(4096 * 10)
        f.write(b"\xff" * 4096 * 30)              # pages of the tree overwritten, the size intact
    status, _, err = run(data_folder, "test", "--model", "net.prototxt", "--weights", "net.caffemodel",
                         "--iterations", "40")
    assert_one_clean_line(status, err, "LMDB database 'db' is damaged: ", "MDB_CORRUPTED")


def test_the_intact_lmdb_scores(data_folder):
    status, out, err = run(data_folder, "test", "--model", "net.prototxt", "--weights", "net.caffemodel",
                           "--iterations", "40")
    assert status == 0, err


# ----------------------------------------------------------------------------- an image decompression bomb

def write_png(path, width, height):
    """A real 1-bit grey PNG of zeros, compressed row by row (Pillow's own writer takes 4 s for 40000x40000)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)            # filter byte 0, then the packed bits
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_the_png_writer_writes_what_pillow_reads(tmp_path):
    from PIL import Image
    write_png(tmp_path / "small.png", 37, 5)
    with Image.open(tmp_path / "small.png") as im:
        im.load()
        assert (im.mode, im.size) == ("1", (37, 5)) and im.getextrema() == (0, 0)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    write_png(folder / "bomb.png", 40000, 40000)      # twice Pillow's limit and more: its DecompressionBombError
    write_png(folder / "big.png", 10000, 10000)        # between one and two limits: Pillow only warns
    write_png(folder / "ok.png", 8, 8)
    assert (folder / "bomb.png").stat().st_size < 250_000
    return folder


IMAGE_NET = """name: "i"
layer { name: "data" type: "ImageData" top: "data" top: "label"
        image_data_param { source: "list.txt" batch_size: 1 is_color: false } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _image_folder(tmp_path, bombs, name):
    import shutil
    for n in ("ok.png", name):
        shutil.copy(bombs / n, tmp_path / n)
    (tmp_path / "list.txt").write_text(f"{name} 0\nok.png 1\n")
    (tmp_path / "net.prototxt").write_text(IMAGE_NET)
    return tmp_path


@pytest.mark.parametrize("name, pixels", [("bomb.png", "40000x40000 = 1600000000 pixels"),
                                          ("big.png", "10000x10000 = 100000000 pixels")])
def test_an_image_bomb_in_an_image_list_is_one_clean_line(tmp_path, bombs, name, pixels):
    from PIL import Image
    folder = _image_folder(tmp_path, bombs, name)
    before = digests(folder)
    status, _, err = run(folder, "time", "--model", "net.prototxt", "--iterations", "1")
    assert_one_clean_line(status, err, f"'{name}': an image of {pixels}, more than the "
                          f"{Image.MAX_IMAGE_PIXELS} pixels numcaffe decodes")
    assert digests(folder) == before


@pytest.mark.parametrize("encoded", [False, True])
def test_an_image_bomb_in_convert_imageset_is_one_clean_line(tmp_path, bombs, encoded):
    folder = _image_folder(tmp_path, bombs, "bomb.png")
    before = digests(folder)
    argv = ["convert-imageset", "./", "list.txt", "out_lmdb"] + (["--encoded", "--encode_type", "png"] if encoded else [])
    status, _, err = run(folder, *argv)
    assert_one_clean_line(status, err, "bomb.png: an image of 40000x40000 = 1600000000 pixels, more than")
    assert digests(folder) == before            # no database, not even a partial one


def test_load_image_refuses_the_bomb_too(bombs):
    from numcaffe.net.data.db import DataError
    from numcaffe.net.pycaffe.io import load_image
    with pytest.raises(DataError, match=r"bomb\.png: an image of 40000x40000 = 1600000000 pixels"):
        load_image(str(bombs / "bomb.png"))
    assert load_image(str(bombs / "ok.png"), color=False).shape == (8, 8, 1)


# ----------------------------------------------------------------------------- a net bigger than the machine

HUGE_CONV = """name: "big"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 2000 dim: 2000 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 1000 } }
"""


@pytest.mark.parametrize("argv", [["time", "--model", "big.prototxt", "--iterations", "1"],
                                  ["gradcheck", "big.prototxt"]])
def test_a_terabyte_column_buffer_is_refused_before_it_is_allocated(tmp_path, argv):
    (tmp_path / "big.prototxt").write_text(HUGE_CONV)
    before = digests(tmp_path)
    status, _, err = run(tmp_path, *argv)
    assert_one_clean_line(status, err, "net 'big' needs at least 10.9 TiB by layer 'conv' "
                          "(Convolution): blobs 61.1 MiB, parameters 45.8 MiB, workspace 10.9 TiB "
                          "(the scratch arrays of layer 'conv'); this machine has ", " available")
    assert digests(tmp_path) == before


def test_the_sum_of_the_layers_is_checked_against_the_limit(tmp_path):
    layers = "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "{"x" if i == 0 else f"r{i - 1}"}" top: "r{i}" }}\n'
                     for i in range(8))
    (tmp_path / "deep.prototxt").write_text(
        'name: "deep"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { dim: 64 dim: 1000 } } }\n'
        + layers)
    # 9 tops of 64,000 floats, 256,000 bytes each: the fourth passes 1,000,000 bytes
    status, _, err = run(tmp_path, "time", "--model", "deep.prototxt", "--iterations", "1",
                         env={"NUMCAFFE_MAX_NET_BYTES": "1000000"})
    assert_one_clean_line(status, err, "deep.prototxt: net 'deep' needs at least 1000 KiB by layer 'r2' (ReLU): blobs 1000 KiB, "
                          "parameters 0 bytes; this machine has 977 KiB available")
    status, _, err = run(tmp_path, "time", "--model", "deep.prototxt", "--iterations", "1",
                         env={"NUMCAFFE_MAX_NET_BYTES": "0"})
    assert status == 0, err


# ----------------------------------------------------------------------------- Ctrl-C during start-up

INTERRUPT = "import os, signal\nos.kill(os.getpid(), signal.SIGINT)   # as Ctrl-C would, right here\n"


def test_ctrl_c_while_importing_is_one_line_and_status_130(tmp_path):
    """A layer plugin (entry point group numcaffe.layers) is imported with numpy and Numba, before any
    command runs; one that is interrupted stands for Ctrl-C pressed during those first seconds."""
    dist = tmp_path / "interrupting_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: interrupting-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[numcaffe.layers]\nStop = interrupting_plugin:Stop\n")
    (tmp_path / "interrupting_plugin.py").write_text(INTERRUPT + "Stop = None\n")
    (tmp_path / "net.prototxt").write_text(NET)
    before = digests(tmp_path)
    status, out, err = run(tmp_path, "time", "--model", "net.prototxt", "--iterations", "1",
                           env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert (status, err, out) == (130, "numcaffe: interrupted\n", "")
    assert digests(tmp_path) == before


def test_ctrl_c_while_building_the_net_is_one_line_and_status_130(tmp_path):
    (tmp_path / "stop_layer.py").write_text(INTERRUPT.replace("import", "def setup_hook():\n    import", 1)
                                            .replace("\nos.kill", "\n    os.kill") + '''
import numcaffe.net.pycaffe as caffe


class Stop(caffe.Layer):
    def setup(self, bottom, top):
        setup_hook()

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
''')
    (tmp_path / "net.prototxt").write_text(NET + 'layer { name: "stop" type: "Python" bottom: "ip" top: "s" '
                                                 'python_param { module: "stop_layer" layer: "Stop" } }\n')
    for argv in (["time", "--model", "net.prototxt", "--iterations", "1"], ["gradcheck", "net.prototxt"]):
        status, out, err = run(tmp_path, *argv, env={"PYTHONPATH": str(tmp_path)})
        assert (status, err, out) == (130, "numcaffe: interrupted\n", ""), argv


# ----------------------------------------------------------------------------- NaN/Inf: our line only

DIVERGING = """name: "n"
layer { name: "in" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "ip"
        inner_product_param { num_output: 30 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "t" top: "loss" }
"""


def test_numpy_runtime_warnings_do_not_precede_the_nan_message(tmp_path):
    """base_lr 1e30 overflows float32 in the next forward's matmul (numpy warns there) and the
    solver's own check stops the run: its line is the only one."""
    (tmp_path / "net.prototxt").write_text(DIVERGING)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 1e30\nmax_iter: 20\nlr_policy: "fixed"\n'
                                              'solver_mode: CPU\nmomentum: 0.9\nsnapshot_prefix: "snap"\n')
    status, _, err = run(tmp_path, "train", "--solver", "solver.prototxt")
    assert_one_clean_line(status, err, "iteration 1: the first non-finite value is the top blob",
                          "the state just before it is saved in snap_iter_1.solverstate")
    assert "RuntimeWarning" not in err
    assert (tmp_path / "snap_iter_1.caffemodel").is_file()    # the weights from before the NaN are kept


# ----------------------------------------------------------------------------- weights of the wrong size

SMALL = """name: "w"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 3 } }
"""


@pytest.fixture
def weights_folder(tmp_path):
    from numcaffe.net import TEST, Net
    from numcaffe.net.proto import caffe_pb2
    (tmp_path / "net.prototxt").write_text(SMALL)
    Net(str(tmp_path / "net.prototxt"), TEST).save(str(tmp_path / "good.caffemodel"))
    model = caffe_pb2.NetParameter()
    model.ParseFromString((tmp_path / "good.caffemodel").read_bytes())
    del model.layer[1].blobs[0].data[5:]            # shape (3, 3) kept, 5 of its 9 values left
    (tmp_path / "short.caffemodel").write_bytes(model.SerializeToString())
    wide = (tmp_path / "net.prototxt").read_text().replace("dim: 3 }", "dim: 4 }")
    (tmp_path / "wide.prototxt").write_text(wide)
    Net(str(tmp_path / "wide.prototxt"), TEST).save(str(tmp_path / "wide.h5"))
    return tmp_path


@pytest.mark.parametrize("argv, needle", [
    (["test", "--model", "net.prototxt", "--weights", "short.caffemodel", "--iterations", "1"],
     "short.caffemodel: layer 'ip' parameter 0: blob holds 5 values but its shape (3, 3) needs 9"),
    (["time", "--model", "short.caffemodel", "--iterations", "1"],
     "short.caffemodel: layer 'ip' (InnerProduct) parameter 0: blob holds 5 values but its shape (3, 3) needs 9"),
    (["test", "--model", "net.prototxt", "--weights", "wide.h5", "--iterations", "1"],
     "wide.h5: layer 'ip' parameter 0: the file has shape (3, 4), the net expects (3, 3)"),
    (["test", "--model", "net.prototxt", "--weights", "good.caffemodel,wide.h5", "--iterations", "1"],
     "wide.h5: layer 'ip' parameter 0: the file has shape (3, 4), the net expects (3, 3)"),
])
def test_weights_of_the_wrong_size_name_the_file_the_layer_and_both_sizes(weights_folder, argv, needle):
    before = digests(weights_folder)
    status, _, err = run(weights_folder, *argv)
    assert_one_clean_line(status, err, needle)
    assert digests(weights_folder) == before


# ----------------------------------------------------------------------------- gradcheck: the report only

def test_gradcheck_prints_its_report_only_unless_asked(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    status, out, err = run(tmp_path, "gradcheck", "net.prototxt", "--max-checks", "5", env={"GLOG_minloglevel": "0"})
    assert (status, err) == (0, "")
    assert out.splitlines()[0].startswith("layer 'in' (Input)") and out.splitlines()[-1].startswith("checked ")
    status, out, err = run(tmp_path, "gradcheck", "net.prototxt", "--max-checks", "5", "--verbose",
                           env={"GLOG_minloglevel": "0"})
    assert status == 0 and "Creating Layer ip" in err and "Network initialization done." in err
    assert out.splitlines()[-1].startswith("checked ")


def test_an_image_bomb_met_by_the_prefetch_thread_in_training_is_one_clean_line(tmp_path, bombs):
    """The first image sets the shapes at setup; the bomb is second, decoded by the batch-loading thread."""
    folder = _image_folder(tmp_path, bombs, "bomb.png")
    (folder / "list.txt").write_text("ok.png 1\nbomb.png 0\n")
    (folder / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nmax_iter: 5\nlr_policy: "fixed"\n'
                                            'solver_mode: CPU\nsnapshot_after_train: false\n')
    before = digests(folder)
    status, _, err = run(folder, "train", "--solver", "solver.prototxt")
    assert_one_clean_line(status, err, "layer 'data' (ImageData): 'bomb.png': an image of 40000x40000")
    assert digests(folder) == before
