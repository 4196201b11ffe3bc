"""The scaling model of docs/mpi.md: measured compute per iteration against ring-allreduce time.

    python bench/scaling_model.py              # the table from the figures measured on 2026-12-04
    python bench/scaling_model.py --measure    # measure forward + backward here first (one thread)

Per iteration, every node computes forward and backward on its batch (``C``,
measured) and then averages ``S`` bytes of gradients with a ring Allreduce:

    T(N) = 2 (N - 1) / N * S / bandwidth  +  2 (N - 1) * latency

(each of the 2(N - 1) steps of the ring sends S/N bytes and pays one message
latency).  Without overlap an iteration takes C + T, so the parallel efficiency
is C / (C + T), and it is below 80% once T > C / 4: the table gives the
fewest nodes where that happens, and, at 64 nodes, the compute time under
which it happens (a faster node, the same network).  Bandwidth is the line rate
(10 or 100 Gbit/s); latency 20 us per message on 10 Gbit/s Ethernet (TCP), 5 us
on 100 Gbit/s (RDMA); both are assumptions, the compute figures are measured.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: net: (prototxt, batch per node, parameters, ms per forward + backward at that batch, one thread)
#: measured on the 2-core VM of the README with bench/scaling_model.py --measure on 2026-12-04 (the
#: faster of two runs, at load averages 5.4 and 4.7 on the shared machine; ResNet-50 at batch 8, times 4).
MEASURED = {
    "LeNet": ("configs/lenet/lenet_deploy.prototxt", 64, 431_080, 8.4),
    "CIFAR-10 quick": ("tests/net/zoo/cifar10_quick.prototxt", 100, 145_578, 78.3),
    "ResNet-50": ("tests/net/zoo/resnet50_deploy.prototxt", 32, 25_610_269, 5019.5),
}
NETWORKS = {"10 Gbit/s": (10e9 / 8, 20e-6), "100 Gbit/s": (100e9 / 8, 5e-6)}
NODES = (1, 8, 64)


def ring_allreduce_seconds(nbytes, nodes, bandwidth, latency):
    if nodes == 1:
        return 0.0
    return 2 * (nodes - 1) / nodes * nbytes / bandwidth + 2 * (nodes - 1) * latency


def nodes_below_80(ms, nbytes, bandwidth, latency, most=10**6):
    """The fewest nodes at which the efficiency C / (C + T(N)) is below 80% (T grows with N), or None."""
    lo, hi = 1, most
    if ms / (ms + 1e3 * ring_allreduce_seconds(nbytes, hi, bandwidth, latency)) >= 0.8:
        return None
    while hi - lo > 1:          # efficiency(lo) >= 80% > efficiency(hi)
        mid = (lo + hi) // 2
        if ms / (ms + 1e3 * ring_allreduce_seconds(nbytes, mid, bandwidth, latency)) < 0.8:
            hi = mid
        else:
            lo = mid
    return hi


def measure(path, batch, iterations=3, timed_batch=None):
    """(parameters, ms per forward + backward at ``batch``) of a deploy prototxt, one thread."""
    import numpy as np
    from numcaffe.net.config import read_message
    from numcaffe.net.net import Net
    from numcaffe.net.proto import caffe_pb2
    b = timed_batch or batch
    p = read_message(os.path.join(ROOT, path), caffe_pb2.NetParameter)
    if p.input_dim:
        p.input_dim[0] = b
    for layer in p.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = b
    net = Net(p, phase=caffe_pb2.TRAIN)
    rs = np.random.RandomState(0)
    for blob in net.blobs.values():
        blob.data[...] = rs.standard_normal(blob.shape).astype(np.float32) * 0.1

    def once():
        net.Forward()
        for name in net.outputs:
            net.blobs[name].diff[...] = 1.0 / net.blobs[name].count
        net.Backward()

    once()
    best = float("inf")
    for _ in range(iterations):
        t = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t)
    return sum(x.count for x in net.learnable_params), 1e3 * best * batch / b


def table(measured):
    lines = ["| net (batch per node) | gradient MB | compute ms | network | " +
             " | ".join(f"{n} node{'s' * (n > 1)}: allreduce ms, efficiency" for n in NODES) +
             f" | below 80% at | at {NODES[-1]} nodes, below 80% when compute < |",
             "|---|---|---|---|" + "---|" * len(NODES) + "---|---|"]
    for name, (_, batch, params, ms) in measured.items():
        nbytes = 4 * params
        for net_name, (bw, lat) in NETWORKS.items():
            cells = []
            for n in NODES:
                t = 1e3 * ring_allreduce_seconds(nbytes, n, bw, lat)
                cells.append(f"{t:.2f}, {100 * ms / (ms + t):.1f}%")
            worst = 1e3 * ring_allreduce_seconds(nbytes, NODES[-1], bw, lat)
            below = nodes_below_80(ms, nbytes, bw, lat)
            lines.append(f"| {name} ({batch}) | {nbytes / 1e6:.2f} | {ms:.1f} | {net_name} | " + " | ".join(cells)
                         + f" | {f'{below:,} nodes' if below else 'never'} | {4 * worst:.1f} ms |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", action="store_true", help="time forward + backward here (one thread) first")
    args = ap.parse_args()
    measured = dict(MEASURED)
    if args.measure:
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            if os.environ.get(v) != "1":
                sys.exit("bench/scaling_model.py --measure: run with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                         "NUMBA_NUM_THREADS=1 (one rank's thread)")
        for name, (path, batch, _, _) in MEASURED.items():
            params, ms = measure(path, batch, timed_batch=8 if name == "ResNet-50" else None)
            measured[name] = (path, batch, params, ms)
            print(f"{name}: {params} parameters, {ms:.1f} ms per iteration at batch {batch}", flush=True)
    print(table(measured))


if __name__ == "__main__":
    main()
