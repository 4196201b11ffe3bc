"""``numcaffe data fashion-mnist``: Fashion-MNIST as the LMDBs LeNet trains on.

The four IDX files are taken from, in this order:

1. ``--dir D``, or the directory in the environment variable
   ``NUMCAFFE_FASHION_MNIST``;
2. the Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist);
3. a download from the dataset's own repository (zalandoresearch/fashion-mnist,
   data/fashion), checked against the MD5 sums its README publishes; the files
   are kept in ``<out>/fashion-mnist-idx`` for later runs.

Then ``train_lmdb`` (60,000 records) and ``test_lmdb`` (10,000) are written into
``--out`` (default configs/lenet/data) in convert-idx's format: keys "%08d",
1x28x28 uint8 Datums with their labels.  Databases already there and complete
are kept.  Local files need not match the published MD5 sums (Debian
recompresses them); their IDX structure and sizes are checked instead.
"""
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request

from numcaffe.net.data.db import DataError, LMDB, open_reader, parse_datum

COMMAND = "data"
HELP = "fetch a standard data set and convert it to LMDB (fashion-mnist)"

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_DIR = "NUMCAFFE_FASHION_MNIST"
#: Where downloads come from; NUMCAFFE_FASHION_MNIST_URL overrides it (mirrors, tests).
BASE_URL = "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"
ENV_URL = "NUMCAFFE_FASHION_MNIST_URL"

#: file name -> MD5 of the .gz, as published in the Fashion-MNIST README
FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: split -> (images file, labels file, database name, number of records)
SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "train_lmdb", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "test_lmdb", 10000),
}
ROWS = COLS = 28
CLASSES = 10


def md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find(directory, name):
    """``name`` (.gz) or its uncompressed form in ``directory``, or None."""
    for candidate in (name, name[:-3]):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def local_files(directory):
    """{gz name: path} if ``directory`` holds all four files, else None."""
    found = {name: _find(directory, name) for name in FILES}
    return found if all(found.values()) else None


def download(directory, base_url, log=print):
    """Download the four .gz files into ``directory``, verifying the published MD5 sums."""
    os.makedirs(directory, exist_ok=True)
    out = {}
    for name, digest in FILES.items():
        path = os.path.join(directory, name)
        if os.path.isfile(path) and md5(path) == digest:
            out[name] = path
            continue
        url = base_url.rstrip("/") + "/" + name
        log(f"Downloading {url}")
        tmp = path + ".part"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            reason = getattr(e, "reason", None) or e
            raise DataError(f"cannot download Fashion-MNIST from {url} ({reason}); install the Debian package "
                            f"dataset-fashion-mnist or pass --dir with the four IDX files") from None
        got = md5(tmp)
        if got != digest:
            os.unlink(tmp)
            raise DataError(f"{url}: MD5 {got} differs from the published {digest}; the download is "
                            f"corrupt or not Fashion-MNIST")
        os.replace(tmp, path)
        out[name] = path
    return out


def db_complete(path, count):
    """Whether ``path`` is an LMDB of ``count`` 1x28x28 records (first and last parse)."""
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        return False
    try:
        with open_reader(path, LMDB) as r:
            if r.count() != count:
                return False
            items = [r.peek()]
            r.seek(b"%08d" % (count - 1))
            items.append(r.peek())
        for key, value in items:
            d = parse_datum(value)
            if (d.channels, d.height, d.width) != (1, ROWS, COLS) or len(d.data) != ROWS * COLS:
                return False
        return items[1][0] == b"%08d" % (count - 1)
    except DataError:
        return False


def check_split(images, labels, split, count):
    if images.shape != (count, ROWS, COLS):
        raise DataError(f"Fashion-MNIST {split} images have shape {images.shape}, expected "
                        f"({count}, {ROWS}, {COLS})")
    if labels.shape != (count,) or (count and int(labels.max()) >= CLASSES):
        raise DataError(f"Fashion-MNIST {split} labels must be {count} values below {CLASSES}")


def locate(args, out, log=print):
    """{gz name: path} of the source files, by the order in the module docstring."""
    explicit = args.dir or os.environ.get(ENV_DIR)
    if explicit:
        if not os.path.isdir(explicit):
            origin = "--dir" if args.dir else f"${ENV_DIR}"
            raise DataError(f"{explicit}: no such directory (given by {origin})")
        files = local_files(explicit)
        if files is None:
            missing = [n for n in FILES if _find(explicit, n) is None]
            raise DataError(f"{explicit}: missing Fashion-MNIST file(s) {', '.join(missing)} "
                            f"(with or without .gz)")
        log(f"Using the IDX files in {explicit}")
        return files
    files = local_files(DEBIAN_DIR)
    if files is not None:
        log(f"Using the IDX files of the Debian package in {DEBIAN_DIR}")
        return files
    return download(os.path.join(out, "fashion-mnist-idx"), os.environ.get(ENV_URL) or BASE_URL, log)


def fashion_mnist(args, log=print):
    from numcaffe.tools.convert_idx import read_idx_pair, write_idx_db
    out = args.out
    todo = {s: spec for s, spec in SPLITS.items() if not db_complete(os.path.join(out, spec[2]), spec[3])}
    if not todo:
        log(f"Fashion-MNIST is already in {out} (train_lmdb, test_lmdb); nothing to do.")
        return 0
    os.makedirs(out, exist_ok=True)
    files = locate(args, out, log)
    if any(not path.endswith(".gz") or md5(path) != FILES[name] for name, path in files.items()):
        log("note: the local files are not byte-identical to the published .gz archives (Debian "
            "recompresses them); their IDX structure and sizes are checked instead")
    for split, (img_name, lbl_name, db_name, count) in todo.items():
        images, labels = read_idx_pair(files[img_name], files[lbl_name])
        check_split(images, labels, split, count)
        db = os.path.join(out, db_name)
        if os.path.exists(db):
            log(f"{db} is incomplete or not Fashion-MNIST; writing it again")
            shutil.rmtree(db)
        write_idx_db(images, labels, db, LMDB)
        log(f"Wrote {count} {split} records to {db}")
    return 0


DATASETS = {"fashion-mnist": fashion_mnist}


def add_arguments(parser):
    parser.add_argument("dataset", choices=sorted(DATASETS), help="the data set to prepare")
    parser.add_argument("--dir", default=None, help=f"directory holding the IDX files "
                        f"(default: ${ENV_DIR}, then {DEBIAN_DIR}, then download)")
    parser.add_argument("--out", default=os.path.join("configs", "lenet", "data"),
                        help="where to write train_lmdb and test_lmdb (default configs/lenet/data)")


def run(args):
    return DATASETS[args.dataset](args, log=lambda m: print(m, file=sys.stdout, flush=True))
