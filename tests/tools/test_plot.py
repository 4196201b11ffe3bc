"""``numcaffe plot``: training curves as PNG/SVG from Caffe's fixture log and numcaffe's logs."""
from pathlib import Path

import pytest

from numcaffe.tools.cli import main
from numcaffe.tools.parse_log import parse_log
from numcaffe.tools.plot import plot_tables
from tests.tools.test_errors import assert_clean_error, cli
from tests.tools.test_parse_log import NUMCAFFE_LOG

LOG = Path(__file__).resolve().parents[1] / "fixtures" / "caffe" / "lenet_train.log"


def test_png_of_the_fixture_log(tmp_path):
    out = tmp_path / "curves.png"
    assert main(["plot", str(LOG), "-o", str(out), "--log-y", "loss"]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000


def test_svg_overlays_several_logs_by_seconds(tmp_path):
    other = tmp_path / "numcaffe.log"
    other.write_text(NUMCAFFE_LOG)
    out = tmp_path / "both.svg"
    assert main(["plot", str(LOG), str(other), "--x", "seconds", "-o", str(out)]) == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # one legend entry per log and curve, labelled by the log's name
    assert "lenet_train.log: train loss" in svg and "numcaffe.log: test accuracy" in svg
    assert "seconds" in svg


def test_any_format_matplotlib_writes_is_accepted(tmp_path):
    out = tmp_path / "curves.jpg"
    plot_tables([parse_log(LOG)], str(out))
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG


def test_panels_follow_outputs(tmp_path):
    tables = [parse_log(LOG)]
    out = tmp_path / "acc.svg"
    plot_tables(tables, str(out), outputs=["accuracy"], lr=False)
    svg = out.read_text()
    assert "test accuracy" in svg and "train loss" not in svg and "learning rate" not in svg


@pytest.mark.parametrize("args,needle", [
    (["-o", "x.docx"], "unsupported plot format"),
    (["--outputs", "acuracy"], "no output named 'acuracy'"),
    (["--x", "hours"], "invalid choice"),
])
def test_errors(tmp_path, capsys, args, needle):
    argv = ["plot", str(LOG)] + [a if a != "x.docx" else str(tmp_path / a) for a in args]
    if "-o" not in args:
        argv += ["-o", str(tmp_path / "p.png")]
    status, _, err = cli(argv, capsys)
    assert_clean_error(status, err, needle)
