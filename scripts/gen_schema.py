"""Compile proto/caffe.proto into proto/caffe.desc (a serialized FileDescriptorSet).

The package loads caffe.desc at import time and never runs protoc itself; run this
script (it needs grpcio-tools) after every edit of caffe.proto and commit both files.

    python scripts/gen_schema.py [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto"
PROTO_NAME = "caffe.proto"
DEFAULT_OUT = PROTO_DIR / "caffe.desc"


def compile_descriptor_set(out: Path, proto_dir: Path = PROTO_DIR) -> bytes:
    """Run grpc_tools' protoc on ``caffe.proto`` and return the written descriptor bytes."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("gen_schema.py needs grpcio-tools (pip install grpcio-tools)") from exc

    out.parent.mkdir(parents=True, exist_ok=True)
    # Only our own file goes into the set (no --include_imports: caffe.proto imports
    # nothing), and no source info, so the output depends on the schema alone.
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--descriptor_set_out={out}",
        PROTO_NAME,
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    return out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="descriptor file to write")
    args = parser.parse_args(argv)
    data = compile_descriptor_set(args.out)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
