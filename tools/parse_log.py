"""``numcaffe parse-log LOG [OUTDIR]``: the train and test tables of a training log, as CSV.

Reads Caffe's logs and numcaffe's alike (both are glog lines)::

    I1123 08:55:01.123456 12345 solver.cpp:239] Iteration 100 (34.9 iter/s, 2.864s/100 iters), loss = 0.67
    I1123 08:55:01.123470 12345 solver.cpp:258]     Train net output #0: loss = 0.67 (* 1 = 0.67 loss)
    I1123 08:55:01.123480 12345 sgd_solver.cpp:112] Iteration 100, lr = 0.0099
    I1123 08:55:03.000000 12345 solver.cpp:347] Iteration 500, Testing net (#0)
    I1123 08:55:05.000000 12345 solver.cpp:414]     Test net output #0: accuracy = 0.8184

and writes ``LOG.train`` and ``LOG.test`` into OUTDIR (default: beside the
log; made if missing, with its parents), as Caffe's tools/extra/parse_log.py does: columns ``NumIters``,
``Seconds`` (since the ``Solving`` line), ``LearningRate``, then one column per
net output.  Outputs of test net #k (k > 0) are named ``net<k>/<output>``.

One difference from Caffe's script: each row gets the learning rate of its own
iteration (Caffe's script gives a row the rate printed one display earlier,
because the rate line comes after the outputs).
"""
import bisect
import csv
import datetime
import math
import os
import re
from dataclasses import dataclass, field

from numcaffe.net.errors import ConfigError

COMMAND = "parse-log"
HELP = "extract the train and test tables of a Caffe or numcaffe training log as CSV"

