"""The database layer: an LMDB reader gives back the mapped pages it has read."""
import sys

import numpy as np
import pytest

from numcaffe.net.data import db
from numcaffe.net.data.db import LMDB, array_datum, open_reader, open_writer, parse_datum, datum_array

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")

RECORDS = 12000         # of 784 bytes each (MNIST's size): 9.4 MB of values in leaf pages
SIDE = 28


def image(i):
    return ((np.arange(SIDE * SIDE).reshape(1, SIDE, SIDE) * 7 + i) % 251).astype(np.uint8)


@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("db") / "big_lmdb")
    with open_writer(path, LMDB) as w:
        for i in range(RECORDS):
            w.put(b"%08d" % i, array_datum(image(i), label=i % 10).SerializeToString())
    return path


def mapped_kb(path):
    """Resident kB of this process's mappings of ``path``/data.mdb."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and ":" not in head[0]:
                inside = line.rstrip().endswith(path + "/data.mdb")
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@linux_only
@pytest.mark.parametrize("release", [True, False])
def test_reading_a_whole_lmdb_keeps_few_pages_resident(big_db, monkeypatch, release):
    if not release:  # the control: without the release the whole file stays mapped
        monkeypatch.setattr(db, "RELEASE_EVERY", float("inf"))
    with open_reader(big_db, LMDB) as r:
        assert r._map is not None and r._map[1] >= RECORDS * SIDE * SIDE
        for start in range(0, RECORDS, 100):
            for k, (key, value) in enumerate(r.read(100)):
                assert key == b"%08d" % (start + k)
        resident = mapped_kb(big_db)
    size_kb = RECORDS * SIDE * SIDE // 1024
    if release:  # at most RELEASE_EVERY bytes of values (plus their pages' headers and the tree)
        assert resident < (db.RELEASE_EVERY >> 10) * 1.5 + 1024, (resident, size_kb)
    else:
        assert resident > size_kb * 0.9, (resident, size_kb)


def test_records_read_after_a_release_are_intact(big_db, monkeypatch):
    monkeypatch.setattr(db, "RELEASE_EVERY", 1)  # give the pages back after every read
    with open_reader(big_db, LMDB) as r:
        for lap in range(2):  # the second lap re-reads released pages
            for i in range(RECORDS):
                (key, value), = r.read(1)
                d = parse_datum(value)
                assert key == b"%08d" % i and d.label == i % 10
                if i % 97 == 0:
                    np.testing.assert_array_equal(datum_array(d), image(i))


def test_missing_path_names_each_place_looked_in_once(tmp_path, monkeypatch):
    # run from the config's own directory, the working directory and the config directory are one place
    from numcaffe.net.errors import DataError
    from numcaffe.net.io import resolve_path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        resolve_path("nothing_here", str(tmp_path), what="data_param.source")
    assert str(e.value).count(str(tmp_path)) == 1
    other = tmp_path / "configs"
    other.mkdir()
    with pytest.raises(DataError) as e:
        resolve_path("nothing_here", str(other), what="data_param.source")
    assert f"looked in {str(tmp_path)!r} and {str(other)!r}" in str(e.value)
