"""Forward and backward time of LeNet's conv and pool layers, numcaffe against PyTorch CPU.

    python bench/bench_conv.py [--batch 64] [--rounds 7] [--iters 30] [--extra]

The layers of Caffe's LeNet at batch 64: conv1 (1x28x28 -> 20@5x5, no input
gradient, as after a data layer), pool1 (max 2/2), conv2 (20 -> 50@5x5), pool2.
``--extra`` adds a few other shapes (3x3 pad 1, grouped, depthwise, 1x1,
deconvolution, AVE pooling, LRN).  Each framework runs in its own process (their
thread pools would otherwise fight over the cores); the parent alternates them
round by round so machine load hits both alike, and prints the median ms per
call of forward and of backward for every layer, and their ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

#: name, kind, input shape (without batch), layer prototxt fragment, torch spec, needs input grad
LENET = [
    ("conv1", "conv", (1, 28, 28), "num_output: 20 kernel_size: 5", dict(out=20, k=5), False),
    ("pool1", "pool", (20, 24, 24), "pool: MAX kernel_size: 2 stride: 2", dict(k=2, s=2), True),
    ("conv2", "conv", (20, 12, 12), "num_output: 50 kernel_size: 5", dict(out=50, k=5), True),
    ("pool2", "pool", (50, 8, 8), "pool: MAX kernel_size: 2 stride: 2", dict(k=2, s=2), True),
]
EXTRA = [
    ("conv3x3", "conv", (32, 16, 16), "num_output: 64 kernel_size: 3 pad: 1", dict(out=64, k=3, p=1), True),
    ("group4", "conv", (32, 16, 16), "num_output: 64 kernel_size: 3 pad: 1 group: 4",
     dict(out=64, k=3, p=1, g=4), True),
    ("dw3x3", "conv", (64, 16, 16), "num_output: 64 kernel_size: 3 pad: 1 group: 64",
     dict(out=64, k=3, p=1, g=64), True),
    ("pw1x1", "conv", (64, 16, 16), "num_output: 128 kernel_size: 1", dict(out=128, k=1), True),
    ("deconv", "deconv", (32, 8, 8), "num_output: 16 kernel_size: 4 stride: 2 pad: 1",
     dict(out=16, k=4, s=2, p=1), True),
    ("avepool", "pool", (64, 16, 16), "pool: AVE kernel_size: 3 stride: 2", dict(k=3, s=2, ave=True), True),
    ("lrn", "lrn", (64, 16, 16), "local_size: 5 alpha: 0.0001 beta: 0.75", dict(size=5), True),
]


def numcaffe_runner(spec, batch):
    import numpy as np
    from google.protobuf import text_format
    from numcaffe.layers.base import create_layer
    from numcaffe.net.blob import Blob
    from numcaffe.net.proto import caffe_pb2

    name, kind, shape, frag, _, need_dx = spec
    type_name, param = {"conv": ("Convolution", "convolution_param"),
                        "deconv": ("Deconvolution", "convolution_param"),
                        "pool": ("Pooling", "pooling_param"), "lrn": ("LRN", "lrn_param")}[kind]
    extra = ' weight_filler { type: "xavier" }' if kind in ("conv", "deconv") else ""
    lp = text_format.Parse(f'name: "{name}" type: "{type_name}" {param} {{ {frag}{extra} }}',
                           caffe_pb2.LayerParameter())
    layer = create_layer(lp)
    rs = np.random.RandomState(0)
    bottom, top = Blob((batch,) + shape), Blob()
    bottom.data[...] = rs.random_sample(bottom.shape)
    layer.SetUp([bottom], [top])
    top.diff[...] = rs.standard_normal(top.shape)

    def forward():
        layer.Forward([bottom], [top])

    def backward():
        layer.Backward([top], [need_dx], [bottom])

    return forward, backward


def torch_runner(spec, batch):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    name, kind, shape, _, t, need_dx = spec
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch,) + shape, generator=g, requires_grad=need_dx)
    params = []
    if kind == "conv":
        w = torch.randn(t["out"], shape[0] // t.get("g", 1), t["k"], t["k"], generator=g, requires_grad=True)
        b = torch.zeros(t["out"], requires_grad=True)
        params = [w, b]
        fn = lambda: F.conv2d(x, w, b, stride=t.get("s", 1), padding=t.get("p", 0), groups=t.get("g", 1))  # noqa: E731
    elif kind == "deconv":
        w = torch.randn(shape[0], t["out"], t["k"], t["k"], generator=g, requires_grad=True)
        b = torch.zeros(t["out"], requires_grad=True)
        params = [w, b]
        fn = lambda: F.conv_transpose2d(x, w, b, stride=t.get("s", 1), padding=t.get("p", 0))  # noqa: E731
    elif kind == "pool":
        if t.get("ave"):
            fn = lambda: F.avg_pool2d(x, t["k"], t["s"], ceil_mode=True)  # noqa: E731
        else:
            fn = lambda: F.max_pool2d(x, t["k"], t["s"], ceil_mode=True)  # noqa: E731
    else:
        fn = lambda: F.local_response_norm(x, t["size"], alpha=1e-4, beta=0.75)  # noqa: E731
    state = {}
    gy = torch.randn(fn().shape, generator=g)

    def forward():
        state["y"] = fn()

    def backward():
        for p in params + ([x] if need_dx else []):
            p.grad = None
        state["y"].backward(gy)

    return forward, backward


def worker(kind, batch, names):
    specs = [s for s in LENET + EXTRA if s[0] in names]
    make = numcaffe_runner if kind == "numcaffe" else torch_runner
    runners = [(s[0],) + make(s, batch) for s in specs]
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "run":
            break
        iters = int(cmd[1])
        out = {}
        for name, fwd, bwd in runners:
            tf, tb = [], []
            for _ in range(iters):
                t0 = time.perf_counter()
                fwd()
                t1 = time.perf_counter()
                bwd()
                t2 = time.perf_counter()
                tf.append((t1 - t0) * 1e3)
                tb.append((t2 - t1) * 1e3)
            out[name] = [tf, tb]
        print(json.dumps(out), flush=True)


def have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--extra", action="store_true", help="also time other conv/pool/LRN shapes")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="per-call statistic: median, or min (the least disturbed by other load)")
    ap.add_argument("--worker", choices=["numcaffe", "torch"])
    ap.add_argument("--names", default="")
    args = ap.parse_args()
    specs = LENET + (EXTRA if args.extra else [])
    names = args.names.split(",") if args.names else [s[0] for s in specs]
    if args.worker:
        return worker(args.worker, args.batch, names)

    kinds = ["numcaffe"] + (["torch"] if have_torch() else [])
    procs = {k: subprocess.Popen([sys.executable, __file__, "--worker", k, "--batch", str(args.batch),
                                  "--names", ",".join(names)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in kinds}

    def ask(k, iters):
        procs[k].stdin.write(f"run {iters}\n")
        procs[k].stdin.flush()
        return json.loads(procs[k].stdout.readline())

    try:
        for k in kinds:
            ask(k, 3)  # warm up (compile, allocate)
        results = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                results[k].append(ask(k, args.iters))
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait(timeout=60)

    stat = statistics.median if args.stat == "median" else min
    med = {k: {n: [stat([t for r in results[k] for t in r[n][i]]) for i in (0, 1)] for n in names}
           for k in kinds}
    print(f"batch {args.batch}, {args.rounds} alternating rounds x {args.iters} calls; "
          f"{args.stat} ms per call")
    head = f"{'layer':9s} {'numcaffe fwd':>12s} {'bwd':>7s}"
    if "torch" in kinds:
        head += f" {'torch fwd':>10s} {'bwd':>7s}   {'ratio (fwd+bwd)':>15s}"
    print(head)
    tot = {k: 0.0 for k in kinds}
    for n in names:
        nf, nb = med["numcaffe"][n]
        line = f"{n:9s} {nf:12.3f} {nb:7.3f}"
        tot["numcaffe"] += nf + nb
        if "torch" in kinds:
            tf, tb = med["torch"][n]
            tot["torch"] += tf + tb
            line += f" {tf:10.3f} {tb:7.3f}   {(nf + nb) / (tf + tb):15.2f}"
        print(line)
    line = f"{'total':9s} {tot['numcaffe']:20.3f}"
    if "torch" in kinds:
        line += f" {tot['torch']:18.3f}   {tot['numcaffe'] / tot['torch']:15.2f}"
    print(line)


if __name__ == "__main__":
    sys.exit(main())
