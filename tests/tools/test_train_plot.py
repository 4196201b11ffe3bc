"""`numcaffe train --plot` keeps a picture of the training curves up to date."""
import os
import shutil

import pytest

from numcaffe.tools.cli import main

XOR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "xor")


@pytest.fixture
def xor_dir(tmp_path, monkeypatch):
    """The XOR example copied into the working directory (needs matplotlib for --plot)."""
    for name in os.listdir(XOR):
        if os.path.isfile(os.path.join(XOR, name)):
            shutil.copy(os.path.join(XOR, name), tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_writes_the_plot(xor_dir):
    tmp_path = xor_dir
    assert main(["train", "--solver", "solver.prototxt", "--plot", "curves.png"]) == 0
    data = (tmp_path / "curves.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_an_unwritable_plot_format_fails_before_training(xor_dir, capsys):
    assert main(["train", "--solver", "solver.prototxt", "--plot", "curves.docx"]) == 1
    err = capsys.readouterr().err
    assert "numcaffe: error: curves.docx: unsupported plot format '.docx'" in err
    assert "Iteration 0" not in err and "Traceback" not in err and "Logging error" not in err
