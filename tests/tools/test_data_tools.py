"""numcaffe convert-idx / convert-imageset / compute-mean / data, on small generated files."""
import gzip
import os
import struct

import numpy as np
import pytest

from numcaffe.net.data.db import DataError, open_reader, parse_datum
from numcaffe.net.proto import caffe_pb2
from numcaffe.tools import cli
from numcaffe.tools import data as data_tool
from numcaffe.tools.convert_idx import read_idx


def idx_bytes(array, code=0x08):
    array = np.asarray(array)
    head = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, raw, gz=False):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)
    return str(path)


def records(db, backend="lmdb"):
    out = []
    with open_reader(db, backend) as r:
        for key, value in r.read(r.count()):
            out.append((key, parse_datum(value)))
    return out


def run_cli(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


RS = np.random.RandomState(5)
IMAGES = RS.randint(0, 256, (12, 4, 3)).astype(np.uint8)
LABELS = RS.randint(0, 10, 12).astype(np.uint8)


# ------------------------------------------------------------------ IDX


def test_read_idx_plain_and_gzipped(tmp_path):
    a = write(tmp_path / "a", idx_bytes(IMAGES))
    b = write(tmp_path / "b.gz", idx_bytes(IMAGES), gz=True)
    np.testing.assert_array_equal(read_idx(a), IMAGES)
    np.testing.assert_array_equal(read_idx(b, 2051), IMAGES)
    ints = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    np.testing.assert_array_equal(read_idx(write(tmp_path / "c", idx_bytes(ints, 0x0C))), ints)


@pytest.mark.parametrize("raw,pattern", [
    (b"\x00\x00", "too short"),
    (b"\x01\x02\x08\x03" + b"\x00" * 12, "bad IDX magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01x", "bad IDX magic"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "cut short"),
    (idx_bytes(IMAGES)[:-5], "truncated"),
    (idx_bytes(IMAGES) + b"xx", "trailing"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, raw, pattern):
    with pytest.raises(DataError, match=pattern):
        read_idx(write(tmp_path / "f", raw))


def test_read_idx_checks_the_expected_magic(tmp_path):
    with pytest.raises(DataError, match="swapped"):
        read_idx(write(tmp_path / "labels", idx_bytes(LABELS)), 2051)


def test_corrupt_gzip_is_one_clear_error(tmp_path):
    raw = gzip.compress(idx_bytes(IMAGES))
    with pytest.raises(DataError, match="corrupt|truncated"):
        read_idx(write(tmp_path / "f.gz", raw[:len(raw) // 2]))


# ------------------------------------------------------------------ convert-idx


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_idx_writes_convert_mnist_data_records(tmp_path, capsys, backend):
    imgs = write(tmp_path / "imgs.gz", idx_bytes(IMAGES), gz=True)
    lbls = write(tmp_path / "lbls", idx_bytes(LABELS))
    db = str(tmp_path / "db")
    status, out, err = run_cli(["convert-idx", imgs, lbls, db, "--backend", backend], capsys)
    assert status == 0, err
    recs = records(db, backend)
    assert [k for k, _ in recs] == [b"%08d" % i for i in range(12)]
    for i, (_, d) in enumerate(recs):
        assert (d.channels, d.height, d.width, d.label, d.encoded) == (1, 4, 3, LABELS[i], False)
        assert d.data == IMAGES[i].tobytes()
    # a second run does not overwrite (Caffe refuses an existing database too)
    status, out, err = run_cli(["convert-idx", imgs, lbls, db, "--backend", backend], capsys)
    assert status == 1 and "already exists" in err and err.count("\n") == 1


def test_convert_idx_count_mismatch_is_an_error(tmp_path, capsys):
    imgs = write(tmp_path / "imgs", idx_bytes(IMAGES))
    lbls = write(tmp_path / "lbls", idx_bytes(LABELS[:5]))
    status, out, err = run_cli(["convert-idx", imgs, lbls, str(tmp_path / "db")], capsys)
    assert status == 1 and "12 images" in err and "5 labels" in err
    assert not os.path.exists(tmp_path / "db") and not os.path.exists(tmp_path / "db.partial")


def test_lmdb_map_grows_past_a_tiny_initial_size(tmp_path, monkeypatch):
    from numcaffe.net.data import db as dbmod
    from numcaffe.tools.convert_idx import write_idx_db
    monkeypatch.setattr(dbmod, "INITIAL_MAP_SIZE", 64 << 10)       # 64 KiB
    monkeypatch.setattr(dbmod, "COMMIT_EVERY", 50)
    big = RS.randint(0, 256, (300, 28, 28)).astype(np.uint8)        # ~240 KB of pixels
    db = str(tmp_path / "db")
    write_idx_db(big, np.zeros(300, np.uint8), db)
    recs = records(db)
    assert len(recs) == 300 and recs[-1][1].data == big[-1].tobytes()


# ------------------------------------------------------------------ convert-imageset


@pytest.fixture
def image_files(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    root.mkdir()
    rs = np.random.RandomState(3)
    pics = []
    lines = []
    for i in range(5):
        rgb = rs.randint(0, 256, (6, 7, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"p {i}.png")
        pics.append(rgb)
        lines.append(f"p {i}.png {i % 3}\n")
    listfile = tmp_path / "list.txt"
    listfile.write_text("".join(lines))
    return str(root) + "/", str(listfile), pics


def test_convert_imageset_raw_bgr(tmp_path, capsys, image_files):
    root, listfile, pics = image_files
    db = str(tmp_path / "db")
    status, out, err = run_cli(["convert-imageset", root, listfile, db], capsys)
    assert status == 0, err
    recs = records(db)
    assert [k for k, _ in recs] == [f"{i:08d}_p {i}.png".encode() for i in range(5)]
    for i, (_, d) in enumerate(recs):
        assert (d.channels, d.height, d.width, d.label) == (3, 6, 7, i % 3)
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 6, 7),
                                      pics[i][:, :, ::-1].transpose(2, 0, 1))


def test_convert_imageset_options(tmp_path, capsys, image_files):
    root, listfile, pics = image_files
    db = str(tmp_path / "gray")
    assert run_cli(["convert-imageset", root, listfile, db, "--gray", "-resize_height", "3",
                    "-resize_width=4", "--shuffle", "--seed", "1"], capsys)[0] == 0
    recs = records(db)
    assert all((d.channels, d.height, d.width) == (1, 3, 4) for _, d in recs)
    names = [k.split(b"_", 1)[1] for k, _ in recs]
    assert sorted(names) == [f"p {i}.png".encode() for i in range(5)] and names != sorted(names)
    # encoded: the PNG files themselves
    db = str(tmp_path / "enc")
    assert run_cli(["convert-imageset", root, listfile, db, "--encoded"], capsys)[0] == 0
    for i, (_, d) in enumerate(records(db)):
        assert d.encoded and d.data == open(os.path.join(root, f"p {i}.png"), "rb").read()
    # encoded as another type
    db = str(tmp_path / "bmp")
    assert run_cli(["convert-imageset", root, listfile, db, "--encode_type", "bmp"], capsys)[0] == 0
    from numcaffe.net.data.transform import decode_image
    for i, (_, d) in enumerate(records(db)):
        assert d.encoded and d.data[:2] == b"BM"
        np.testing.assert_array_equal(decode_image(d.data), pics[i][:, :, ::-1].transpose(2, 0, 1))


def test_convert_imageset_errors(tmp_path, capsys, image_files):
    root, listfile, _ = image_files
    status, _, err = run_cli(["convert-imageset", root, listfile, str(tmp_path / "x"), "--resize_height", "3"],
                             capsys)
    assert status == 1 and "together" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("missing.png 0\n")
    status, _, err = run_cli(["convert-imageset", root, str(bad), str(tmp_path / "y")], capsys)
    assert status == 1 and "missing.png" in err and not os.path.exists(tmp_path / "y")


# ------------------------------------------------------------------ compute-mean


def test_compute_mean_writes_a_mean_file_the_transformer_reads(tmp_path, capsys):
    from numcaffe.net.data.transform import load_mean_file
    imgs = write(tmp_path / "imgs", idx_bytes(IMAGES))
    lbls = write(tmp_path / "lbls", idx_bytes(LABELS))
    db = str(tmp_path / "db")
    assert run_cli(["convert-idx", imgs, lbls, db], capsys)[0] == 0
    mean_path = str(tmp_path / "mean.binaryproto")
    status, out, err = run_cli(["compute-mean", db, mean_path], capsys)
    assert status == 0, err
    want = IMAGES.astype(np.float64).mean(axis=0)[None]
    bp = caffe_pb2.BlobProto()
    bp.ParseFromString(open(mean_path, "rb").read())
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 1, 4, 3)
    np.testing.assert_allclose(load_mean_file(mean_path), want, rtol=1e-6)
    assert f"mean_value channel [0]: {want.mean():.6g}" in out


def test_compute_mean_of_a_missing_db(tmp_path, capsys):
    status, _, err = run_cli(["compute-mean", str(tmp_path / "none")], capsys)
    assert status == 1 and "does not exist" in err


# ------------------------------------------------------------------ data fashion-mnist


@pytest.fixture
def small_fashion(tmp_path, monkeypatch):
    """Four small IDX files with Fashion-MNIST's names, and the tool told to expect their sizes."""
    src = tmp_path / "src"
    src.mkdir()
    rs = np.random.RandomState(9)
    sets = {}
    for split, prefix, n in (("train", "train", 30), ("test", "t10k", 12)):
        imgs = rs.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        lbls = rs.randint(0, 10, n).astype(np.uint8)
        write(src / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(imgs), gz=True)
        write(src / f"{prefix}-labels-idx1-ubyte", idx_bytes(lbls))        # uncompressed works too
        sets[split] = (imgs, lbls)
    splits = {k: v[:3] + (len(sets[k][0]),) for k, v in data_tool.SPLITS.items()}
    monkeypatch.setattr(data_tool, "SPLITS", splits)
    monkeypatch.setattr(data_tool, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    monkeypatch.delenv(data_tool.ENV_DIR, raising=False)
    return str(src), sets


def test_data_fashion_mnist_from_a_directory_then_skips(tmp_path, capsys, small_fashion):
    src, sets = small_fashion
    out = str(tmp_path / "out")
    status, text, err = run_cli(["data", "fashion-mnist", "--dir", src, "--out", out], capsys)
    assert status == 0, err
    for split, name in (("train", "train_lmdb"), ("test", "test_lmdb")):
        recs = records(os.path.join(out, name))
        imgs, lbls = sets[split]
        assert len(recs) == len(imgs)
        assert recs[3][1].data == imgs[3].tobytes() and recs[3][1].label == lbls[3]
    mtime = os.path.getmtime(os.path.join(out, "train_lmdb", "data.mdb"))
    status, text, err = run_cli(["data", "fashion-mnist", "--out", out], capsys)  # no source needed now
    assert status == 0 and "nothing to do" in text
    assert os.path.getmtime(os.path.join(out, "train_lmdb", "data.mdb")) == mtime


def test_data_fashion_mnist_rebuilds_an_incomplete_db(tmp_path, capsys, small_fashion, monkeypatch):
    src, sets = small_fashion
    out = tmp_path / "out"
    out.mkdir()
    from numcaffe.tools.convert_idx import write_idx_db
    write_idx_db(sets["train"][0][:5], sets["train"][1][:5], str(out / "train_lmdb"))   # cut short
    monkeypatch.setenv(data_tool.ENV_DIR, src)
    status, text, err = run_cli(["data", "fashion-mnist", "--out", str(out)], capsys)
    assert status == 0, err
    assert "writing it again" in text
    assert len(records(str(out / "train_lmdb"))) == len(sets["train"][0])


def test_data_fashion_mnist_without_sources_is_one_clear_error(tmp_path, capsys, small_fashion, monkeypatch):
    monkeypatch.setenv(data_tool.ENV_URL, "http://127.0.0.1:9/nowhere/")
    out = tmp_path / "out"
    status, text, err = run_cli(["data", "fashion-mnist", "--out", str(out)], capsys)
    assert status == 1
    assert err.startswith("numcaffe: error: cannot download Fashion-MNIST") and err.count("\n") == 1
    assert "dataset-fashion-mnist" in err
    assert not os.path.exists(out / "train_lmdb")


def test_download_checks_the_published_md5(tmp_path, small_fashion):
    # a file:// "mirror" serving files whose checksums are not the published ones
    src, _ = small_fashion
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in data_tool.FILES:
        (mirror / name).write_bytes(b"not the real file")
    with pytest.raises(DataError, match="differs from the published"):
        data_tool.download(str(tmp_path / "dl"), mirror.as_uri() + "/", log=lambda m: None)
    assert not [f for f in os.listdir(tmp_path / "dl") if f.endswith(".gz")]


def test_data_fashion_mnist_missing_file_in_dir(tmp_path, capsys, small_fashion):
    src, _ = small_fashion
    os.unlink(os.path.join(src, "t10k-labels-idx1-ubyte"))
    status, _, err = run_cli(["data", "fashion-mnist", "--dir", src, "--out", str(tmp_path / "o")], capsys)
    assert status == 1 and "t10k-labels-idx1-ubyte.gz" in err


def test_debian_files_are_used_when_present():
    """On a machine with the dataset-fashion-mnist package, its files are found (headers only)."""
    files = data_tool.local_files(data_tool.DEBIAN_DIR)
    if files is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    from numcaffe.tools.convert_idx import read_idx_header
    magic, _, dims = read_idx_header(files["train-images-idx3-ubyte.gz"])
    assert magic == 2051 and dims == (60000, 28, 28)
    magic, _, dims = read_idx_header(files["t10k-labels-idx1-ubyte.gz"])
    assert magic == 2049 and dims == (10000,)
