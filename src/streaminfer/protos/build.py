"""Generate the Python gRPC/protobuf modules from this package's ``.proto`` files.

Run as ``python -m streaminfer.protos.build`` to generate them beside the ``.proto`` files
(a development checkout); ``setup.py`` loads this file by path to generate them into a
wheel or sdist, so it must import nothing from ``streaminfer``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent.parent  # the folder that holds ``streaminfer/``


def generate(source_root: Path = SOURCE_ROOT, out_root: Path | None = None) -> list[Path]:
    """Compile every ``streaminfer/protos/**/*.proto`` under ``source_root`` into ``out_root``.

    ``out_root`` (default: ``source_root``) is the folder that holds the ``streaminfer``
    package being built; the generated modules land at the same relative paths.
    """
    from grpc_tools import protoc  # build-time dependency only

    out = str(out_root or source_root)
    protos = sorted((source_root / "streaminfer" / "protos").rglob("*.proto"))
    if not protos:
        return []
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--proto_path={source_root}",
        f"--proto_path={include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(source_root)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + ", ".join(p.name for p in protos))
    return protos


if __name__ == "__main__":
    generated = generate()
    print(f"generated code for {len(generated)} proto files", file=sys.stderr)
