"""Generate the Python gRPC/protobuf modules from this package's ``.proto`` files.

Run as ``python -m streaminfer.protos.build`` to generate them beside the ``.proto`` files
(a development checkout); ``setup.py`` loads this file by path to generate them into a
wheel or sdist, so it must import nothing from ``streaminfer``.

The messages are registered in a pool of their own (``streaminfer.protos.pool``), not in
protobuf's default one: tritonclient, MLServer and KServe define ``inference.*`` there,
TensorFlow and tensorflow-serving-api ``tensorflow.*``, and protobuf refuses a second
file that defines a name already taken, so importing both would fail in one process.
Names on the wire (gRPC method paths, ``Any`` type URLs) are the same in any pool.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent.parent  # the folder that holds ``streaminfer/``


def generate(source_root: Path = SOURCE_ROOT, out_root: Path | None = None) -> list[Path]:
    """Compile every ``streaminfer/protos/**/*.proto`` under ``source_root`` into ``out_root``.

    ``out_root`` (default: ``source_root``) is the folder that holds the ``streaminfer``
    package being built; the generated modules land at the same relative paths.
    """
    from grpc_tools import protoc  # build-time dependency only

    out_root = out_root or source_root
    protos = sorted((source_root / "streaminfer" / "protos").rglob("*.proto"))
    if not protos:
        return []
    include = Path(protoc.__file__).parent / "_proto"
    # Written in a folder of their own, then each renamed into place: the editable
    # installs of several venvs (make -j) generate into one checkout at once.
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_root, prefix=".protos-") as scratch:
        args = [
            "protoc",
            f"--proto_path={source_root}",
            f"--proto_path={include}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(p.relative_to(source_root)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + ", ".join(p.name for p in protos))
        for proto in protos:
            own_pool(
                Path(scratch) / proto.relative_to(source_root).with_name(f"{proto.stem}_pb2.py")
            )
        for made in sorted(Path(scratch).rglob("*.py*")):
            target = out_root / made.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(made, target)
    return protos


DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
BUILDER_IMPORT = "from google.protobuf.internal import builder as _builder\n"
POOL_IMPORT = "from streaminfer.protos import pool as _pool\n"


def own_pool(module: Path) -> None:
    """Make a generated module register its file in streaminfer's pool (see above)."""
    code = module.read_text()
    if code.count(DEFAULT_POOL) != 1 or code.count(BUILDER_IMPORT) != 1:
        raise SystemExit(f"{module}: not the code this protoc generates; update build.py")
    code = code.replace(DEFAULT_POOL, "_pool.POOL.AddSerializedFile(")
    code = code.replace(BUILDER_IMPORT, BUILDER_IMPORT + POOL_IMPORT)
    module.write_text(code)


if __name__ == "__main__":
    generated = generate()
    print(f"generated code for {len(generated)} proto files", file=sys.stderr)
