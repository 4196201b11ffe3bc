"""Regenerate ``caffe_pb2.py`` from ``caffe.proto``.

Usage::

    python -m numcaffe.net.proto.regenerate          # rewrite caffe_pb2.py
    python -m numcaffe.net.proto.regenerate --check  # exit 1 if it is stale

The generated module is committed, so numcaffe needs no protobuf compiler at
run time.  It is produced with the ``protoc`` bundled in ``grpcio-tools``;
the gencode records that compiler's protobuf version and refuses to import
under an older protobuf runtime, so ``pyproject.toml`` pins ``grpcio-tools``
(test extra) and sets the ``protobuf`` floor to match.  When you bump
``grpcio-tools``, regenerate, and raise the ``protobuf>=`` floor to the
version named in the ``Protobuf Python Version`` header of ``caffe_pb2.py``.

Exit codes: 0 success / up to date, 1 ``--check`` found a difference,
2 the compiler is missing or failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = PROTO_DIR / "caffe.proto"
PB2_FILE = PROTO_DIR / "caffe_pb2.py"


class RegenerateError(RuntimeError):
    """protoc is unavailable or rejected the schema."""


def generate(out_dir: str | Path, proto_file: str | Path = PROTO_FILE) -> Path:
    """Compile ``proto_file`` into ``out_dir``; return the ``*_pb2.py`` path.

    The include root is the directory of the .proto file, so the descriptor
    records the bare file name (``caffe.proto``) regardless of where the
    checkout lives; that keeps the output byte-for-byte reproducible.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise RegenerateError(
            "grpc_tools is not installed; install the test extra "
            "(pip install 'numcaffe[test]') or grpcio-tools"
        ) from exc

    proto_file = Path(proto_file).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_file.parent}",
            f"--python_out={out_dir}",
            str(proto_file),
        ]
    )
    if status != 0:
        raise RegenerateError(f"protoc failed with status {status} on {proto_file}")
    result = out_dir / (proto_file.stem + "_pb2.py")
    if not result.is_file():
        raise RegenerateError(f"protoc did not produce {result}")
    return result


def generated_bytes(proto_file: str | Path = PROTO_FILE) -> bytes:
    """Freshly generated module contents, without touching the tree."""
    with tempfile.TemporaryDirectory(prefix="numcaffe-proto-") as tmp:
        return generate(tmp, proto_file).read_bytes()


def is_up_to_date(
    proto_file: str | Path = PROTO_FILE, pb2_file: str | Path = PB2_FILE
) -> bool:
    """True when ``pb2_file`` equals what ``proto_file`` compiles to."""
    pb2_file = Path(pb2_file)
    if not pb2_file.is_file():
        return False
    return pb2_file.read_bytes() == generated_bytes(proto_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m numcaffe.net.proto.regenerate",
        description="Regenerate caffe_pb2.py from caffe.proto.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed caffe_pb2.py is stale",
    )
    args = parser.parse_args(argv)

    try:
        fresh = generated_bytes()
    except RegenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    current = PB2_FILE.read_bytes() if PB2_FILE.is_file() else None
    if args.check:
        if current == fresh:
            print(f"{PB2_FILE.name} is up to date")
            return 0
        print(
            f"{PB2_FILE} differs from what {PROTO_FILE.name} compiles to; "
            "run: python -m numcaffe.net.proto.regenerate",
            file=sys.stderr,
        )
        return 1

    if current == fresh:
        print(f"{PB2_FILE.name} already up to date")
    else:
        PB2_FILE.write_bytes(fresh)
        print(f"wrote {PB2_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
