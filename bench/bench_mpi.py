"""Data-parallel LeNet over MPI: images per second of one process against ``--procs 2``, same global batch.

    python bench/bench_mpi.py [--rounds 3] [--iters 300] [--batch 64]

Trains Caffe's LeNet on Fashion-MNIST (``numcaffe data fashion-mnist`` first)
with its solver, no tests and no snapshots, as whole ``numcaffe train`` jobs:

* ``1 process``: batch 64, BLAS and Numba threads as a user gets them (OpenBLAS
  takes every core);
* ``1 process, 1 thread``: the same with OMP_NUM_THREADS=1 etc., the work one
  rank does;
* ``--procs 2``: two ranks of batch 32 (the same global batch of 64), one thread each.

The jobs alternate round by round, so machine load hits all alike.  Throughput
is taken from the solver's own display lines (``Iteration N (X iter/s ...)``),
leaving out the first interval (imports, kernel loading).  Communication: the
ranks' own figure (time inside the gradient Allreduce per iteration, waiting for
the slower rank included) and a bare 2-rank Allreduce of the same 1.72 MB
buffer, timed alone, which is what the network part of the scaling model in
docs/mpi.md needs.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LENET = os.path.join(ROOT, "configs", "lenet", "lenet_train_test.prototxt")
DATA = os.path.join(ROOT, "configs", "lenet", "data")
THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
DISPLAY = 50

_RATE = re.compile(r"\] Iteration (\d+) \(([0-9.e+-]+) iter/s")
_ALLREDUCE = re.compile(r"Allreduce of the gradients \((\d+) floats, [0-9.]+ MB\): ([0-9.]+) ms per iteration")


def write_job(folder, batch, iters):
    with open(LENET) as f:
        net = f.read()
    net = net.replace('source: "data/train_lmdb"', f'source: "{DATA}/train_lmdb"')
    net = net.replace('source: "data/test_lmdb"', f'source: "{DATA}/test_lmdb"')
    net = net.replace("batch_size: 64", f"batch_size: {batch}")
    net_path = os.path.join(folder, f"net_{batch}.prototxt")
    with open(net_path, "w") as f:
        f.write(net)
    solver = os.path.join(folder, f"solver_{batch}.prototxt")
    with open(solver, "w") as f:
        f.write(f'net: "{net_path}"\nbase_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" '
                f'gamma: 0.0001 power: 0.75\ndisplay: {DISPLAY} max_iter: {iters} snapshot: 0 '
                f'snapshot_after_train: false solver_mode: CPU random_seed: 1701\n')
    return solver


def run(solver, procs=1, one_thread=False):
    env = dict(os.environ)
    for v in THREADS:
        env.pop(v, None)
        if one_thread:
            env[v] = "1"
    cmd = [sys.executable, "-m", "numcaffe.tools.cli", "train", "--solver", solver]
    if procs > 1:
        cmd += ["--procs", str(procs)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"bench_mpi: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    rates = [float(m.group(2)) for m in _RATE.finditer(res.stderr) if int(m.group(1)) > DISPLAY]
    comm = _ALLREDUCE.search(res.stderr)
    return statistics.mean(rates), (float(comm.group(2)) if comm else None)


def bare_allreduce(floats=431086, reps=200):
    """ms per Allreduce of ``floats`` float32 between 2 ranks of this machine, nothing else running."""
    from numcaffe.tools.procs import find_mpiexec
    code = ("import numpy as np, time\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\n"
            f"b = np.ones({floats}, np.float32)\n"
            "for _ in range(20): c.Allreduce(MPI.IN_PLACE, b)\n"
            "c.Barrier(); t = time.perf_counter()\n"
            f"for _ in range({reps}): c.Allreduce(MPI.IN_PLACE, b)\n"
            f"t = (time.perf_counter() - t) / {reps}\n"
            "small = np.ones(8, np.float32); c.Barrier(); s = time.perf_counter()\n"
            f"for _ in range({reps}): c.Allreduce(MPI.IN_PLACE, small)\n"
            f"s = (time.perf_counter() - s) / {reps}\n"
            "if c.rank == 0: print(t * 1e3, s * 1e6)\n")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run([find_mpiexec(), "-n", "2", "--oversubscribe", sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def loadavg():
    """/proc/loadavg's 1, 5 and 15 minute averages (the machine may be shared: every figure carries its load)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64, help="the global batch")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(DATA, "train_lmdb")):
        sys.exit("bench_mpi: run `numcaffe data fashion-mnist` first (configs/lenet/data/train_lmdb)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        one = write_job(folder, args.batch, args.iters)
        two = write_job(folder, args.batch // 2, args.iters)
        kinds = [("1 process", one, 1, False), ("1 process, 1 thread", one, 1, True),
                 ("--procs 2", two, 2, True)]
        rates = {k[0]: [] for k in kinds}
        comm = []
        for r in range(args.rounds):
            for name, solver, procs, single in (kinds if r % 2 == 0 else kinds[::-1]):
                rate, c = run(solver, procs, single)
                rates[name].append(rate * args.batch)
                if c is not None:
                    comm.append(c)
                print(f"round {r + 1}: {name:<20} {rate * args.batch:8.0f} images/s   load {loadavg()}",
                      flush=True)
    bare, latency = bare_allreduce()
    load_after = os.getloadavg()
    base = statistics.median(rates["1 process"])
    print(f"\nLeNet, Fashion-MNIST, global batch {args.batch}, {args.iters} iterations, median of "
          f"{args.rounds} rounds; {os.cpu_count()} cores; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print(f"{'':<22}{'images/s':>10}{'ms/iter':>10}{'vs 1 process':>14}")
    for name in rates:
        v = statistics.median(rates[name])
        print(f"{name:<22}{v:10.0f}{1e3 * args.batch / v:10.2f}{v / base:13.2f}x")
    print(f"\nAllreduce of the 431,086 gradient floats (1.72 MB) inside training: "
          f"{statistics.median(comm):.3f} ms per iteration (median over runs; waiting for the slower rank "
          f"included)")
    print(f"the same Allreduce alone, 2 ranks: {bare:.3f} ms; an 8-float Allreduce: {latency:.1f} us")


if __name__ == "__main__":
    main()
