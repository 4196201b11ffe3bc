"""``numcaffe draw NET OUT [--phase TRAIN|TEST] [--rankdir LR]``: the net as a graph.

As Caffe's draw_net.py; the drawing itself is :mod:`numcaffe.net.draw`.  The
output format follows OUT's extension: ``.dot``/``.gv`` writes the Graphviz
source (no Graphviz install needed), ``.png``, ``.svg``, ``.pdf`` render it
with Graphviz's ``dot`` program.

Example::

    numcaffe draw configs/lenet/lenet_train_test.prototxt lenet.png --phase TRAIN
"""
from numcaffe.net.draw import draw
from numcaffe.net.proto import caffe_pb2

COMMAND = "draw"
HELP = "draw a net's layers and blobs as a graph (png, svg, pdf or Graphviz dot)"


def add_arguments(p):
    p.add_argument("net", help="the net definition (prototxt, YAML or binary)")
    p.add_argument("output", help="the drawing: .png, .svg, .pdf, or .dot for Graphviz source")
    p.add_argument("--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL",
                   help="draw the layers of this phase only (default ALL, as Caffe)")
    p.add_argument("--rankdir", choices=["LR", "RL", "TB", "BT"], default="LR",
                   help="direction of the graph (default LR)")
    p.add_argument("--display-lrm", action="store_true", help="show each layer's lr and decay multipliers")


def run(args):
    from numcaffe.net.config import read_message

    net = read_message(args.net, caffe_pb2.NetParameter)
    draw(net, args.output, args.rankdir, None if args.phase == "ALL" else args.phase, args.display_lrm)
    print(f"wrote {args.output}")
    return 0
