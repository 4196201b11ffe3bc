"""Thread scaling, 1 -> 2 threads (or --threads A,B): numcaffe and PyTorch side by side, issue 11's goal.

    python bench/bench_threads.py [--nets cifar10_quick,resnet50] [--threads 1,2] [--rounds 5]
                                  [--repeat 3] [--layers]

Per net and thread count, in a fresh process each (the pools are sized before numpy loads):

* ``infer``: a forward pass (numcaffe's Forward of the net as deployed, no ``force_backward``; torch's forward under ``no_grad``);
* ``train``: a whole training iteration: parameter diffs cleared, forward, backward with
  output diffs of ones, and an SGD update with momentum 0.9 and L2 weight decay over every
  parameter (numcaffe through SGDSolver's own regularize / update / subtract, torch through
  ``torch.optim.SGD``).

The nets are bench/bench_zoo.py's (CIFAR-10 quick at batch 100, ResNet-50 at batch 8, ...), at
TEST phase as there (BatchNorm with its stored statistics: torch_replay's BatchNorm), built from
the same NetParameter with the same weights.  Each figure is the minimum over ``--rounds`` after a
warm-up; the whole 1-thread / 2-thread / torch sequence runs ``--repeat`` times, interleaved, and
the table shows the minimum over the repeats (each repeat's figures and the load average around
it are printed first: the machine is shared, and the load moves the figures).  ``--layers`` adds
numcaffe's forward and backward per layer at both counts, flagging a layer slower with more
threads.  The speedup is time at the first count / time at the second.

On a shared machine a 2-thread run loses its second core to other processes at any moment
(numcaffe's many short GEMMs and loops more than PyTorch's long parallel regions); docs/threads.md
says how its figures were taken (the bench in its own session, that session's group at nice -15).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import bench_zoo as zoo  # noqa: E402

GOAL = 1.7
#: the solver of the update step, numcaffe's and torch's
LR, MOMENTUM, DECAY = 0.01, 0.9, 5e-4
POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                  "NUMCAFFE_THREADS")


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


# ---------------------------------------------------------------- workers (one process each)

def numcaffe_worker(name, workdir, rounds, per_layer):
    import numpy as np
    from numcaffe.net import threads
    from numcaffe.net.proto import caffe_pb2
    from numcaffe.solvers.sgd import SGDSolver, step
    net, deployed, _ = zoo.numcaffe_net(name, workdir)
    for n in net.outputs:
        net.blobs[n].diff[...] = 1.0
    params = net.learnable_params
    solver = types.SimpleNamespace(
        net=net, param=caffe_pb2.SolverParameter(momentum=MOMENTUM, weight_decay=DECAY, regularization_type="L2"),
        history=[np.zeros(p.shape, dtype=np.float32) for p in params])

    def update():
        # SGDSolver.apply_update's per-parameter steps, through the solver's own methods
        for i in range(len(params)):
            SGDSolver.regularize(solver, i)
            SGDSolver.compute_update_value(solver, i, LR)
        for blob in params:
            step(blob)

    def infer():
        deployed.Forward()

    def train():
        net.ClearParamDiffs()
        net.Forward()
        net.Backward()
        update()
    out = {"infer": zoo.best_of(infer, rounds), "train": zoo.best_of(train, rounds),
           "threads": threads.count(), "info": zoo.blas_info()}
    if per_layer:
        out["layers"] = zoo.numcaffe_times(net, deployed, rounds, True)["layers"]
    return out


def torch_worker(name, workdir, threads, rounds):
    import torch
    torch.set_num_threads(threads)
    tnet, arrays, inputs = zoo.torch_net(workdir, name)
    outs = [k[4:] for k in arrays.files if k.startswith("out:")]
    opt = torch.optim.SGD(tnet.params, lr=LR, momentum=MOMENTUM, weight_decay=DECAY)

    def infer():
        with torch.no_grad():
            tnet.forward(inputs)

    def train():
        opt.zero_grad(set_to_none=True)
        b = tnet.forward(inputs)
        ys = [b[o] for o in outs]
        torch.autograd.backward(ys, [torch.ones_like(y) for y in ys])
        opt.step()
    return {"infer": zoo.best_of(infer, rounds), "train": zoo.best_of(train, rounds),
            "threads": torch.get_num_threads(), "info": f"torch {torch.__version__}"}


def run_worker(side, name, threads, workdir, rounds, per_layer):
    env = {k: v for k, v in os.environ.items() if k not in POOL_VARIABLES + zoo.BAD_ENV}
    env["GLOG_minloglevel"] = "1"
    if side == "numcaffe":
        env["NUMCAFFE_THREADS"] = str(threads)
        from numcaffe.net import threads as budget
        budget.prepare_environment(threads, True, env)
    else:
        for v in POOL_VARIABLES[:-1]:
            env[v] = str(threads)
    spec = json.dumps({"side": side, "net": name, "threads": threads, "dir": workdir, "rounds": rounds,
                       "layers": per_layer})
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


# ---------------------------------------------------------------- report

def per_layer_table(name, a, b, t1, t2):
    print(f"\nper layer, {name}, numcaffe (ms, min over repeats)")
    print(f"{'layer':28s} {'type':12s} {f'fwd@{t1}':>8s} {f'fwd@{t2}':>8s} {'x':>5s} "
          f"{f'bwd@{t1}':>8s} {f'bwd@{t2}':>8s} {'x':>5s}")
    by_type = {}
    slower = []
    for (lname, ltype, f1, b1), (_, _, f2, b2) in zip(a, b):
        sf = f1 / f2 if f2 > 0 else float("nan")
        sb = b1 / b2 if b2 > 0 else float("nan")
        print(f"{lname[:28]:28s} {ltype[:12]:12s} {f1 * 1e3:8.3f} {f2 * 1e3:8.3f} {sf:5.2f} "
              f"{b1 * 1e3:8.3f} {b2 * 1e3:8.3f} {sb:5.2f}")
        t = by_type.setdefault(ltype, [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((f1, f2, b1, b2)):
            t[i] += v
        # slower: beyond 10% and 0.05 ms, which timer noise on a shared machine stays under
        if f2 > 1.1 * f1 + 5e-5 or b2 > 1.1 * b1 + 5e-5:
            slower.append(lname)
    print(f"\nby type, {name} (ms, sums)")
    for ltype, (f1, f2, b1, b2) in sorted(by_type.items(), key=lambda kv: -(kv[1][0] + kv[1][2])):
        print(f"{ltype[:28]:28s} {'':12s} {f1 * 1e3:8.2f} {f2 * 1e3:8.2f} {f1 / f2 if f2 else 0:5.2f} "
              f"{b1 * 1e3:8.2f} {b2 * 1e3:8.2f} {b1 / b2 if b2 else 0:5.2f}")
    print(f"layers slower with {t2} threads than {t1} (>10% and >0.05 ms): {', '.join(slower) or 'none'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", default="cifar10_quick,resnet50", help="comma-separated, of: " + ", ".join(zoo.NETS))
    p.add_argument("--threads", default="1,2", help="the two thread counts to compare")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--layers", action="store_true", help="numcaffe's per-layer figures at both counts")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        if spec["side"] == "numcaffe":
            out = numcaffe_worker(spec["net"], spec["dir"], spec["rounds"], spec["layers"])
        else:
            out = torch_worker(spec["net"], spec["dir"], spec["threads"], spec["rounds"])
        json.dump(out, sys.stdout)
        return
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in zoo.NETS]
    if unknown:
        sys.exit(f"bench_threads: unknown net {unknown[0]!r}; nets: {', '.join(zoo.NETS)}")
    t1, t2 = (int(t) for t in args.threads.split(","))

    best = {}       # (net, side, threads) -> {"infer", "train", "layers"}
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as workdir:
        for rep in range(args.repeat):
            for name in nets:
                row = {}
                l0 = loadavg()
                for side in ("numcaffe", "torch"):
                    for t in (t1, t2):
                        r = run_worker(side, name, t, workdir, args.rounds, args.layers and side == "numcaffe")
                        row[side, t] = r
                        k = (name, side, t)
                        if k not in best:
                            best[k] = r
                        else:
                            for m in ("infer", "train"):
                                best[k][m] = min(best[k][m], r[m])
                            if "layers" in r:
                                best[k]["layers"] = [(n_, ty, min(f, f_), min(b, b_)) for (n_, ty, f, b), (_, _, f_, b_)
                                                     in zip(best[k]["layers"], r["layers"])]
                l1 = loadavg()
                nc1, nc2, th1, th2 = row["numcaffe", t1], row["numcaffe", t2], row["torch", t1], row["torch", t2]
                print(f"repeat {rep + 1} {name:14s} load {l0:4.2f}->{l1:4.2f}  "
                      f"train ms: numcaffe {nc1['train'] * 1e3:8.1f} / {nc2['train'] * 1e3:8.1f} = "
                      f"{nc1['train'] / nc2['train']:4.2f}x   torch {th1['train'] * 1e3:8.1f} / "
                      f"{th2['train'] * 1e3:8.1f} = {th1['train'] / th2['train']:4.2f}x   "
                      f"infer: numcaffe {nc1['infer'] / nc2['infer']:4.2f}x torch {th1['infer'] / th2['infer']:4.2f}x",
                      flush=True)
    any_nc = best[nets[0], "numcaffe", t2]
    print(f"\nnumcaffe: {any_nc['info']} (at {t2} threads); {best[nets[0], 'torch', t2]['info']}; "
          f"min of {args.rounds} rounds, min over {args.repeat} repeats, cores {os.cpu_count()}\n")
    print(f"{'net (batch)':22s} {'':6s} {f'numcaffe {t1}t':>12s} {f'{t2}t':>8s} {'speedup':>8s}   "
          f"{f'torch {t1}t':>10s} {f'{t2}t':>8s} {'speedup':>8s}   {f'nc/torch @{t2}t':>14s}")
    verdicts = []
    for name in nets:
        for m in ("train", "infer"):
            a1, a2 = best[name, "numcaffe", t1][m], best[name, "numcaffe", t2][m]
            b1, b2 = best[name, "torch", t1][m], best[name, "torch", t2][m]
            label = f"{name} ({zoo.NETS[name][1]})" if m == "train" else ""
            print(f"{label:22s} {m:6s} {a1 * 1e3:12.1f} {a2 * 1e3:8.1f} {a1 / a2:7.2f}x   "
                  f"{b1 * 1e3:10.1f} {b2 * 1e3:8.1f} {b1 / b2:7.2f}x   {a2 / b2:14.2f}")
            if m == "train":
                verdicts.append((name, a1 / a2, b1 / b2))
    print()
    for name, s, ts in verdicts:
        print(f"  threads: {name} training iteration {t1} -> {t2} threads {s:5.2f}x (goal >= {GOAL}; "
              f"torch {ts:4.2f}x)  {'met' if s >= GOAL else 'NOT met'}")
    if args.layers:
        for name in nets:
            per_layer_table(name, best[name, "numcaffe", t1]["layers"], best[name, "numcaffe", t2]["layers"], t1, t2)


if __name__ == "__main__":
    main()