_GLOG = re.compile(r"^[IWEF](\d{8}|\d{4}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
_TRAIN_HEAD = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_TEST_HEAD = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_LR = re.compile(r"Iteration (\d+), lr = (\S+)")
_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = (\S+)")
FIXED = ("NumIters", "Seconds", "LearningRate")


@dataclass
class Table:
    """Rows (dicts) and the column names in order."""

    columns: list = field(default_factory=lambda: list(FIXED))
    rows: list = field(default_factory=list)

    def column(self, name):
        return [r.get(name, math.nan) for r in self.rows]

    @property
    def outputs(self):
        return self.columns[len(FIXED):]


@dataclass
class LogTables:
    path: str
    train: Table
    test: Table


def _float(text):
    try:
        return float(text)
    except ValueError:
        return math.nan


class _Clock:
    """Turns glog timestamps into datetimes (glog's classic form has no year)."""

    def __init__(self, year):
        self.year = year
        self.last = None

    def __call__(self, line):
        m = _GLOG.match(line)
        if not m:
            return None
        date, hh, mm, ss, frac = m.groups()
        try:
            if len(date) == 8:
                t = datetime.datetime(int(date[:4]), int(date[4:6]), int(date[6:]), int(hh), int(mm), int(ss),
                                      int((frac or "0").ljust(6, "0")))
            else:
                t = datetime.datetime(self.year, int(date[:2]), int(date[2:]), int(hh), int(mm), int(ss),
                                      int((frac or "0").ljust(6, "0")))
                if self.last is not None and t < self.last - datetime.timedelta(days=180):
                    self.year += 1            # the log ran over new year
                    t = t.replace(year=self.year)
        except ValueError:
            return None
        self.last = t
        return t


def parse_lines(lines, year=None, path="<log>"):
    """Parse an iterable of log lines into :class:`LogTables`."""
    clock = _Clock(year or datetime.date.today().year)
    start = None
    first_time = None
    train, test = Table(), Table()
    lr_at = {}
    row = None            # the row the next output line belongs to
    head = None           # ("train", iteration, None) or ("test", iteration, net index)
    for line in lines:
        t = clock(line)
        if t is not None and first_time is None:
            first_time = t
        if start is None and t is not None and "] Solving " in line:
            start = t
        m = _LR.search(line)
        if m:
            lr_at[int(m.group(1))] = _float(m.group(2))
            continue
        m = _TEST_HEAD.search(line)
        if m:
            it, net = int(m.group(1)), int(m.group(2))
            head, row = ("test", it, net), None
            if net and test.rows and test.rows[-1]["NumIters"] == it:
                row = test.rows[-1]       # test nets #1, #2, ... of one test share its row
            continue
        m = _TRAIN_HEAD.search(line)
        if m:
            head, row = ("train", int(m.group(1)), None), None
            continue
        m = _OUTPUT.search(line)
        if not m or head is None:
            continue
        kind, _, name, value = m.groups()
        kind = kind.lower()
        if kind != head[0]:
            continue
        table = train if kind == "train" else test
        if kind == "test" and head[2]:
            name = f"net{head[2]}/{name}"
        if row is None:               # the first output after a head starts a row
            row = {"NumIters": head[1], "_time": t}
            table.rows.append(row)
        if name not in table.columns:
            table.columns.append(name)
        row[name] = _float(value)
    origin = start or first_time
    lr_iters = sorted(lr_at)
    for table in (train, test):
        for r in table.rows:
            t = r.pop("_time")
            r["Seconds"] = (t - origin).total_seconds() if t is not None and origin is not None else math.nan
            r["LearningRate"] = _lr_for(r["NumIters"], lr_at, lr_iters)
    return LogTables(path, train, test)


def _lr_for(it, lr_at, lr_iters):
    """The rate of iteration ``it``: printed for it, else the last printed before it, else the first."""
    if it in lr_at:
        return lr_at[it]
    if not lr_iters:
        return math.nan
    k = bisect.bisect_right(lr_iters, it)
    return lr_at[lr_iters[k - 1]] if k else lr_at[lr_iters[0]]


def parse_log(path):
    """Parse the training log at ``path``."""
    path = os.fspath(path)
    try:
        year = datetime.datetime.fromtimestamp(os.path.getmtime(path)).year
        with open(path, encoding="utf-8", errors="replace") as f:
            tables = parse_lines(f, year, path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such log file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a log file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read log file: {e.strerror or e}") from None
    return tables


def _cell(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def write_csv(path, table, delimiter=","):
    try:
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter=delimiter)
            w.writerow(table.columns)
            for r in table.rows:
                w.writerow([_cell(r.get(c, math.nan)) for c in table.columns])
    except OSError as e:
        raise ConfigError(f"{path}: cannot write: {e.strerror or e}") from None


def save_csv_files(tables, outdir, delimiter=","):
    """Write ``<log name>.train`` and ``<log name>.test`` into ``outdir`` (made if missing); returns their paths."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:   # a file in the way, or no permission
        raise ConfigError(f"{outdir}: cannot create the output directory: {e.strerror or e}") from None
    base = os.path.join(outdir, os.path.basename(tables.path))
    write_csv(base + ".train", tables.train, delimiter)
    write_csv(base + ".test", tables.test, delimiter)
    return base + ".train", base + ".test"


def add_arguments(p):
    p.add_argument("log", help="a training log (Caffe's or numcaffe's)")
    p.add_argument("outdir", nargs="?", default=None, help="where to write LOG.train and LOG.test "
                   "(default: the log's directory; made if missing)")
    p.add_argument("--delimiter", default=",", help="column delimiter (default ',')")


def run(args):
    if len(args.delimiter) != 1:
        raise ConfigError(f"--delimiter must be one character, got {args.delimiter!r}")
    tables = parse_log(args.log)
    if not tables.train.rows and not tables.test.rows:
        raise ConfigError(f"{args.log}: no training or test output lines found; is it a Caffe or numcaffe "
                          f"training log?")
    outdir = args.outdir or os.path.dirname(os.path.abspath(args.log))
    for path, table in zip(save_csv_files(tables, outdir, args.delimiter), (tables.train, tables.test)):
        print(f"wrote {path}: {len(table.rows)} rows, columns {', '.join(table.columns)}")
    return 0
