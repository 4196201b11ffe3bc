"""Data-layer loading throughput: records/s from an LMDB of Datums into batches.

    python bench/data_loading.py [DB] [--batch 64] [--batches 400] [--crop 0] [--mirror]

DB defaults to configs/lenet/data/train_lmdb (``numcaffe data fashion-mnist``
writes it).  Prints records/s for the Data layer's Forward alone (prefetch
thread + copy into the tops), i.e. the most the layer can feed a net.
"""
import argparse
import os
import time

from google.protobuf import text_format

import numcaffe.layers  # noqa: F401
from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.proto import caffe_pb2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("db", nargs="?", default=os.path.join("configs", "lenet", "data", "train_lmdb"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--crop", type=int, default=0)
    ap.add_argument("--mirror", action="store_true")
    a = ap.parse_args()
    p = caffe_pb2.LayerParameter()
    text_format.Parse(f'name: "data" type: "Data" top: "data" top: "label" '
                      f'transform_param {{ scale: 0.00390625 crop_size: {a.crop} mirror: {str(a.mirror).lower()} }} '
                      f'data_param {{ source: "{a.db}" batch_size: {a.batch} backend: LMDB }}', p)
    layer = create_layer(p)
    top = [Blob(), Blob()]
    layer.SetUp([], top)
    for _ in range(5):                      # warm up (kernel compile, first reads)
        layer.Forward([], top)
    t = time.perf_counter()
    for _ in range(a.batches):
        layer.Forward([], top)
    dt = time.perf_counter() - t
    layer.close()
    n = a.batches * a.batch
    print(f"Data layer, {a.db}: {n} records in {dt:.3f} s = {n / dt:,.0f} records/s "
          f"(batch {a.batch}, shape {top[0].shape}, crop {a.crop}, mirror {a.mirror})")


if __name__ == "__main__":
    main()
