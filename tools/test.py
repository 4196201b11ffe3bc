"""``numcaffe test``: score trained weights, as Caffe's ``caffe test``.

    numcaffe test --model M --weights W [--iterations 50] [--level N] [--stage a,b]

Runs the TEST-phase net forward ``--iterations`` times and logs, as Caffe
does, every batch's outputs (``Batch i, name = value``), the mean loss
(``Loss: x``) and each output's mean (``name = mean (* weight = loss)``).
"""

COMMAND = "test"
HELP = "score a model: run its TEST net with trained weights (Caffe's `caffe test`)"


def add_arguments(p):
    p.add_argument("--model", default="", help="the net definition (prototxt or YAML)")
    p.add_argument("--weights", default="", help="trained weights (.caffemodel or .caffemodel.h5), ','-separated")
    p.add_argument("--iterations", type=int, default=50, help="number of batches to run (default 50)")
    p.add_argument("--level", type=int, default=0, help="the net's state level")
    p.add_argument("--stage", default="", help="the net's state stages, separated by ','")
    p.add_argument("--gpu", default=None, help="accepted for Caffe compatibility; numcaffe runs on the CPU")


def score(net, iterations, log):
    """Caffe's test loop; returns ({output: mean}, mean loss)."""
    from numcaffe.net.log import fmt

    names, sums = [], []
    loss = 0.0
    for i in range(iterations):
        loss += net.Forward()
        idx = 0
        for name in net.outputs:
            for value in net.blobs[name].data.ravel():
                value = float(value)
                if i == 0:
                    names.append(name)
                    sums.append(value)
                else:
                    sums[idx] += value
                idx += 1
                log.info("Batch %d, %s = %s", i, name, fmt(value))
    loss /= iterations
    log.info("Loss: %s", fmt(loss))
    weights = net.blob_loss_weights
    means = {}
    for name, total in zip(names, sums):
        mean = total / iterations
        means.setdefault(name, mean)
        w = weights.get(name, 0.0)
        extra = f" (* {fmt(w)} = {fmt(w * mean)} loss)" if w else ""
        log.info("%s = %s%s", name, fmt(mean), extra)
    return means, loss


def run(args):
    from numcaffe.net import TEST, Net
    from numcaffe.net.errors import ConfigError
    from numcaffe.net.log import get_logger

    log = get_logger("numcaffe.test")
    if not args.model:
        raise ConfigError("need a model definition to score (--model)")
    if not args.weights:
        raise ConfigError("need model weights to score (--weights)")
    if args.iterations < 1:
        raise ConfigError(f"--iterations must be at least 1, got {args.iterations}")
    if args.gpu is not None:
        log.warning("--gpu %s ignored: numcaffe runs on the CPU", args.gpu)
    log.info("Use CPU.")
    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.model, TEST, stages=stages, level=args.level)
    if not net.layers:
        raise ConfigError(f"{args.model}: the net has no layers in the TEST phase; nothing to score")
    for w in args.weights.split(","):
        if w.strip():
            net.copy_from(w.strip())
    log.info("Running for %d iterations.", args.iterations)
    score(net, args.iterations, log)
    return 0
