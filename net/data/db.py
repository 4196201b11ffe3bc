"""Key-value databases of Datum records, as Caffe stores its data: LMDB and LevelDB.

Caffe's ``Data`` layer reads a database of serialized ``Datum`` messages in key
order with a cursor that wraps around at the end; its tools (convert_imageset,
convert_mnist_data) write such databases.  This module is that storage layer:

* :func:`open_reader` gives a :class:`Reader`: a cursor in key order that can
  ``seek`` to a key (so a run can resume exactly where it stopped) and reads
  the next ``n`` records, wrapping around.
* :func:`open_writer` gives a :class:`Writer` that commits in chunks.  Its LMDB
  map grows as needed (Caffe reserves a fixed 1 TB map, which fails on small
  disks and some file systems).
* :func:`datum_array` / :func:`array_datum` convert between Datum and numpy.
* :func:`~numcaffe.net.io.resolve_path` (here too) finds a relative data
  path as Caffe does (working directory) and, failing that, next to the
  config file.

LMDB reads through a read-only memory map, so every page a reader has touched
stays in the process's resident set: a Caffe run over a database grows by the
database's size (a 59 MB LeNet LMDB, or all of an ImageNet one).  On Linux the
reader hands the pages it has read back after every ``RELEASE_EVERY`` bytes
(``madvise`` MADV_DONTNEED on the map: the pages stay in the kernel's page
cache, and reading them again is a minor fault), so a run's memory no longer
depends on the size of its data.  Measured on LeNet's train_lmdb: one release
costs ~30 µs; ``numcaffe train`` peaks at 249 MB instead of 329.

``lmdb`` and ``plyvel`` (LevelDB) are optional (the ``data`` extra) and
imported only when a database is opened.
"""
import ctypes
import os
import sys
import threading

import numpy as np

from numcaffe.net.errors import DataError

LMDB = "lmdb"
LEVELDB = "leveldb"

#: First LMDB map size for writing; doubled whenever a chunk does not fit.
INITIAL_MAP_SIZE = 16 << 20
#: Records per write transaction (Caffe's tools commit every 1000).
COMMIT_EVERY = 1000
#: Bytes an LMDB reader reads before it gives the mapped pages back.
RELEASE_EVERY = 4 << 20


