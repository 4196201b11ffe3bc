"""Model-zoo nets: numcaffe against PyTorch CPU, layer for layer, same shapes, same thread count, one run.

    python bench/bench_zoo.py [--nets cifar10_quick,resnet50] [--threads 2] [--rounds 5] [--layers NET]

Nets (tests/net/zoo and configs/lenet): CIFAR-10 quick at batch 100, LeNet at batch 64,
AlexNet, GoogLeNet, ResNet-50, MobileNet v2 and SqueezeNet 1.1 at batch 8, each at TEST
phase (BatchNorm with its stored statistics, Dropout off) with He-scaled random weights.
The PyTorch side (bench/torch_replay.py) is built from the same NetParameter in a child
process right after numcaffe's figures for that net (its OpenMP pool would fight
OpenBLAS's threads in this process), gets numcaffe's
weights and input copied in, and reports the max relative difference of the outputs
(``diff``, a sanity column: float32 summation order alone gives ~1e-6).

Per net: ``fwd`` = numcaffe forward of the net as deployed (no ``force_backward``: no layer
keeps anything for backward) / torch forward under ``no_grad``; ``f+b`` = numcaffe
forward + backward (``force_backward``, output diffs of ones, parameter diffs cleared
first) / torch forward + backward (input and every parameter get gradients, as
numcaffe's).  Times are the minimum over ``--rounds`` rounds of wall time, after one
warm-up.  Then the geometric means and the goals of issue 11, met or not.

Environment: the thread count goes to OpenBLAS, OpenMP, Numba and torch (and to
threadpoolctl when installed), and the idle pools sleep as under the ``numcaffe`` command
(net/threads.py's ``prepare_environment``: without it OpenBLAS's idle threads spin
through every Numba loop, CIFAR-10 quick's forward 56 against 42 ms); torch keeps its own
OpenMP defaults.  OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which some
machines here set for old OpenBLAS builds and which slow a current numpy's, are unset for
this benchmark (the script re-executes itself without them) and the BLAS kernel in use is
printed.  Machine load moves absolute times: compare the ratios of one run.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ZOO = os.path.join(ROOT, "tests", "net", "zoo")

#: name → (file, batch)
NETS = {
    "cifar10_quick": (os.path.join(ZOO, "cifar10_quick.prototxt"), 100),
    "lenet": (os.path.join(ROOT, "configs", "lenet", "lenet_deploy.prototxt"), 64),
    "alexnet": (os.path.join(ZOO, "bvlc_alexnet.prototxt"), 8),
    "googlenet": (os.path.join(ZOO, "bvlc_googlenet.prototxt"), 8),
    "resnet50": (os.path.join(ZOO, "resnet50_deploy.prototxt"), 8),
    "mobilenet_v2": (os.path.join(ZOO, "mobilenet_v2.prototxt"), 8),
    "squeezenet1.1": (os.path.join(ZOO, "squeezenet_v1.1.prototxt"), 8),
}
#: the nets of issue 11's goals (LeNet has its own training goal)
ZOO_NETS = ["cifar10_quick", "alexnet", "googlenet", "resnet50", "mobilenet_v2", "squeezenet1.1"]
GOALS = {"inference geomean": 0.8, "inference max": 1.0, "training geomean": 0.6, "lenet training": 0.5}
BAD_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def best_of(fn, rounds):
    fn()                                           # warm-up (and JIT compile)
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')} "
                     f"threads={i.get('num_threads')}" for i in threadpool_info())


# ---------------------------------------------------------------- numcaffe side

def load_param(path, batch):
    """The deploy NetParameter at TEST, with force_backward and the batch size set."""
    from numcaffe.net.config import read_message
    from numcaffe.net.net import filter_net
    from numcaffe.net.proto import caffe_pb2
    param = read_message(path, caffe_pb2.NetParameter)
    param.force_backward = True
    for shape in param.input_shape:
        shape.dim[0] = batch
    if param.input_dim:
        param.input_dim[0] = batch
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    param.state.phase = caffe_pb2.TEST
    return filter_net(param, param.state)


def numcaffe_net(name, workdir):
    """Build, randomize, feed one net; save param, weights, input and outputs for the torch side."""
    import numpy as np
    from numcaffe.net.net import Net
    sys.path.insert(0, ROOT)
    from tests.net.test_zoo import randomize    # the weights the zoo and ONNX tests use
    path, batch = NETS[name]
    param = load_param(path, batch)
    net = Net(param, 1)
    rng = np.random.default_rng(0)
    randomize(net, rng)
    for n in net.inputs:
        net.blobs[n].data[...] = rng.standard_normal(net.blobs[n].shape, dtype=np.float32)
    arrays = {f"in:{n}": net.blobs[n].data.copy() for n in net.inputs}
    for layer in net.layers:
        for j, b in enumerate(layer.blobs):
            arrays[f"w:{layer.name}:{j}"] = b.data.copy()
    net.Forward()
    for n in net.outputs:
        arrays[f"out:{n}"] = net.blobs[n].data.copy()
    np.savez(os.path.join(workdir, f"{name}.npz"), **arrays)
    with open(os.path.join(workdir, f"{name}.pb"), "wb") as f:
        f.write(param.SerializeToString())
    input_diff = any(net.bottom_need_backward[i][j] for i in range(len(net.layers))
                     for j, b in enumerate(net._bottom_names[i]) if b in net.inputs)
    # Inference runs the net as deployed: no force_backward, so no layer keeps anything for a
    # backward pass (as torch's no_grad keeps nothing); same weights and input.
    param.force_backward = False
    infer = Net(param, 1)
    infer.share_trained_layers_with(net)
    for n in net.inputs:
        infer.blobs[n].data[...] = net.blobs[n].data
    return net, infer, input_diff


def numcaffe_times(net, infer, rounds, per_layer):
    for n in net.outputs:
        net.blobs[n].diff[...] = 1.0

    def fwd():
        infer.Forward()

    def fwd_bwd():
        net.ClearParamDiffs()
        net.Forward()
        net.Backward()
    out = {"fwd": best_of(fwd, rounds), "fb": best_of(fwd_bwd, rounds)}
    if per_layer:
        names = net._layer_names
        f = {n: math.inf for n in names}
        b = {n: math.inf for n in names}
        for _ in range(rounds + 1):
            for i, layer in enumerate(infer.layers):
                t0 = time.perf_counter()
                layer.Forward(infer.bottom_vecs[i], infer.top_vecs[i])
                f[names[i]] = min(f[names[i]], time.perf_counter() - t0)
            net.ClearParamDiffs()
            net.Forward()
            for i in range(len(net.layers) - 1, -1, -1):
                if net.layer_need_backward[i]:
                    t0 = time.perf_counter()
                    net.layers[i].Backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
                    b[names[i]] = min(b[names[i]], time.perf_counter() - t0)
                else:
                    b[names[i]] = 0.0
        out["layers"] = [(n, net.layers[i].type, f[n], b[n]) for i, n in enumerate(names)]
    return out


# ---------------------------------------------------------------- torch side (child process)

def torch_net(workdir, name):
    """The torch replay of a net numcaffe_net saved: (TorchNet, the saved arrays, the input tensors)."""
    import numpy as np
    import torch
    sys.path.insert(0, ROOT)
    from bench.torch_replay import TorchNet
    from numcaffe.net.proto import caffe_pb2
    param = caffe_pb2.NetParameter()
    with open(os.path.join(workdir, f"{name}.pb"), "rb") as f:
        param.ParseFromString(f.read())
    arrays = np.load(os.path.join(workdir, f"{name}.npz"))
    weights = {}
    for key in arrays.files:
        if key.startswith("w:"):
            layer, j = key[2:].rsplit(":", 1)
            weights.setdefault(layer, {})[int(j)] = arrays[key]
    tnet = TorchNet(param, {k: [v[j] for j in sorted(v)] for k, v in weights.items()})
    inputs = {k[3:]: torch.from_numpy(arrays[k].copy()) for k in arrays.files if k.startswith("in:")}
    return tnet, arrays, inputs


def torch_worker(workdir, names, threads, rounds, layers_net, input_diff):
    import torch
    sys.path.insert(0, ROOT)
    from bench.torch_replay import max_relative_difference
    torch.set_num_threads(threads)
    result = {}
    for name in names:
        tnet, arrays, inputs = torch_net(workdir, name)
        outs = [k[4:] for k in arrays.files if k.startswith("out:")]
        with torch.no_grad():
            blobs = tnet.forward(inputs)
        diff = max(max_relative_difference(blobs[o].numpy(), arrays[f"out:{o}"]) for o in outs)
        grad_inputs = {k: v.clone().requires_grad_(input_diff[name]) for k, v in inputs.items()}

        def fwd():
            with torch.no_grad():
                tnet.forward(inputs)

        def fwd_bwd():
            tnet.zero_grad()
            for v in grad_inputs.values():
                v.grad = None
            b = tnet.forward(grad_inputs)
            ys = [b[o] for o in outs]
            torch.autograd.backward(ys, [torch.ones_like(y) for y in ys])
        row = {"fwd": best_of(fwd, rounds), "fb": best_of(fwd_bwd, rounds), "diff": diff}
        if name == layers_net:
            per = {}

            def timer(step, seconds):
                per[step.name] = min(per.get(step.name, math.inf), seconds)
            timer.clock = time.perf_counter
            with torch.no_grad():
                for _ in range(rounds + 1):
                    tnet.forward(inputs, timer)
            row["layers"] = per
        result[name] = row
    result["_torch"] = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    return result


# ---------------------------------------------------------------- report

def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def report(nc, th, args):
    print(f"{'net (batch)':24s} {'numcaffe fwd ms':>15s} {'torch fwd ms':>12s} {'fwd':>6s}   "
          f"{'numcaffe f+b ms':>15s} {'torch f+b ms':>12s} {'f+b':>6s}   {'diff':>8s}")
    ratios = {}
    for name in args.nets:
        a, b = nc[name], th[name]
        rf, rb = a["fwd"] / b["fwd"], a["fb"] / b["fb"]
        ratios[name] = (rf, rb)
        print(f"{name + ' (' + str(NETS[name][1]) + ')':24s} {a['fwd'] * 1e3:15.1f} {b['fwd'] * 1e3:12.1f} {rf:6.2f}   "
              f"{a['fb'] * 1e3:15.1f} {b['fb'] * 1e3:12.1f} {rb:6.2f}   {b['diff']:8.1e}")
    zoo = [n for n in ZOO_NETS if n in ratios]
    gf, gb = geomean([ratios[n][0] for n in zoo]), geomean([ratios[n][1] for n in zoo])
    print(f"{'geometric mean (zoo)':24s} {'':15s} {'':12s} {gf:6.2f}   {'':15s} {'':12s} {gb:6.2f}")
    print()

    def verdict(label, value, goal):
        ok = value <= goal
        print(f"  {label:48s} {value:5.2f}  (goal <= {goal})  {'met' if ok else 'NOT met'}")
    if zoo:
        verdict(f"inference: geomean fwd over {len(zoo)} zoo nets", gf, GOALS["inference geomean"])
        worst = max(zoo, key=lambda n: ratios[n][0])
        verdict(f"inference: worst net ({worst})", ratios[worst][0], GOALS["inference max"])
        verdict(f"training: geomean f+b over {len(zoo)} zoo nets", gb, GOALS["training geomean"])
    if "lenet" in ratios:
        verdict("training: LeNet f+b (batch 64)", ratios["lenet"][1], GOALS["lenet training"])
    if args.layers:
        name = args.layers
        print(f"\nper layer, {name} (ms; torch: forward under no_grad)")
        print(f"{'layer':32s} {'type':14s} {'nc fwd':>9s} {'torch fwd':>9s} {'ratio':>6s} {'nc bwd':>9s}")
        tl = th[name].get("layers", {})
        total = 0.0
        for lname, ltype, f, b in nc[name]["layers"]:
            t = tl.get(lname)
            total += f
            ratio = f"{f / t:6.2f}" if t else "     -"
            tt = f"{t * 1e3:9.3f}" if t is not None else "        -"
            print(f"{lname[:32]:32s} {ltype[:14]:14s} {f * 1e3:9.3f} {tt} {ratio} {b * 1e3:9.3f}")
        print(f"{'sum':32s} {'':14s} {total * 1e3:9.3f} {sum(tl.values()) * 1e3:9.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", default=",".join(NETS), help="comma-separated, of: " + ", ".join(NETS))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--layers", default=None, metavar="NET", help="print per-layer figures for this net")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in args.nets + ([args.layers] if args.layers else []) if n not in NETS]
    if unknown:
        sys.exit(f"bench_zoo: unknown net {unknown[0]!r}; nets: {', '.join(NETS)}")
    if args.layers and args.layers not in args.nets:
        args.nets.append(args.layers)

    sys.path.insert(0, ROOT)
    from numcaffe.net import threads as budget
    wanted = {"NUMBA_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
    if not args.torch_worker:
        wanted.update(budget.QUIET_POOLS)
    if any(v in os.environ for v in BAD_ENV) or any(os.environ.get(k) != v for k, v in wanted.items()):
        for v in BAD_ENV:
            os.environ.pop(v, None)
        budget.prepare_environment(args.threads, True)   # what the numcaffe command sets before numpy loads
        os.environ.setdefault("GLOG_minloglevel", "1")      # the nets' setup log is not the point here
        os.execv(sys.executable, [sys.executable] + sys.argv)

    if args.torch_worker:
        spec = json.loads(args.torch_worker)
        json.dump(torch_worker(spec["dir"], args.nets, args.threads, args.rounds, args.layers, spec["input_diff"]),
                  sys.stdout)
        return

    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    # Net by net, numcaffe then torch right after it, so that machine load changing during the
    # run hits the two sides of one ratio alike.
    nc, th = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_zoo_") as workdir:
        for name in args.nets:
            net, infer, input_diff = numcaffe_net(name, workdir)
            nc[name] = numcaffe_times(net, infer, args.rounds, name == args.layers)
            del net, infer
            spec = json.dumps({"dir": workdir, "input_diff": {name: input_diff}})
            cmd = [sys.executable, os.path.abspath(__file__), "--nets", name, "--threads",
                   str(args.threads), "--rounds", str(args.rounds), "--torch-worker", spec]
            if args.layers == name:
                cmd += ["--layers", args.layers]
            # torch with its own OpenMP defaults, not numcaffe's quiet pools
            env = {k: v for k, v in os.environ.items() if k not in budget.QUIET_POOLS}
            th.update(json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                                                env=env).stdout))
    print(f"numcaffe: {blas_info()}")
    print(f"{th.pop('_torch')}; min of {args.rounds} rounds after a warm-up\n")
    report(nc, th, args)


if __name__ == "__main__":
    main()
