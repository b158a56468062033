"""Settings from flags, ``STREAMINFER_*`` environment variables and a TOML file, in that order.

Each command has one settings class; its fields are the command's options.  The optional
config file holds one table per class (``[kafka]``, ``[worker]``, ``[server]`` ...), named
by the class's ``file_section``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from streaminfer.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMINFER_", extra="ignore")
    file_section: ClassVar[str] = ""

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> Self:
        """Merge sources: a flag left at ``None`` falls through to env, then file, then default."""
        file_values = read_config_file(config_file).get(cls.file_section, {}) if config_file else {}
        try:
            env_values = EnvSettingsSource(cls)()
            given = {k: v for k, v in flags.items() if v is not None}
            return cls(**{**file_values, **env_values, **given})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid settings: {problems}") from exc


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
