"""Every user-facing failure of every subcommand: one ``numcaffe: error: ...`` line, exit 1, no traceback."""
import pytest

from numcaffe.tools.cli import main


def cli(argv, capsys=None):
    """Run the command line; (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as e:          # argparse's own exit on bad flags
        status = e.code
    if capsys is None:
        return status, "", ""
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_clean_error(status, err, *needles):
    assert status == 1, err
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("numcaffe: error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
