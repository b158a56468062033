"""Build hook: the generated gRPC/protobuf modules go into every wheel and sdist.

Everything else about the package is in pyproject.toml.  The ``*_pb2`` modules are not
kept in git; they are compiled from ``src/streaminfer/protos/**/*.proto`` with
``grpcio-tools`` (a build requirement) by ``src/streaminfer/protos/build.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
SOURCE_ROOT = HERE / "src"


def _protos_build() -> ModuleType:
    # Loaded by path: the package itself (and its dependencies) is not importable at build time.
    path = SOURCE_ROOT / "streaminfer" / "protos" / "build.py"
    spec = importlib.util.spec_from_file_location("_streaminfer_protos_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProtos(build_py):
    """Copy the package, then compile the protos into it (into ``src/`` for editable installs)."""

    def run(self) -> None:
        super().run()
        out = SOURCE_ROOT if self.editable_mode else Path(self.build_lib)
        _protos_build().generate(SOURCE_ROOT, out)


class SdistWithProtos(sdist):
    """An sdist that also carries the generated modules, as the wheel does."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        _protos_build().generate(SOURCE_ROOT, Path(base_dir) / "src")


setup(cmdclass={"build_py": BuildPyWithProtos, "sdist": SdistWithProtos})