def need(module, what):
    """Import an optional dependency, or fail naming the extra that provides it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{what} needs the Python package {module!r}; install numcaffe's data extra "
                        f"(pip install 'numcaffe[data]')") from None


def backend_name(backend):
    """'lmdb' or 'leveldb' from a DataParameter.DB value or a name."""
    if isinstance(backend, str):
        name = backend.lower()
        if name not in (LMDB, LEVELDB):
            raise DataError(f"unknown database backend {backend!r} (expected lmdb or leveldb)")
        return name
    from numcaffe.net.proto import caffe_pb2
    return LMDB if backend == caffe_pb2.DataParameter.LMDB else LEVELDB


def detect_backend(path):
    """The backend a database directory looks like it was written by, or None."""
    if os.path.isfile(os.path.join(path, "data.mdb")) or (os.path.isfile(path) and path.endswith(".mdb")):
        return LMDB
    if os.path.isfile(os.path.join(path, "CURRENT")):
        return LEVELDB
    return None


# ---------------------------------------------------------------- Datum <-> numpy


def datum_array(datum, where="datum"):
    """The (channels, height, width) array of an unencoded Datum: uint8 or float32."""
    c, h, w = datum.channels, datum.height, datum.width
    n = c * h * w
    if datum.data:
        if len(datum.data) != n:
            raise DataError(f"{where}: holds {len(datum.data)} bytes, expected channels*height*width = "
                            f"{c}*{h}*{w} = {n}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != n or n == 0:
        raise DataError(f"{where}: holds {len(datum.float_data)} float values, expected "
                        f"channels*height*width = {c}*{h}*{w} = {n}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def array_datum(array, label=None):
    """A Datum of a (C, H, W) array: raw bytes for uint8, float_data otherwise."""
    from numcaffe.net.proto import caffe_pb2
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise DataError(f"a Datum holds a (channels, height, width) array, got shape {a.shape}")
    d = caffe_pb2.Datum(channels=a.shape[0], height=a.shape[1], width=a.shape[2])
    if a.dtype == np.uint8:
        d.data = np.ascontiguousarray(a).tobytes()
    else:
        d.float_data.extend(a.astype(np.float32).ravel().tolist())
    if label is not None:
        d.label = int(label)
    return d


def parse_datum(value, where="record"):
    from google.protobuf import message as pb_message

    from numcaffe.net.proto import caffe_pb2
    d = caffe_pb2.Datum()
    try:
        d.ParseFromString(value)
    except pb_message.DecodeError as e:
        raise DataError(f"{where}: is not a serialized Datum ({e})") from None
    return d


# ---------------------------------------------------------------- reading


class _Shared:
    """Process-wide open environments, one per database, reference counted.

    LMDB must not be opened twice by one process and LevelDB locks its
    directory, so the TRAIN and TEST nets reading one database share a handle.
    """

    lock = threading.Lock()
    open = {}  # (backend, realpath) -> [handle, refcount]

    @classmethod
    def acquire(cls, backend, path, opener):
        key = (backend, os.path.realpath(path))
        with cls.lock:
            entry = cls.open.get(key)
            if entry is None:
                entry = cls.open[key] = [opener(), 0]
            entry[1] += 1
            return entry[0]

    @classmethod
    def release(cls, backend, path):
        key = (backend, os.path.realpath(path))
        with cls.lock:
            entry = cls.open.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del cls.open[key]
                entry[0].close()


class Reader:
    """A cursor over a database in key order that wraps around at the end.

    ``seek(key)`` positions at the first record whose key is ``>= key``
    (``None``: the first record); ``read(n)`` returns the next ``n`` (key, value)
    pairs and advances; ``key`` is the key of the record ``read`` returns next.
    One reader must not be used by two threads at once.
    """

    def __init__(self, path, backend):
        self.path = path
        self.backend = backend
        self._closed = False

    # subclasses: _first() -> bool, _seek(key) -> bool, _next() -> bool, _item() -> (k, v), count()
    def seek(self, key=None):
        ok = self._seek(key) if key is not None else self._first()
        if not ok and not self._first():
            raise DataError(f"{self.backend} database {self.path!r} is empty")

    @property
    def key(self):
        return self._item()[0]

    def read(self, n, stride=1):
        """The next ``n`` records; with ``stride`` k, every k-th (a rank's share of k ranks)."""
        out = []
        for _ in range(n):
            out.append(self._item())
            self._advance(stride)
        self._release_pages()
        return out

    def skip(self, n):
        """Pass over the next ``n`` records."""
        self._advance(n)
        self._release_pages()

    def _advance(self, n):
        for _ in range(n):
            if not self._next():
                self._first()  # Caffe: "Restarting data prefetching from start."

    def _release_pages(self):
        """Give back the memory-mapped pages read so far (LMDB); nothing to do for others."""

    def peek(self):
        return self._item()

    def close(self):
        if not self._closed:
            self._closed = True
            self._close()
            _Shared.release(self.backend, self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_MADV_DONTNEED = 4  # Linux's value (asm-generic/mman-common.h)
_libc = None


def _mapped_region(env):
    """(start, length) of the memory map ``env`` reads through, or None where pages cannot be released.

    LMDB does not report where it mapped the file (``info()['map_addr']`` is 0
    without MDB_FIXEDMAP), so the address of a value read through a buffer
    names the mapping, and /proc/self/maps gives its extent.
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    try:
        with env.begin(buffers=True) as txn:
            cur = txn.cursor()
            if not cur.first():
                return None
            value = cur.value()
            address = np.frombuffer(value, dtype=np.uint8).ctypes.data if len(value) else None
        if address is None:
            return None
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(v, 16) for v in line.split(None, 1)[0].split("-"))
                if lo <= address < hi:
                    break
            else:
                return None
        if _libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            _libc = libc
        return lo, hi - lo
    except (OSError, ValueError, AttributeError):
        return None


def _dontneed(start, length):
    """Drop the pages of a read-only file mapping from this process (they stay in the page cache)."""
    _libc.madvise(start, length, _MADV_DONTNEED)


def _check_lmdb_size(env, path, subdir):
    """Refuse a data file shorter than the pages its last transaction wrote.

    LMDB reads through a memory map: touching a page past the end of a truncated data.mdb
    (a copy cut short, a full disk) is SIGBUS, which kills the process with no message.
    The meta page names the last page in use, so the size the file must have is known
    before any page is read.
    """
    data = os.path.join(path, "data.mdb") if subdir else path
    try:
        have = os.path.getsize(data)
        need_bytes = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    except OSError as e:
        raise DataError(f"cannot open LMDB database {path!r}: {e.strerror or e}") from None
    except Exception as e:  # lmdb.Error: a meta page it cannot read
        raise DataError(f"LMDB database {path!r} is damaged: {e}") from None
    if have < need_bytes:
        raise DataError(f"LMDB database {path!r} is truncated: {os.path.basename(data)} holds {have} bytes, "
                        f"its pages reach to byte {need_bytes} (a copy cut short or a full disk?)")


class LMDBReader(Reader):
    def __init__(self, path):
        super().__init__(path, LMDB)
        lmdb = need("lmdb", "reading an LMDB database")
        subdir = os.path.isdir(path)

        def opener():
            data = os.path.join(path, "data.mdb") if subdir else path
            if os.path.isfile(data) and os.path.getsize(data) == 0:
                raise DataError(f"LMDB database {path!r} is truncated: {os.path.basename(data)} is empty")
            try:
                env = lmdb.open(path, readonly=True, lock=False, subdir=subdir, max_readers=512,
                                max_spare_txns=0)
            except lmdb.Error as e:
                raise DataError(f"cannot open LMDB database {path!r}: {e}") from None
            try:
                _check_lmdb_size(env, path, subdir)
            except BaseException:
                env.close()
                raise
            return env

        self._Error = lmdb.Error
        self._env = _Shared.acquire(LMDB, path, opener)
        try:
            self._txn = self._env.begin(buffers=False)
            self._cur = self._txn.cursor()
            self.seek(None)
        except BaseException:
            _Shared.release(LMDB, path)
            raise
        self._map = _mapped_region(self._env)
        self._unreleased = 0

    def _damaged(self, e):
        return DataError(f"LMDB database {self.path!r} is damaged: {e}")

    def _release_pages(self):
        if self._map is not None and self._unreleased >= RELEASE_EVERY:
            _dontneed(*self._map)
            self._unreleased = 0

    # Any other LMDB failure (a page that is not where the tree says, a corrupt header) is a
    # DataError naming the database.
    def _first(self):
        try:
            return self._cur.first()
        except self._Error as e:
            raise self._damaged(e) from None

    def _seek(self, key):
        try:
            return self._cur.set_range(key)
        except self._Error as e:
            raise self._damaged(e) from None

    def _next(self):
        try:
            return self._cur.next()
        except self._Error as e:
            raise self._damaged(e) from None

    def _item(self):
        try:
            value = self._cur.value()
            key = self._cur.key()
        except self._Error as e:
            raise self._damaged(e) from None
        self._unreleased += len(value)
        return key, value

    def count(self):
        try:
            return self._txn.stat()["entries"]
        except self._Error as e:
            raise self._damaged(e) from None

    def _close(self):
        self._cur.close()
        self._txn.abort()


class LevelDBReader(Reader):
    def __init__(self, path):
        super().__init__(path, LEVELDB)
        plyvel = need("plyvel", "reading a LevelDB database")

        def opener():
            try:
                return plyvel.DB(path, create_if_missing=False)
            except Exception as e:  # plyvel raises its own IOError/Error types
                raise DataError(f"cannot open LevelDB database {path!r}: {e}") from None

        self._db = _Shared.acquire(LEVELDB, path, opener)
        self._snap = self._db.snapshot()
        self._it = self._snap.raw_iterator()
        self.seek(None)

    def _first(self):
        self._it.seek_to_first()
        return self._it.valid()

    def _seek(self, key):
        self._it.seek(key)
        return self._it.valid()

    def _next(self):
        self._it.next()
        return self._it.valid()

    def _item(self):
        return self._it.key(), self._it.value()

    def count(self):
        n = 0
        it = self._snap.iterator(include_value=False)
        for _ in it:
            n += 1
        return n

    def _close(self):
        self._it.close()
        self._snap.close()


def open_reader(path, backend=LMDB):
    """A :class:`Reader` over the database at ``path`` (positioned at the first record)."""
    backend = backend_name(backend)
    if not os.path.exists(path):
        raise DataError(f"{backend} database {path!r} does not exist")
    found = detect_backend(path)
    if found is not None and found != backend:
        hint = (" (LEVELDB is the default of data_param.backend; add `backend: LMDB`)"
                if backend == LEVELDB else " (set `backend: LEVELDB`)")
        raise DataError(f"{path!r} is a{'n' if found == LMDB else ''} {found.upper()} database but "
                        f"{backend.upper()} was asked for{hint}")
    return LMDBReader(path) if backend == LMDB else LevelDBReader(path)


# ---------------------------------------------------------------- writing


class Writer:
    """Puts records into a new database, committing every ``COMMIT_EVERY`` puts."""

    def __init__(self, path, backend):
        self.path = path
        self.backend = backend
        self._pending = []
        self.count = 0

    def put(self, key, value):
        if isinstance(key, str):
            key = key.encode("utf-8")
        self._pending.append((key, value))
        if len(self._pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self):
        if self._pending:
            self._write(self._pending)
            self.count += len(self._pending)
            self._pending = []

    def close(self):
        self.commit()
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:
            self._close()


class LMDBWriter(Writer):
    def __init__(self, path, map_size=INITIAL_MAP_SIZE):
        super().__init__(path, LMDB)
        self._lmdb = need("lmdb", "writing an LMDB database")
        try:
            self._env = self._lmdb.open(path, map_size=map_size, subdir=True, meminit=False)
        except self._lmdb.Error as e:
            raise DataError(f"cannot create LMDB database {path!r}: {e}") from None

    def _write(self, items):
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in items:
                        txn.put(k, v)
                return
            except self._lmdb.MapFullError:
                # The aborted chunk is written again into a map twice the size.
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _close(self):
        self._env.sync(True)
        self._env.close()


class LevelDBWriter(Writer):
    def __init__(self, path):
        super().__init__(path, LEVELDB)
        plyvel = need("plyvel", "writing a LevelDB database")
        try:
            # Caffe's LevelDB options: 256 MB write buffer, no compression.
            self._db = plyvel.DB(path, create_if_missing=True, error_if_exists=True,
                                 write_buffer_size=256 << 20, compression=None)
        except Exception as e:
            raise DataError(f"cannot create LevelDB database {path!r}: {e}") from None

    def _write(self, items):
        with self._db.write_batch() as wb:
            for k, v in items:
                wb.put(k, v)

    def _close(self):
        self._db.close()


def open_writer(path, backend=LMDB):
    """A :class:`Writer` for a NEW database at ``path`` (it must not exist, as in Caffe)."""
    backend = backend_name(backend)
    if os.path.exists(path):
        raise DataError(f"{path!r} already exists; remove it or choose another name for the new database")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DataError(f"cannot create {path!r}: directory {parent!r} does not exist")
    return LMDBWriter(path) if backend == LMDB else LevelDBWriter(path)


def count_records(path, backend=LMDB):
    with open_reader(path, backend) as r:
        return r.count()
