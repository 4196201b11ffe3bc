"""``numcaffe time``: per-layer forward and backward timings, in Caffe's format.

As Caffe's ``caffe time``: one untimed forward and backward pass (which also
loads every kernel, so the first timed iteration pays no compilation), then
``--iterations`` forward and backward passes with every layer timed on its own,
then the average per layer and the averages per pass.
"""
import time as _time

COMMAND = "time"
HELP = "benchmark a net's forward and backward passes, layer by layer (Caffe's `caffe time`)"


def add_arguments(p):
    p.add_argument("--model", required=True, help="the net definition (prototxt or YAML)")
    p.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    p.add_argument("--phase", default="TRAIN", choices=["TRAIN", "TEST"], help="net phase (default TRAIN)")
    p.add_argument("--level", type=int, default=0, help="net state level")
    p.add_argument("--stage", default="", help="comma-separated net state stages")
    p.add_argument("--weights", default=None, help="optional .caffemodel to load first")
    p.add_argument("--gpu", default=None, help="accepted for Caffe compatibility; numcaffe runs on the CPU")


def time_net(net, iterations, log=None):
    """Time ``net``; returns (per-layer forward ms, per-layer backward ms, fwd ms, bwd ms, total ms)."""
    n = len(net.layers)
    fwd, bwd = [0.0] * n, [0.0] * n
    clock = _time.perf_counter
    # Warm-up: one untimed pass of what is timed below (every layer's forward and backward, even where
    # the net itself needs no backward): kernels load (or compile), buffers and diffs are allocated.
    for i, layer in enumerate(net.layers):
        layer.Forward(net.bottom_vecs[i], net.top_vecs[i])
    for i in range(n - 1, -1, -1):
        net.layers[i].Backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
    total_fwd = total_bwd = 0.0
    start_all = clock()
    for it in range(iterations):
        t_iter = clock()
        for i, layer in enumerate(net.layers):
            t = clock()
            layer.Forward(net.bottom_vecs[i], net.top_vecs[i])
            fwd[i] += clock() - t
        t_mid = clock()
        total_fwd += t_mid - t_iter
        for i in range(n - 1, -1, -1):
            t = clock()
            net.layers[i].Backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
            bwd[i] += clock() - t
        total_bwd += clock() - t_mid
        if log:
            log.info("Iteration: %d forward-backward time: %.4g ms.", it + 1, (clock() - t_iter) * 1e3)
    total = (clock() - start_all) * 1e3
    k = 1e3 / max(iterations, 1)
    return [f * k for f in fwd], [b * k for b in bwd], total_fwd * k, total_bwd * k, total


def run(args):
    from numcaffe.net import Net
    from numcaffe.net.errors import ConfigError
    from numcaffe.net.log import get_logger

    if args.iterations < 1:
        raise ConfigError(f"--iterations must be at least 1, got {args.iterations}")
    log = get_logger()
    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.model, args.phase, weights=args.weights, stages=stages, level=args.level)
    if args.gpu is not None:
        log.warning("--gpu %s ignored: numcaffe runs on the CPU", args.gpu)
    log.info("Use CPU.")   # after the net is built, so that a bad model is the only line printed
    log.info("Performing Forward")
    loss = net.Forward()
    log.info("Initial loss: %g", loss)
    log.info("Performing Backward")
    net.Backward()
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    fwd, bwd, f, b, total = time_net(net, args.iterations, log)
    log.info("Average time per layer: ")
    width = max((len(l.name) for l in net.layers), default=0)   # a net with no layers times as 0 ms
    for layer, ft, bt in zip(net.layers, fwd, bwd):
        log.info("%*s\tforward: %.5g ms.", width, layer.name, ft)
        log.info("%*s\tbackward: %.5g ms.", width, layer.name, bt)
    log.info("Average Forward pass: %.5g ms.", f)
    log.info("Average Backward pass: %.5g ms.", b)
    log.info("Average Forward-Backward: %.5g ms.", f + b)
    log.info("Total Time: %.5g ms.", total)
    log.info("*** Benchmark ends ***")
    return 0
