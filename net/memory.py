"""What a net will hold, against the memory the machine has, checked before it is used.

A net's memory is its blobs (the tops, which Caffe's "Memory required for data"
line counts), its parameters and the scratch workspace its convolutions share (the
column buffer, which for ``kernel_size: 1000`` on a 2000x2000 image is 11 TiB).
Blob.check_shape bounds one blob at an eighth of the machine; this bounds the
sum.  :class:`Budget` adds each layer's share as the net is built, before any
forward pass touches the blobs or allocates the workspace, and stops at the first
layer that takes the sum past what is available, naming the net, the layer and
the sizes.

The sum is a lower bound (gradients, prefetched batches and Python itself come on
top), so a net it refuses cannot run; one it lets through may still be too big.
Available memory is Linux's ``MemAvailable`` plus free swap, capped by the
cgroup limit of a container; elsewhere the physical memory.
``NUMCAFFE_MAX_NET_BYTES`` sets the limit in bytes instead, ``0`` turns the check off.
"""
import os

from numcaffe.net.errors import ShapeError

GIB = 1 << 30


def _meminfo():
    """{field: bytes} of /proc/meminfo, or {} where there is none."""
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _cgroup_room():
    """Bytes the process's cgroup (v2) may still take, or None without a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError):
        return None


def available_bytes():
    """The memory a net may take now: ``NUMCAFFE_MAX_NET_BYTES`` if set (0: no limit, None returned),
    else what the machine has available."""
    given = os.environ.get("NUMCAFFE_MAX_NET_BYTES", "").strip()
    if given:
        try:
            value = int(given)
        except ValueError:
            value = -1
        if value < 0:
            raise ShapeError(f"NUMCAFFE_MAX_NET_BYTES must be a number of bytes (0: no limit), got {given!r}")
        return value or None
    info = _meminfo()
    if "MemAvailable" in info:
        room = info["MemAvailable"] + info.get("SwapFree", 0)
    else:
        try:
            room = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    cgroup = _cgroup_room()
    return room if cgroup is None else min(room, cgroup)


def fmt_bytes(n):
    """'1.5 GiB', '10.9 TiB', '340 MiB', '12 KiB', '100 bytes'."""
    for unit, size in (("TiB", 1 << 40), ("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n} bytes"


class Budget:
    """A net's blobs, parameters and workspace, summed layer by layer against the available memory."""

    def __init__(self, net_name, source=None):
        self.net_name = net_name
        self.source = source
        self.limit = available_bytes()
        self.blobs = 0           # bytes of the tops' data, as Caffe's "Memory required for data"
        self.params = 0          # bytes of the parameters' data, shared ones once
        self.workspace = 0       # bytes of the biggest scratch request (the thread's arrays grow to it)
        self.workspace_layer = None
        self._seen = set()       # ids of the data buffers counted

    @property
    def total(self):
        return self.blobs + self.params + self.workspace

    def add_layer(self, layer, tops, params):
        """Count ``layer``'s ``tops`` and ``params`` (blobs; buffers seen before count once) and its
        workspace; a ShapeError when the sum passes the limit."""
        # A top written in place, a Split's or Flatten's top (which share their bottom's data) and a
        # shared parameter hold a buffer counted already: each buffer counts once.
        for t in tops:
            if id(t._data_mem) not in self._seen:
                self._seen.add(id(t._data_mem))
                self.blobs += 4 * t.count
        for p in params:
            if id(p._data_mem) not in self._seen:
                self._seen.add(id(p._data_mem))
                self.params += 4 * p.count
        scratch = 4 * layer.workspace_count()
        if scratch > self.workspace:
            self.workspace, self.workspace_layer = scratch, layer.name
        if self.limit is not None and self.total > self.limit:
            where = f"net {self.net_name!r}" if self.net_name else "the net"
            if self.source and self.source != "<net>":
                where = f"{self.source}: {where}"
            ws = (f", workspace {fmt_bytes(self.workspace)} (the scratch arrays of layer {self.workspace_layer!r})"
                  if self.workspace else "")
            raise ShapeError(f"{where} needs at least {fmt_bytes(self.total)} by {layer.describe()}: blobs "
                             f"{fmt_bytes(self.blobs)}, parameters {fmt_bytes(self.params)}{ws}; this machine "
                             f"has {fmt_bytes(self.limit)} available (NUMCAFFE_MAX_NET_BYTES sets the limit, "
                             f"0 turns the check off)")
