"""``numcaffe convert-idx IMAGES LABELS DB``: IDX image/label files into a Datum database.

What Caffe's examples/mnist/convert_mnist_data does, for MNIST, Fashion-MNIST
and any IDX pair of uint8 images (N, rows, cols) and uint8 labels (N): record
``i`` gets key ``"%08d" % i`` and a Datum with channels=1, height=rows,
width=cols, the raw pixel bytes and the label.  Gzipped files (``.gz``) are
read directly.  The IDX reader checks magic numbers and sizes, so a truncated
or foreign file is a one-line error, not a wrong database.
"""
import gzip
import os
import shutil
import struct

import numpy as np

from numcaffe.net.data.db import DataError, LMDB, array_datum, open_writer

COMMAND = "convert-idx"
HELP = "convert IDX images + labels (MNIST format, .gz or raw) into an LMDB/LevelDB of Datums"

#: IDX type codes (third magic byte) -> numpy big-endian dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_MAGIC = 0x00000803   # 2051: unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801   # 2049: unsigned bytes, 1 dimension


def _open(path):
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such IDX file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    head = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f) if head == b"\x1f\x8b" else f


def read_idx_header(path):
    """(magic, dtype, dims) of an IDX file, checking the magic number."""
    with _open(path) as f:
        try:
            return _header(f, path)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable IDX file ({e})") from None


def _header(f, path):
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(head)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", head)
    if zero != 0 or code not in IDX_TYPES or ndim == 0:
        raise DataError(f"{path}: bad IDX magic number 0x{head.hex()} (expected 0x0000 then a type "
                        f"code and the number of dimensions, e.g. 0x00000803 for images)")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: IDX header is cut short (needs {ndim} dimension sizes)")
    dims = struct.unpack(f">{ndim}I", raw)
    return (code << 8) | ndim, np.dtype(IDX_TYPES[code]), dims


def read_idx(path, magic=None):
    """The array stored in an IDX file (native byte order), checking magic and size."""
    with _open(path) as f:
        try:
            found, dtype, dims = _header(f, path)
            if magic is not None and found != magic:
                raise DataError(f"{path}: IDX magic number is {found} (0x{found:08x}), expected {magic} "
                                f"(0x{magic:08x}); are the images and labels files swapped?")
            expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            payload = f.read(expected + 1)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: corrupt file ({e})") from None
    if len(payload) != expected:
        what = "is truncated" if len(payload) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: the header announces {dims} values of {dtype.itemsize} byte(s) "
                        f"({expected} bytes) but {len(payload) if len(payload) <= expected else 'more'} "
                        f"follow")
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_pair(images_path, labels_path):
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels")
    return images, labels


def write_idx_db(images, labels, db_path, backend=LMDB, progress=None):
    """Write images (N, rows, cols) uint8 and labels (N) as convert_mnist_data does; returns N.

    The database is built under a temporary name and moved into place at the
    end, so an interrupted conversion leaves no half-written ``db_path``.
    """
    if os.path.exists(db_path):
        raise DataError(f"{db_path!r} already exists; remove it or choose another name for the new database")
    tmp = db_path.rstrip("/") + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    n = images.shape[0]
    try:
        with open_writer(tmp, backend) as w:
            for i in range(n):
                w.put(b"%08d" % i, array_datum(images[i][None], labels[i]).SerializeToString())
                if progress and (i + 1) % 10000 == 0:
                    progress(i + 1, n)
        os.replace(tmp, db_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def convert_idx(images_path, labels_path, db_path, backend=LMDB, progress=None):
    images, labels = read_idx_pair(images_path, labels_path)
    return write_idx_db(images, labels, db_path, backend, progress)


def add_arguments(parser):
    parser.add_argument("images", help="IDX images file (e.g. train-images-idx3-ubyte[.gz])")
    parser.add_argument("labels", help="IDX labels file (e.g. train-labels-idx1-ubyte[.gz])")
    parser.add_argument("db", help="the database to create (must not exist)")
    parser.add_argument("--backend", default="lmdb", choices=["lmdb", "leveldb"],
                        help="database kind (default lmdb)")


def run(args):
    n = convert_idx(args.images, args.labels, args.db, args.backend,
                    progress=lambda i, n: print(f"Processed {i} of {n} items."))
    print(f"Wrote {n} items to {args.db} ({args.backend}).")
    return 0
