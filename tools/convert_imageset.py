"""``numcaffe convert-imageset ROOT LISTFILE DB``: image files into a Datum database.

Caffe's tools/convert_imageset: LISTFILE has ``path label`` lines; ROOT is
prefixed to each path as written.  Every image becomes a Datum under the key
``"%08d_%s" % (line index, path)``: decoded BGR pixels (grey with ``--gray``),
resized to ``--resize_height`` x ``--resize_width`` when both are given; or,
with ``--encoded``, the compressed image itself (the file's bytes when it is
already in the wanted format and not resized, else re-encoded as
``--encode_type``, by default the file's own format).  ``--shuffle`` randomizes
the order (``--seed`` makes it repeatable); ``--check_size`` requires all
images to have one size.
"""
import os
import shutil

import numpy as np

from numcaffe.net.data.db import DataError, array_datum, open_writer
from numcaffe.net.data.transform import decode_image, encode_image

COMMAND = "convert-imageset"
HELP = "convert a list of image files with labels into an LMDB/LevelDB of Datums (Caffe's convert_imageset)"


def _format_of(path):
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)


def image_datum(path, label, resize=None, color=True, encode_type=None):
    """The Datum Caffe's ReadImageToDatum makes of one image file."""
    from numcaffe.net.proto import caffe_pb2
    if encode_type is not None:
        if resize is None and _format_of(path) == _format_of("x." + encode_type):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError as e:
                raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
            img = decode_image(raw, None, where=path)
            if (img.shape[0] == 3) == bool(color):
                return caffe_pb2.Datum(data=raw, label=int(label), encoded=True)
        img = decode_image(path, color, resize, where=path)
        return caffe_pb2.Datum(data=encode_image(img, encode_type), label=int(label), encoded=True)
    return array_datum(decode_image(path, color, resize, where=path), label)


def convert_imageset(root, list_file, db_path, backend="lmdb", resize=None, gray=False, shuffle=False,
                     encoded=False, encode_type="", check_size=False, seed=None, progress=None):
    """Write the listed images as Caffe's convert_imageset does; returns the number written."""
    from numcaffe.layers.image_data import read_image_list
    items = read_image_list(list_file, "convert-imageset")
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in order]
    if os.path.exists(db_path):
        raise DataError(f"{db_path!r} already exists; remove it or choose another name for the new database")
    tmp = db_path.rstrip("/") + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    size = None
    try:
        with open_writer(tmp, backend) as w:
            for i, (name, label) in enumerate(items):
                path = root + name
                enc = encode_type or ((_format_of(path) or "png") if encoded else None)
                d = image_datum(path, label, resize, not gray, enc)
                if check_size and not d.encoded:
                    if size is None:
                        size = (d.channels, d.height, d.width)
                    elif (d.channels, d.height, d.width) != size:
                        raise DataError(f"{path}: is {(d.channels, d.height, d.width)} (C, H, W) but the "
                                        f"first image is {size} (--check_size)")
                w.put(f"{i:08d}_{name}", d.SerializeToString())
                if progress and (i + 1) % 1000 == 0:
                    progress(i + 1, len(items))
        os.replace(tmp, db_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(items)


def add_arguments(parser):
    parser.add_argument("root", help="folder prefixed to every listed path (end it with '/')")
    parser.add_argument("listfile", help="text file of 'path label' lines")
    parser.add_argument("db", help="the database to create (must not exist)")
    parser.add_argument("--gray", action="store_true", help="store images as one grey channel")
    parser.add_argument("--shuffle", action="store_true", help="randomly shuffle the order of the images")
    parser.add_argument("--seed", type=int, default=None, help="seed for --shuffle (default: random)")
    parser.add_argument("--backend", default="lmdb", choices=["lmdb", "leveldb"], help="database kind")
    parser.add_argument("--resize_width", "--resize-width", type=int, default=0, dest="resize_width",
                        help="width to resize images to (with --resize_height)")
    parser.add_argument("--resize_height", "--resize-height", type=int, default=0, dest="resize_height",
                        help="height to resize images to (with --resize_width)")
    parser.add_argument("--check_size", "--check-size", action="store_true", dest="check_size",
                        help="require all images to have the same size")
    parser.add_argument("--encoded", action="store_true", help="store the encoded (compressed) images")
    parser.add_argument("--encode_type", "--encode-type", default="", dest="encode_type",
                        help="format to encode images as (png, jpg, ...; implies --encoded)")


def run(args):
    if bool(args.resize_height) != bool(args.resize_width):
        raise DataError("give --resize_height and --resize_width together")
    if args.resize_height < 0 or args.resize_width < 0:
        raise DataError("--resize_height and --resize_width must not be negative")
    resize = (args.resize_height, args.resize_width) if args.resize_height else None
    n = convert_imageset(args.root, args.listfile, args.db, args.backend, resize, args.gray, args.shuffle,
                         args.encoded, args.encode_type, args.check_size, args.seed,
                         progress=lambda i, n: print(f"Processed {i} files."))
    print(f"Wrote {n} images to {args.db} ({args.backend}).")
    return 0
