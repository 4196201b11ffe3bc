"""The caffe package surface: submodules named as Caffe's, and the small module-level functions
(has_nccl, Timer, init_log, log, __version__)."""
import importlib
import logging
import time

import pytest

import numcaffe.net.pycaffe as caffe
from numcaffe.net.errors import ConfigError
from numcaffe.net.log import get_logger


@pytest.mark.parametrize("sub", ["proto.caffe_pb2", "io", "draw", "net_spec", "coord_map", "classifier", "detector",
                                 "pycaffe"])
def test_submodules_are_caffes(sub):
    module = importlib.import_module(f"numcaffe.net.pycaffe.{sub}")
    assert module.__name__.endswith(sub.split(".")[-1])


def test_package_names_match_the_submodules():
    from numcaffe.net.pycaffe.classifier import Classifier
    from numcaffe.net.pycaffe.detector import Detector
    from numcaffe.net.pycaffe.net_spec import NetSpec
    from numcaffe.net.pycaffe.proto import caffe_pb2
    assert caffe.Classifier is Classifier and caffe.Detector is Detector and caffe.NetSpec is NetSpec
    assert caffe.proto.caffe_pb2 is caffe_pb2 and caffe.TRAIN == caffe_pb2.TRAIN
    assert set(caffe.__all__) <= set(dir(caffe))


def test_has_nccl_is_false_on_numcaffe():
    assert caffe.has_nccl() is False        # no GPU library; caffe.NCCL joins MPI ranks (net/pycaffe/parallel.py)
    assert caffe.NCCL.new_uid() == b"mpi"


def test_version_is_numcaffes():
    from importlib import metadata
    assert caffe.__version__ == metadata.version("numcaffe")


def test_timer_measures_from_start_to_stop():
    t = caffe.Timer()
    t.start()
    time.sleep(0.03)
    t.stop()
    first = t.ms
    assert first >= 30.0
    time.sleep(0.01)
    assert t.ms == first                  # stopped: reading again gives the same span
    t.start()
    time.sleep(0.02)
    running = t.ms                        # reading a running timer stops it, as Caffe's MilliSeconds
    assert 20.0 <= running
    time.sleep(0.01)
    assert t.ms == running


def test_timer_never_started_reads_zero_with_a_warning():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    get_logger().addHandler(handler)
    try:
        assert caffe.Timer().ms == 0.0
    finally:
        get_logger().removeHandler(handler)
    assert any("never been run" in r.getMessage() for r in records)


@pytest.fixture
def log_records():
    logger, records = get_logger(), []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    level = logger.level
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_init_log_sets_the_minimum_level_and_log_writes_info(log_records):
    caffe.init_log(0, True)
    caffe.log("a line from the script")
    assert [r.getMessage() for r in log_records] == ["a line from the script"]
    assert log_records[0].levelno == logging.INFO
    caffe.init_log(1)                     # warnings and up, as GLOG_minloglevel=1
    caffe.log("not shown")
    assert len(log_records) == 1
    caffe.init_log()                      # no level: leaves it as it is
    caffe.log("still not shown")
    assert len(log_records) == 1
    with pytest.raises(ConfigError, match="expected 0 \\(INFO\\), 1 \\(WARNING\\)"):
        caffe.init_log(7)
