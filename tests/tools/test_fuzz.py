"""Fuzzing the loaders and the command line with mutated prototxt, YAML and binary model files.

A seeded mutator (deterministic, so a failure reproduces) damages real files:
deleting, repeating and swapping spans, inserting syntax characters, control
bytes and hostile numbers (huge, negative, NaN), flipping and truncating bytes.
Every outcome must be a success or a clean :class:`NumcaffeError` (exit status 1
on the command line, no traceback); never another exception, a hang (each case
has a time limit) or a huge allocation: the address space is limited while the
fuzzer runs and the blob size cap is lowered, so any allocation that a hostile
shape can drive past the cap shows up as a MemoryError, which fails the test.
"""
import random
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from numcaffe.net import blob as blob_module
from numcaffe.net import upgrade
from numcaffe.net.config import read_message
from numcaffe.net.errors import NumcaffeError
from numcaffe.net.net import TEST, TRAIN, Net
from numcaffe.net.proto import caffe_pb2
from numcaffe.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "caffe"
SEED = 20261123
CASE_SECONDS = 20          # a case slower than this is a hang
EXTRA_ADDRESS_SPACE = 3 << 30

SMALL_NET = """name: "small"
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "p" top: "p" }
layer { name: "ip" type: "InnerProduct" bottom: "p" top: "ip" inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "dummy" type: "DummyData" top: "d" dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "uniform" } } }
layer { name: "sum" type: "Eltwise" bottom: "ip" bottom: "d" top: "s" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "t" top: "loss" }
"""

V1_NET = """name: "v1"
input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip" inner_product_param { num_output: 2 } }
"""

SOLVER = 'net: "small.prototxt"\nbase_lr: 0.01\nmax_iter: 10\nlr_policy: "step"\nstepsize: 5\ngamma: 0.1\n'

HOSTILE_NUMBERS = ["0", "-1", "2147483647", "4294967295", "99999999999999999999", "1e40", "-1e40", "nan",
                   "inf", "65536", "1000000", "3.5", "0x7f", "-0"]
SYNTAX_BITS = ["{", "}", ":", '"', "'", "\\", "[", "]", "- ", "\n", "  ", "#", "&a", "*a", "!!python/name:os.system ",
               "!tag ", "<<: ", "layer {", "}}}}", "\x00", "\xff", "é", "\t", "---\n", "...", "? "]
FIELDS = ["dim", "num_output", "kernel_size", "stride", "pad", "batch_size", "group", "axis", "top", "bottom",
          "type", "name", "loss_weight", "lr_mult", "shape", "input_dim", "include", "phase", "engine"]


def _mutate_text(text, rng):
    for _ in range(rng.randint(1, 4)):
        n = len(text)
        op = rng.randrange(8)
        i = rng.randrange(n + 1)
        j = min(n, i + rng.randint(1, 40))
        if op == 0:                                  # delete a span
            text = text[:i] + text[j:]
        elif op == 1:                                # repeat a span
            text = text[:j] + text[i:j] * rng.randint(1, 5) + text[j:]
        elif op == 2:                                # insert syntax
            text = text[:i] + rng.choice(SYNTAX_BITS) + text[i:]
        elif op == 3:                                # a hostile number in place of a number
            digits = [k for k, c in enumerate(text) if c.isdigit()]
            if digits:
                k = rng.choice(digits)
                e = k
                while e < n and (text[e].isdigit() or text[e] == "."):
                    e += 1
                text = text[:k] + rng.choice(HOSTILE_NUMBERS) + text[e:]
        elif op == 4:                                # a field with a hostile value
            text = text[:i] + f" {rng.choice(FIELDS)}: {rng.choice(HOSTILE_NUMBERS)} " + text[i:]
        elif op == 5:                                # swap two lines
            lines = text.split("\n")
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        elif op == 6:                                # truncate
            text = text[:i]
        else:                                        # deep nesting
            depth = rng.choice([50, 500, 5000])
            opener, closer = rng.choice([("layer { ", "} "), ("[", "]"), ("{", "}"), ("a: {", "}")])
            text = text[:i] + opener * depth + closer * depth + text[i:]
    return text


