"""The user's own code, named on the command line as ``package.module:name``.

``--handler`` names a class this way and ``-X oauth_cb=`` a function; both are imported
once per process, and every way the name can be wrong is a ``ConfigError`` that says which.
"""

from __future__ import annotations

import importlib

from streaminfer.errors import ConfigError


def load_object(spec: str, option: str, shape: str) -> object:
    """The object ``spec`` names, imported; ``option`` (``--handler``) and ``shape``
    (``package.module:ClassName``) say in an error what was given and what was expected."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise ConfigError(f"{option} {spec!r}: expected {shape}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                f"{option} {spec}: no module named {exc.name!r} on the Python path"
            ) from None
        raise ConfigError(f"{option} {spec}: importing {module_name} failed: {exc}") from None
    except Exception as exc:
        raise ConfigError(
            f"{option} {spec}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from None
    found = getattr(module, name, None)
    if found is None:
        raise ConfigError(f"{option} {spec}: module {module_name} has no {name!r}")
    return found
