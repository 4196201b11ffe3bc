"""``numcaffe plot LOG... [-o out.png]``: training curves from one or more logs.

One panel per output name (train and test curves of the same name share a
panel: train solid, test dashed with markers), plus a panel for the learning
rate; several logs are overlaid, one colour each.  The x axis is the iteration
or (``--x seconds``) the wall time since the start.  The format follows the
output's extension (``.png``, ``.svg``, ``.pdf``, ``.jpg``: any that matplotlib writes).

Examples::

    numcaffe plot lenet_train.log -o lenet.png
    numcaffe plot run1.log run2.log --x seconds --outputs loss,accuracy -o compare.svg

:func:`plot_logs` is the same as a function (``numcaffe train --plot`` uses it).
"""
import math
import os

from numcaffe.net.errors import ConfigError, NumcaffeError
from numcaffe.tools.parse_log import parse_log

COMMAND = "plot"
HELP = "plot training curves (outputs, learning rate) of one or more training logs"

def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NumcaffeError("plotting needs matplotlib: pip install 'numcaffe[tools]'") from None
    return Figure


def check_format(out):
    """Fail unless matplotlib writes the image format that ``out``'s extension names (png, jpg, svg, pdf, ...)."""
    _require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(out)[1].lower()
    if ext[1:] not in formats:
        raise ConfigError(f"{out}: unsupported plot format {ext or '(none)'!r}; matplotlib writes "
                          f"{', '.join('.' + e for e in sorted(formats))}")


def _finite(xs, ys):
    pts = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_tables(tables, out, x="iters", outputs=None, lr=True, log_y=(), title=None):
    """Draw parsed logs (:class:`~numcaffe.tools.parse_log.LogTables`) into the file ``out``."""
    if x not in ("iters", "seconds"):
        raise ConfigError(f"--x must be 'iters' or 'seconds', not {x!r}")
    check_format(out)
    Figure = _require_matplotlib()
    xcol = "NumIters" if x == "iters" else "Seconds"
    names = []
    for t in tables:
        for n in t.train.outputs + t.test.outputs:
            if n not in names:
                names.append(n)
    if outputs:
        missing = [n for n in outputs if n not in names]
        if missing:
            raise ConfigError(f"no output named {', '.join(map(repr, missing))} in the log(s); "
                              f"they have {', '.join(names) or 'none'}")
        names = list(outputs)
    panels = names + (["learning rate"] if lr else [])
    if not panels:
        raise ConfigError("nothing to plot: the log(s) hold no outputs")
    fig = Figure(figsize=(8, 2.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(tables))]
    several = len(tables) > 1
    for ax, name in zip(axes, panels):
        for t, color in zip(tables, colors):
            tag = os.path.basename(t.path) + ": " if several else ""
            if name == "learning rate":
                xs, ys = _finite(t.train.column(xcol), t.train.column("LearningRate"))
                ax.plot(xs, ys, color=color, label=f"{tag}lr")
                continue
            if name in t.train.columns:
                xs, ys = _finite(t.train.column(xcol), t.train.column(name))
                ax.plot(xs, ys, color=color, linewidth=1.0, label=f"{tag}train {name}")
            if name in t.test.columns:
                xs, ys = _finite(t.test.column(xcol), t.test.column(name))
                ax.plot(xs, ys, color=color, linestyle="--", marker="o", markersize=3,
                        label=f"{tag}test {name}")
        ax.set_ylabel(name)
        if name in log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("iteration" if x == "iters" else "seconds")
    if title or not several:
        axes[0].set_title(title or os.path.basename(tables[0].path))
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise ConfigError(f"{out}: cannot write: {e.strerror or e}") from None
    return out


def plot_logs(paths, out, **kwargs):
    """Parse the logs at ``paths`` and plot them into ``out``."""
    tables = [parse_log(p) for p in paths]
    empty = [t.path for t in tables if not t.train.rows and not t.test.rows]
    if empty:
        raise ConfigError(f"{empty[0]}: no training or test output lines found; is it a training log?")
    return plot_tables(tables, out, **kwargs)


def add_arguments(p):
    p.add_argument("logs", nargs="+", metavar="LOG", help="training log(s), Caffe's or numcaffe's")
    p.add_argument("-o", "--output", default="training.png", help="the image to write (.png, .svg, .pdf, .jpg, ...; "
                   "default training.png)")
    p.add_argument("--x", choices=["iters", "seconds"], default="iters", help="x axis (default iters)")
    p.add_argument("--outputs", default=None, help="comma-separated outputs to plot (default all)")
    p.add_argument("--no-lr", action="store_true", help="leave out the learning-rate panel")
    p.add_argument("--log-y", default="", help="comma-separated outputs drawn on a log scale (e.g. loss)")
    p.add_argument("--title", default=None, help="figure title")


def _names(text):
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def run(args):
    out = plot_logs(args.logs, args.output, x=args.x, outputs=_names(args.outputs), lr=not args.no_lr,
                    log_y=_names(args.log_y) or (), title=args.title)
    print(f"wrote {out}")
    return 0
