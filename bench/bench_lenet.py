"""LeNet training speed and memory: numcaffe against PyTorch CPU, alternating in one run.

    python bench/bench_lenet.py [--rounds 5] [--iters 50] [--batch 64]

Two worker processes (one numcaffe, one PyTorch when it is installed) build the
same LeNet (conv 20@5 → max pool 2/2 → conv 50@5 → max pool 2/2 → ip 500 → ReLU
→ ip 10 → softmax loss) with the same solver (SGD, lr 0.01, momentum 0.9, weight
decay 5e-4, inv policy, bias lr ×2) and train on the same batches.  The parent
alternates them round by round, so machine load hits both alike, and prints:

* ms per training iteration for each (median over rounds) and their ratio;
* each worker's peak resident memory (ru_maxrss);
* numcaffe's per-layer forward/backward breakdown (as ``numcaffe time``);
* the per-iteration overhead on the XOR-sized net (2 → 2 tanh → 2 softmax);
* a warm start: seconds from a new process to the end of LeNet's first iteration.

Data: Fashion-MNIST training images when ``configs/lenet/data/train_lmdb`` exists
(``numcaffe data fashion-mnist``), else random images; both frameworks see the
same arrays, held in memory.  Absolute times move with machine load; compare the
ratios measured in one run.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LENET = os.path.join(ROOT, "configs", "lenet", "lenet_train_test.prototxt")
LMDB = os.path.join(ROOT, "configs", "lenet", "data", "train_lmdb")


def load_images(n=6400, seed=0):
    """(images uint8 N×1×28×28, labels float32 N); batches are scaled by 1/256 as they are used.

    Kept as bytes so the data set costs both frameworks the same 5 MB, not 20.
    """
    import numpy as np
    x = np.zeros((n, 1, 28, 28), np.uint8)
    y = np.zeros(n, np.float32)
    if os.path.isdir(LMDB):
        try:
            import lmdb
            from numcaffe.net.proto import caffe_pb2
            env = lmdb.open(LMDB, readonly=True, lock=False)
            with env.begin() as txn:
                for i, (_, v) in enumerate(txn.cursor()):
                    if i >= n:
                        break
                    d = caffe_pb2.Datum.FromString(v)
                    x[i, 0] = np.frombuffer(d.data, np.uint8).reshape(28, 28)
                    y[i] = d.label
            env.close()
            return x, y
        except Exception as e:  # fall back to random data, but say so
            print(f"(could not read {LMDB}: {e}; using random images)", file=sys.stderr)
    rs = np.random.RandomState(seed)
    return rs.randint(0, 256, x.shape).astype(np.uint8), rs.randint(0, 10, n).astype(np.float32)


# ----------------------------------------------------------------- workers


SOLVER = dict(base_lr=0.01, momentum=0.9, weight_decay=0.0005, gamma=0.0001, power=0.75)


def numcaffe_trainer(batch, net_kind):
    import numpy as np
    from google.protobuf import text_format
    from numcaffe.net.config import read_message
    from numcaffe.net.proto import caffe_pb2
    from numcaffe.net.random import set_random_seed
    from numcaffe.solvers import get_solver

    if net_kind == "lenet":
        net = read_message(LENET, caffe_pb2.NetParameter)
        layers = [l for l in net.layer if l.type not in ("Data", "Accuracy")]
        del net.layer[:]
        inp = net.layer.add()
        text_format.Parse(f'name: "data" type: "Input" top: "data" top: "label" input_param {{ '
                          f'shape {{ dim: {batch} dim: 1 dim: 28 dim: 28 }} shape {{ dim: {batch} }} }}', inp)
        net.layer.extend(layers)
        x, y = load_images()
    else:
        net = text_format.Parse(XOR_NET, caffe_pb2.NetParameter())
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
        y = np.array([0, 1, 1, 0], np.float32)
    sp = caffe_pb2.SolverParameter(type="SGD", lr_policy="inv", max_iter=10 ** 9, display=0,
                                   random_seed=1701, snapshot_after_train=False, **SOLVER)
    sp.net_param.CopyFrom(net)
    set_random_seed(1701)
    solver = get_solver(sp)
    data, label = solver.net.blobs["data"], solver.net.blobs["label"]
    state = {"i": 0}
    n = len(x)
    bs = data.shape[0]

    def run(k):
        for _ in range(k):
            i = state["i"]
            if i + bs > n:
                i = 0
            np.multiply(x[i:i + bs], np.float32(1 / 256), out=data.data)
            label.data[...] = y[i:i + bs]
            state["i"] = i + bs
            solver.step(1)

    def breakdown():
        from numcaffe.tools.time import time_net
        fwd, bwd, f, b, _ = time_net(solver.net, 20)
        return {"layers": [[l.name, a, c] for l, a, c in zip(solver.net.layers, fwd, bwd)],
                "forward": f, "backward": b}

    return run, breakdown


XOR_NET = """
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 2 } shape { dim: 4 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "tanh1" type: "TanH" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
"""


def torch_trainer(batch, net_kind):
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    torch.manual_seed(1701)
    if net_kind == "lenet":
        model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
                              nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10))
        x, y = load_images()
    else:
        model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2))
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
        y = np.array([0, 1, 1, 0], np.float32)
        batch = 4
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    scale = 1 / 256 if x.dtype == np.uint8 else 1.0
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights}, {"params": biases, "lr": 2 * SOLVER["base_lr"],
                                                 "weight_decay": SOLVER["weight_decay"]}],
                          lr=SOLVER["base_lr"], momentum=SOLVER["momentum"], weight_decay=SOLVER["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: (1 + SOLVER["gamma"] * it) ** -SOLVER["power"])
    loss_fn = nn.CrossEntropyLoss()
    state = {"i": 0}
    n = len(x)

    def run(k):
        for _ in range(k):
            i = state["i"]
            if i + batch > n:
                i = 0
            xb, yb = xt[i:i + batch].float() * scale, yt[i:i + batch]
            state["i"] = i + batch
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()

    return run, None


def worker(kind, batch, net_kind):
    run, breakdown = (numcaffe_trainer if kind == "numcaffe" else torch_trainer)(batch, net_kind)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            k = int(cmd[1])
            t = time.perf_counter()
            run(k)
            out = {"ms_per_iter": (time.perf_counter() - t) * 1e3 / k}
        elif cmd[0] == "stats":
            out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
            if breakdown is not None and net_kind == "lenet":
                out["breakdown"] = breakdown()
        else:
            break
        print(json.dumps(out), flush=True)


# ----------------------------------------------------------------- parent


class Worker:
    def __init__(self, kind, batch, net_kind):
        self.kind = kind
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--batch", str(batch),
                                   "--net", net_kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died")
        return json.loads(line)

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except OSError:
            pass
        self.p.wait(timeout=60)


def have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def compare(net_kind, batch, rounds, iters, warmup):
    kinds = ["numcaffe"] + (["torch"] if have_torch() else [])
    workers = {k: Worker(k, batch, net_kind) for k in kinds}
    try:
        for w in workers.values():
            w.ask(f"run {warmup}")
        times = {k: [] for k in kinds}
        for _ in range(rounds):
            for k, w in workers.items():
                times[k].append(w.ask(f"run {iters}")["ms_per_iter"])
        stats = {k: w.ask("stats") for k, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    return {k: statistics.median(v) for k, v in times.items()}, times, stats


def warm_start_seconds():
    """Seconds from a fresh process to the end of LeNet's first training iteration (Numba cache warm)."""
    code = ("import time; t0 = time.perf_counter(); import sys; sys.argv = ['x']; "
            "sys.path.insert(0, %r); import bench_lenet as b; run, _ = b.numcaffe_trainer(64, 'lenet'); run(1); "
            "print(time.perf_counter() - t0)") % HERE
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)  # fill the cache
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t
    return wall, out.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--worker", choices=["numcaffe", "torch"])
    ap.add_argument("--net", default="lenet", choices=["lenet", "xor"])
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.batch, args.net)

    import platform
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    med, raw, stats = compare("lenet", args.batch, args.rounds, args.iters, warmup=10)
    print(f"\nLeNet training, batch {args.batch}, {args.rounds} alternating rounds of {args.iters} iterations")
    for k, v in med.items():
        print(f"  {k:9s} {v:8.2f} ms/iter   (rounds: {', '.join(f'{t:.2f}' for t in raw[k])})   "
              f"peak memory {stats[k]['peak_rss_mb']:.0f} MB")
    if "torch" in med:
        print(f"  ratio numcaffe / torch: time {med['numcaffe'] / med['torch']:.2f}, "
              f"peak memory {stats['numcaffe']['peak_rss_mb'] / stats['torch']['peak_rss_mb']:.2f}")
    bd = stats["numcaffe"].get("breakdown")
    if bd:
        print("\nnumcaffe per layer (ms, forward / backward):")
        for name, f, b in bd["layers"]:
            print(f"  {name:10s} {f:8.3f} {b:8.3f}")
        print(f"  {'total':10s} {bd['forward']:8.3f} {bd['backward']:8.3f}")
    med_x, _, _ = compare("xor", 4, args.rounds, 2000, warmup=200)
    print("\nXOR-sized net (2 → 2 tanh → 2 softmax), per-iteration time:")
    for k, v in med_x.items():
        print(f"  {k:9s} {v * 1e3:8.1f} µs/iter")
    wall, inner = warm_start_seconds()
    print(f"\nwarm start (Numba cache filled) to the end of LeNet's first iteration: {wall:.2f} s "
          f"(inside the process: {inner} s)")


if __name__ == "__main__":
    sys.exit(main())
