"""glog-format logging helpers."""
import numpy as np

from numcaffe.net.log import fmt


def test_fmt_prints_numbers_as_cpp_ostream_does():
    # C++'s default stream output: %g with six significant digits; integers as they are
    assert [fmt(0.1), fmt(np.float32(0.1)), fmt(1e-05), fmt(123456789.0), fmt(2.0)] == \
        ["0.1", "0.1", "1e-05", "1.23457e+08", "2"]
    assert [fmt(3), fmt(123456789), fmt(True)] == ["3", "123456789", "1"]
