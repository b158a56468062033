"""Generate the Python gRPC/protobuf modules from this package's ``.proto`` files."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent.parent  # the folder that holds ``streaminfer/``


def generate() -> list[Path]:
    from grpc_tools import protoc  # build-time dependency only

    protos = sorted(PACKAGE_DIR.rglob("*.proto"))
    if not protos:
        return []
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--proto_path={SOURCE_ROOT}",
        f"--proto_path={include}",
        f"--python_out={SOURCE_ROOT}",
        f"--pyi_out={SOURCE_ROOT}",
        f"--grpc_python_out={SOURCE_ROOT}",
        *(str(p.relative_to(SOURCE_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + ", ".join(p.name for p in protos))
    return protos


if __name__ == "__main__":
    generated = generate()
    print(f"generated code for {len(generated)} proto files", file=sys.stderr)
