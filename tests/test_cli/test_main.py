"""The command table, the shared Kafka options, and options checked against their settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import typer
from typer.testing import CliRunner

from streaminfer.cli.main import COMMANDS, load_command
from streaminfer.cli.options import KafkaOptions, kafka_options
from streaminfer.predictors.factory import MODES
from streaminfer.serving.settings import ServerSettings
from streaminfer.stream.settings import Mode, WorkerSettings

KAFKA_OPTIONS = {"bootstrap_servers", "x", "properties_file", "config_file"}


def options(command: str) -> dict[str, Any]:
    return {param.name: param for param in load_command(command).params}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_loads_with_its_summary_first(name: str) -> None:
    command = load_command(name)
    assert command.name == name
    assert command.help.splitlines()[0] == COMMANDS[name].summary


@pytest.mark.parametrize(
    ("command", "settings"), [("run", WorkerSettings), ("serve", ServerSettings)]
)
def test_options_are_settings_fields_showing_their_defaults(command: str, settings: Any) -> None:
    own = {name: p for name, p in options(command).items() if name not in KAFKA_OPTIONS}
    assert set(own) <= set(settings.model_fields), set(own) - set(settings.model_fields)
    for name, param in own.items():
        assert param.default is None, f"--{name}: env and config file fill an option left out"
        field = settings.model_fields[name]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if default in (None, [], {}):  # None shows nothing; the help may say what it means
            assert not isinstance(param.show_default, str), f"--{name}: no such default"
        else:
            assert param.show_default == str(default), f"--{name}"


def test_the_mode_help_lists_every_mode_the_factory_builds() -> None:
    assert set(get_args(Mode)) == set(MODES)
    assert all(mode in options("run")["mode"].help for mode in MODES)


@pytest.mark.parametrize(
    "command",
    ["topics", "produce", "consume", "models", "run", "serve", "bench"],
)
def test_kafka_facing_commands_share_the_kafka_options(command: str) -> None:
    loaded = load_command(command)
    commands = list(loaded.commands.values()) if hasattr(loaded, "commands") else [loaded]
    if command == "models":
        commands = list(loaded.commands["publish"].commands.values())
    for each in commands:
        assert {p.name for p in each.params} >= KAFKA_OPTIONS, each.name


def test_a_command_receives_the_kafka_options_as_given(tmp_path: Path) -> None:
    seen: list[tuple[str, KafkaOptions]] = []

    @kafka_options
    def probe(name: str, *, kafka: KafkaOptions) -> None:
        seen.append((name, kafka))

    app = typer.Typer()
    app.command()(probe)
    args = ["n", "-b", "h:1", "-X", "a=b", "-X", "c=d", "-F", "p", "--config", "c.toml"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == [("n", KafkaOptions("h:1", ["a=b", "c=d"], Path("p"), Path("c.toml")))]
