"""The generated gRPC/protobuf modules: several editable installs (``make test`` runs the
venvs' installs side by side) may generate them into one checkout at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streaminfer.protos.build import POOL_IMPORT, SOURCE_ROOT


def test_generations_at_once_into_one_folder_all_succeed_and_leave_whole_modules(
    tmp_path: Path,
) -> None:
    generate = "import sys; from pathlib import Path; from streaminfer.protos.build import " \
               "generate; generate(out_root=Path(sys.argv[1]))"  # fmt: skip
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", generate, str(tmp_path)], stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    for run in runs:
        _, errors = run.communicate(timeout=120)
        assert run.returncode == 0, errors
    protos = sorted((SOURCE_ROOT / "streaminfer" / "protos").rglob("*.proto"))
    for proto in protos:
        module = tmp_path / proto.relative_to(SOURCE_ROOT).with_name(f"{proto.stem}_pb2.py")
        assert module.read_text().count(POOL_IMPORT) == 1, module
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert len(made) == 3 * len(protos)  # _pb2.py, _pb2.pyi, _pb2_grpc.py: nothing left over
