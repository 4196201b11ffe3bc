"""Depthwise 3x3 convolution on MobileNet shapes: layers/depthwise.py's kernels against PyTorch.

    python bench/bench_depthwise.py [--rounds 5] [--iters 10]

Times the kernels alone (forward; backward with both gradients) in this process, and
F.conv2d(groups=C) with autograd in a child process (its thread pool would fight
numba's).  Prints median ms per call and the ratios to PyTorch measured in this run;
other load on the machine moves absolute times, so compare ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import time

#: N, C, H (= W), stride; 3x3 kernel, pad 1, multiplier 1 as in MobileNet
SHAPES = [(1, 32, 112, 1), (1, 64, 112, 2), (1, 128, 56, 1), (1, 256, 28, 2), (1, 512, 14, 1), (1, 1024, 7, 1),
          (8, 32, 112, 1), (8, 128, 56, 2), (8, 512, 14, 1)]


def _median_ms(fn, rounds, iters):
    import statistics
    fn()
    times = []
    for _ in range(rounds * iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def numcaffe_times(rounds, iters):
    import numpy as np
    from numcaffe.layers import depthwise as mod
    out = {}
    for N, C, H, s in SHAPES:
        Ho = (H + 2 - 3) // s + 1
        rs = np.random.RandomState(0)
        x = rs.standard_normal(N * C * H * H).astype(np.float32)
        w = rs.standard_normal(C * 9).astype(np.float32)
        b = np.zeros(C, np.float32)
        y = np.empty(N * C * Ho * Ho, np.float32)
        dy = rs.standard_normal(y.size).astype(np.float32)
        dw, dx = np.zeros_like(w), np.empty_like(x)
        if s == 1:
            fwd = lambda: mod.depthwise_forward_s1(x, N, C, H, H, w, C, 3, 3, 1, 1, 1, 1, Ho, Ho, b, True, y)  # noqa: E731
            bwd = lambda: mod.depthwise_backward_s1(x, dy, N, C, H, H, w, C, 3, 3, 1, 1, 1, 1, Ho, Ho,  # noqa: E731
                                                    dw, True, dx, True)
        else:
            fwd = lambda: mod.depthwise_forward(x, N, C, H, H, w, C, 3, 3, s, s, 1, 1, 1, 1, Ho, Ho, b, True, y)  # noqa: E731
            bwd = lambda: mod.depthwise_backward(x, dy, N, C, H, H, w, C, 3, 3, s, s, 1, 1, 1, 1, Ho, Ho,  # noqa: E731
                                                 dw, True, dx, True)
        row = [_median_ms(fwd, rounds, iters), _median_ms(bwd, rounds, iters)]
        out[str((N, C, H, s))] = row
    return out


def torch_times(rounds, iters):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    out = {}
    for N, C, H, s in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, C, H, H, generator=g, requires_grad=True)
        w = torch.randn(C, 1, 3, 3, generator=g, requires_grad=True)
        b = torch.zeros(C, requires_grad=True)
        state = {}

        def fwd():
            state["y"] = F.conv2d(x, w, b, stride=s, padding=1, groups=C)

        def bwd():
            x.grad = w.grad = b.grad = None
            fwd()
            state["y"].backward(state["gy"])
        fwd()
        state["gy"] = torch.randn(state["y"].shape, generator=g)
        tf = _median_ms(fwd, rounds, iters)
        tfb = _median_ms(bwd, rounds, iters)
        out[str((N, C, H, s))] = [tf, max(tfb - tf, 1e-6)]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--worker", choices=["torch"])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(torch_times(args.rounds, args.iters)))
        return
    ours = numcaffe_times(args.rounds, args.iters)
    try:
        res = subprocess.run([sys.executable, __file__, "--worker", "torch", "--rounds", str(args.rounds),
                              "--iters", str(args.iters)], capture_output=True, text=True, check=True)
        theirs = json.loads(res.stdout)
    except (subprocess.CalledProcessError, json.JSONDecodeError):
        theirs = None
    print("depthwise 3x3 pad 1; median ms per call (backward = dx and dw; torch's = fwd+bwd minus fwd)")
    print(f"{'N,C,H,stride':18s} {'fwd':>8s} {'bwd':>7s} {'torch fwd':>9s} {'bwd':>7s}  {'ratio':>6s}")
    for key, (nf, nb) in ours.items():
        line = f"{key:18s} {nf:8.3f} {nb:7.3f}"
        if theirs:
            tf, tb = theirs[key]
            line += f" {tf:9.3f} {tb:7.3f}  {(nf + nb) / (tf + tb):6.2f}"
        print(line)

if __name__ == "__main__":
    sys.exit(main())
