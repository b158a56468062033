"""Optional dependencies: each ``pip install 'streaminfer[<extra>]'`` and what needs it.

The core install (worker, server, CLI) never imports these modules at start-up; a
command that needs one imports it through :func:`require`, so a missing extra ends the
command with one line naming what to install (a ``ConfigError``: exit code 2) instead
of a traceback.  Commands check before they start work (``require`` early), so a long
run never fails at its end for want of a plotting library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from streaminfer.errors import ConfigError

EXTRAS = {
    "bench": "the benchmark",
    "demo": "the demo",
    "sklearn": "importing scikit-learn, XGBoost and LightGBM models",
    "tensorflow": "importing TensorFlow SavedModels and Keras models",
}
"""Every optional extra of pyproject.toml, and what a user does that needs it."""


class MissingExtra(ConfigError):
    """An optional dependency is not installed; the message says which extra brings it."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{EXTRAS[extra]} needs {module}: pip install 'streaminfer[{extra}]'")
        self.module = module
        self.extra = extra


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (dotted names too), or raise MissingExtra naming ``extra``."""
    if extra not in EXTRAS:
        raise ValueError(f"no extra {extra!r}; extras: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # The package to install: the top of whatever failed (maybe one it depends on).
        raise MissingExtra((exc.name or module).partition(".")[0], extra) from exc
