"""``streaminfer demo``: Kafka, the model server and two workers, with sample images
(or, with ``--tabular``, a scikit-learn model fed JSON flight records)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    bootstrap_servers: Annotated[
        str | None,
        typer.Option("--bootstrap-servers", "-b", help="Use this Kafka instead of starting one."),
    ] = None,
    keep_running: Annotated[
        bool, typer.Option(help="Leave the stack up and print how to send your own images.")
    ] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop a stack left by --keep-running.")
    ] = False,
    home: Annotated[
        Path | None,
        typer.Option(help="Where the demo keeps its model repository, broker data and logs."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the predictions.")] = 90.0,
    tabular: Annotated[
        bool,
        typer.Option(help="Train a scikit-learn model on flights and classify JSON records."),
    ] = False,
) -> None:
    from rich.console import Console

    from streaminfer.demo import Demo, DemoOptions, stop_running_demo
    from streaminfer.extras import require

    console = Console()
    options = DemoOptions(
        bootstrap_servers=bootstrap_servers, keep_running=keep_running, timeout_s=timeout
    )
    if home is not None:
        options.home = home
    if stop:
        stopped = stop_running_demo(options.home)
        console.print("demo stopped" if stopped else "no demo was running")
        return
    if tabular:
        for module in ("sklearn", "pandas", "joblib"):  # checked before anything starts
            require(module, "sklearn")
        from streaminfer.demo_tabular import TabularDemo

        TabularDemo(options, console).run()
    else:
        require("skimage", "demo")  # the sample photos: checked before anything starts
        Demo(options, console).run()
