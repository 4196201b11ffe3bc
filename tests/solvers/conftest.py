import logging

import pytest


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    @property
    def messages(self):
        return [r.getMessage() for r in self.records]


@pytest.fixture
def numcaffe_log():
    """The records numcaffe's logger (which does not propagate to root) emits during the test."""
    from numcaffe.net.log import get_logger
    logger = get_logger()
    handler = _ListHandler()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