def _mutate_bytes(data, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        n = len(data)
        op = rng.randrange(5)
        i = rng.randrange(n + 1)
        if op == 0 and n:                            # flip a byte
            data[min(i, n - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:                                # truncate
            del data[i:]
        elif op == 2:                                # random bytes
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3:                                # a huge varint
            data[i:i] = b"\xff" * rng.randint(1, 12) + b"\x01"
        else:                                        # a length-delimited field claiming a huge length
            data[i:i] = bytes([rng.choice([0x0A, 0x12, 0x3A, 0x42, 0x52])]) + b"\xff\xff\xff\xff\x07"
    return bytes(data)


def _small_model():
    """A small weights file of SMALL_NET (binary NetParameter with blobs)."""
    from numcaffe.net.config import parse_text
    net = Net(parse_text(SMALL_NET, caffe_pb2.NetParameter()), TEST)
    return net.to_proto().SerializeToString()


@contextmanager
def _guarded():
    """Limit the address space, lower the blob cap, time-limit each case, silence upgrade notices."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    limit = used + EXTRA_ADDRESS_SPACE
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    saved_cap, saved_notices = blob_module.MAX_BLOB_COUNT, upgrade.NOTICES
    blob_module.MAX_BLOB_COUNT = 1 << 22
    upgrade.NOTICES = False
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

    def on_alarm(signum, frame):
        raise TimeoutError("fuzz case took too long (a hang?)")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        blob_module.MAX_BLOB_COUNT = saved_cap
        upgrade.NOTICES = saved_notices


def _outcome(fn):
    """'ok', 'error' (a NumcaffeError) or raise with the offending exception."""
    signal.alarm(CASE_SECONDS)
    try:
        fn()
        return "ok"
    except NumcaffeError:
        return "error"
    finally:
        signal.alarm(0)


def _as_bytes(data):
    """A case's file content: mutated bytes as they are, mutated text (lone surrogates and all) in UTF-8."""
    return data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")


def _save_failure(tmp_path, name, data, exc):
    keep = tmp_path / f"failing_{name}"
    keep.write_bytes(_as_bytes(data))
    return AssertionError(f"fuzz case {keep} raised {type(exc).__name__}: {exc}")


def _text_seeds():
    seeds = {"small.prototxt": SMALL_NET, "v1.prototxt": V1_NET, "solver.prototxt": SOLVER}
    for p in sorted((ROOT / "configs").rglob("*")):
        if p.suffix in (".prototxt", ".yaml"):
            seeds[p.name] = p.read_text()
    return seeds


def test_fuzz_loaders(tmp_path):
    """A few hundred mutated configs and model files through read_message and Net construction."""
    rng = random.Random(SEED)
    seeds = _text_seeds()
    from numcaffe.net.config import to_yaml, parse_text
    seeds["small.yaml"] = to_yaml(parse_text(SMALL_NET, caffe_pb2.NetParameter()))
    model = _small_model()
    state = (FIXTURES / "lenet_iter_10000.solverstate").read_bytes()
    counts = {"ok": 0, "error": 0}
    cases = []
    names = sorted(seeds)
    for k in range(260):
        name = names[k % len(names)]
        cases.append((f"{k}_{name}", _mutate_text(seeds[name], rng)))
    for k in range(60):
        cases.append((f"{k}_model.caffemodel", _mutate_bytes(model, rng)))
    for k in range(20):
        cases.append((f"{k}_state.solverstate", _mutate_bytes(state[:4000], rng)))
    with _guarded():
        for name, data in cases:
            path = tmp_path / name
            path.write_bytes(_as_bytes(data))
            kind = caffe_pb2.SolverParameter if "solver" in name else \
                caffe_pb2.SolverState if name.endswith(".solverstate") else caffe_pb2.NetParameter

            def load():
                msg = read_message(str(path), kind)
                if kind is caffe_pb2.NetParameter and not name.endswith(".caffemodel"):
                    for phase in (TRAIN, TEST):
                        Net(msg, phase, base_dir=str(tmp_path))

            def load_weights():
                from numcaffe.net.config import parse_text as pt
                Net(pt(SMALL_NET, caffe_pb2.NetParameter()), TEST, weights=str(path))

            try:
                counts[_outcome(load)] += 1
                if name.endswith(".caffemodel"):
                    counts[_outcome(load_weights)] += 1
            except Exception as e:  # noqa: BLE001 - the point of the test
                raise _save_failure(tmp_path, name, data, e) from e
    # the mutations must exercise both sides
    assert counts["ok"] > 20 and counts["error"] > 100, counts


def test_fuzz_command_line(tmp_path, capsys, monkeypatch):
    """A smaller sample through `numcaffe convert` and `numcaffe draw`: exit 0 or 1, never a traceback."""
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED + 1)
    seeds = _text_seeds()
    names = sorted(seeds)
    model = _small_model()
    cases = [(f"{k}_{names[k % len(names)]}", _mutate_text(seeds[names[k % len(names)]], rng)) for k in range(50)]
    cases += [(f"{k}_m.caffemodel", _mutate_bytes(model, rng)) for k in range(10)]
    statuses = []
    with _guarded():
        for name, data in cases:
            path = tmp_path / name
            path.write_bytes(_as_bytes(data))
            commands = [["convert", name, "out.yaml"], ["convert", name, "out.pb"]]
            if "solver" not in name:
                commands.append(["draw", name, "out.dot"])
            for argv in commands:
                try:
                    signal.alarm(CASE_SECONDS)
                    try:
                        status = main(argv)
                    except SystemExit as e:
                        status = e.code
                    finally:
                        signal.alarm(0)
                except Exception as e:  # noqa: BLE001
                    raise _save_failure(tmp_path, name, data, e) from e
                err = capsys.readouterr().err
                assert status in (0, 1), (argv, status, err)
                assert "Traceback" not in err, (argv, err)
                if status == 1:
                    assert sum(l.startswith("numcaffe: error: ") for l in err.splitlines()) == 1, err
                statuses.append(status)
    assert statuses.count(0) > 10 and statuses.count(1) > 10, statuses


HOSTILE = [
    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 50000 dim: 40000 } } }',
    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
    'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4294967295 } }',
    'layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1000000 dim: 1000000 } } }',
    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
    'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
    'convolution_param { num_output: 4 kernel_size: 3 pad: 2000000000 } }',
    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
    'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
    'convolution_param { num_output: 400000000 kernel_size: 3 group: 1 } }',
    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
    'layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 2000000000 } }',
    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
    'layer { name: "e" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 100000 input_dim: 100000 } }',
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_shapes_are_errors_not_allocations(tmp_path, monkeypatch, body):
    """At the real element cap, with the per-blob byte limit of a small machine, under the address-space limit."""
    monkeypatch.setattr(blob_module, "MAX_BLOB_BYTES", 256 << 20)
    path = tmp_path / "hostile.prototxt"
    path.write_text('name: "h"\n' + body + "\n")
    with _guarded():
        blob_module.MAX_BLOB_COUNT = 2 ** 31 - 1          # the real cap, not the fuzzer's lower one
        with pytest.raises(NumcaffeError) as e:
            signal.alarm(CASE_SECONDS)
            try:
                Net(str(path), TRAIN)
            finally:
                signal.alarm(0)
    assert "shape" in str(e.value) or "GiB" in str(e.value) or "elements" in str(e.value), str(e.value)
