"""``numcaffe compute-mean DB [MEAN.binaryproto]``: the mean image of a Datum database.

Caffe's tools/compute_image_mean: every record (encoded images decoded in
their own colour mode) is summed and divided by the count; the mean is written
as a BlobProto with num=1 and the records' channels, height and width, the
format ``transform_param { mean_file: ... }`` reads.  The per-channel means are
printed too, for ``mean_value``.  Sums are kept in double precision.
"""
import numpy as np

from numcaffe.net.data.db import DataError, datum_array, open_reader, parse_datum
from numcaffe.net.data.transform import decode_image

COMMAND = "compute-mean"
HELP = "compute the mean image of an LMDB/LevelDB of Datums, as a .binaryproto mean file"

CHUNK = 1024


def compute_mean(db_path, backend="lmdb"):
    """(mean (C, H, W) float32 array, number of records) of a database."""
    with open_reader(db_path, backend) as reader:
        total = reader.count()
        if total == 0:
            raise DataError(f"{db_path!r} holds no records")
        acc = None
        done = 0
        while done < total:
            records = reader.read(min(CHUNK, total - done))
            arrays = []
            for key, value in records:
                where = f"record {key!r} of {db_path!r}"
                d = parse_datum(value, where)
                a = decode_image(d.data, None, where=where) if d.encoded else datum_array(d, where)
                if acc is not None and a.shape != acc.shape or arrays and a.shape != arrays[0].shape:
                    first = acc.shape if acc is not None else arrays[0].shape
                    raise DataError(f"{where}: is {a.shape} (C, H, W) but the first record is {first}; "
                                    f"a mean needs records of one size")
                arrays.append(a)
            chunk = np.stack(arrays).sum(axis=0, dtype=np.float64)
            acc = chunk if acc is None else acc + chunk
            done += len(records)
    return (acc / total).astype(np.float32), total


def mean_blobproto(mean):
    """A BlobProto of a (C, H, W) mean, in Caffe's legacy 4-D form (num=1)."""
    from numcaffe.net.proto import caffe_pb2
    c, h, w = mean.shape
    bp = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    bp.data.extend(np.asarray(mean, dtype=np.float32).ravel().tolist())
    return bp


def add_arguments(parser):
    parser.add_argument("db", help="the database of Datums")
    parser.add_argument("output", nargs="?", default=None, help="the .binaryproto mean file to write")
    parser.add_argument("--backend", default="lmdb", choices=["lmdb", "leveldb"], help="database kind")


def run(args):
    mean, n = compute_mean(args.db, args.backend)
    print(f"Processed {n} records.")
    if args.output:
        from numcaffe.net.io import atomic_write
        atomic_write(args.output, mean_blobproto(mean).SerializeToString())
        print(f"Wrote the mean image {mean.shape} to {args.output}.")
    for c in range(mean.shape[0]):
        print(f"mean_value channel [{c}]: {float(mean[c].mean(dtype=np.float64)):.6g}")
    return 0
