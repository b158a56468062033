"""Each optional extra, when missing, is named in one line with the command to install it.

The real ``streaminfer`` command runs in a subprocess whose ``sitecustomize`` (first on
PYTHONPATH, so inherited by any process it starts) puts ``None`` in ``sys.modules`` for
the blocked modules: the import system then reports them as not installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import joblib
import pytest
from sklearn.linear_model import LinearRegression

from streaminfer.extras import EXTRAS, MissingExtra, require
from tests.support import run_cli

BLOCKER = """\
import os, sys
for _name in os.environ["STREAMINFER_TEST_MISSING"].split(","):
    sys.modules[_name] = None
"""


def run_without(module: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "STREAMINFER_TEST_MISSING": module,
        "STREAMINFER_LOG_LEVEL": "ERROR",  # no "loading pickle" warning: only the error line
    }
    return run_cli(*args, env=env, cwd=Path.cwd())


def says_install(result: subprocess.CompletedProcess[str], module: str, extra: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"streaminfer: error: {EXTRAS[extra]} needs {module}: pip install 'streaminfer[{extra}]'"
    ]


@pytest.mark.parametrize("module", ["matplotlib", "skimage"])
def test_bench(module: str, tmp_path: Path) -> None:
    says_install(run_without(module, tmp_path, "bench", "--quick"), module, "bench")


def test_bench_tabular(tmp_path: Path) -> None:
    result = run_without("sklearn", tmp_path, "bench", "--quick", "--workload", "tabular")
    says_install(result, "sklearn", "sklearn")


def test_demo(tmp_path: Path) -> None:
    result = run_without("skimage", tmp_path, "demo", "--home", str(tmp_path / "demo"))
    says_install(result, "skimage", "demo")
    assert not (tmp_path / "demo").exists()  # checked before anything started


@pytest.mark.parametrize(
    ("file", "module"),
    [("model.json", "xgboost"), ("model.txt", "lightgbm"), ("model.joblib", "skl2onnx")],
)
def test_sklearn(file: str, module: str, tmp_path: Path) -> None:
    source = tmp_path / file
    if file.endswith(".joblib"):  # a real pickle: unpickling works, converting needs skl2onnx
        joblib.dump(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), source)
    else:
        source.write_text("{}")
    result = run_without(
        module, tmp_path, "models", "import", str(source), "--repo", str(tmp_path / "repo"),
        "--name", "m", "--trust-pickle",
    )  # fmt: skip
    says_install(result, module, "sklearn")
    assert not (tmp_path / "repo" / "m").exists()


@pytest.mark.parametrize(("source", "module"), [("model.keras", "keras"), ("saved", "tensorflow")])
def test_tensorflow(source: str, module: str, tmp_path: Path) -> None:
    """The conversion runs in a child process; its one line becomes the command's."""
    path = tmp_path / source
    if source == "saved":
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"")
    else:
        path.write_bytes(b"")
    result = run_without(
        module, tmp_path, "models", "import", str(path), "--repo", str(tmp_path / "repo"),
        "--name", "m",
    )  # fmt: skip
    says_install(result, module, "tensorflow")


def test_require_names_the_module_that_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = __import__("sys").modules
    for loaded in [name for name in modules if name.startswith("skl2onnx.")]:
        monkeypatch.delitem(modules, loaded)  # an earlier test's import would be found first
    monkeypatch.setitem(modules, "skl2onnx", None)
    with pytest.raises(MissingExtra) as missing:
        require("skl2onnx.common.data_types", "sklearn")
    assert (missing.value.module, missing.value.extra) == ("skl2onnx", "sklearn")
    assert require("json", "bench").dumps([]) == "[]"
    with pytest.raises(ValueError, match="no extra 'nope'"):
        require("json", "nope")
