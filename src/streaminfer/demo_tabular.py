"""``demo --tabular``: the second end-to-end example, a tabular model on JSON records.

A scikit-learn pipeline (scaler + gradient boosting) is trained on a generated
flights-style data set (:mod:`streaminfer.flights`), imported with ``models import``
(converted to ONNX and verified against scikit-learn), and served by two workers, one
embedded and one calling the model server over TF Serving REST.  Held-out flights are
produced as JSON records (and one without its ``carrier``, to show the dead-letter
topic), and each prediction is printed beside scikit-learn's own label.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from streaminfer.demo import Demo
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import Record, produce
from streaminfer.models.layout import scan_repository
from streaminfer.processes import ModelServerProcess

INPUT, OUTPUT = "FlightInputTopic", "FlightOutputTopic"
EMBEDDED_OUTPUT, DLQ = f"{OUTPUT}.embedded", f"{INPUT}.dlq"
MODEL = "flight-delays"
TRAINING_ROWS, SHOWN_PER_STATUS = 3000, 3


def train(source: Path) -> dict[str, str]:
    """Train the demo's classifier, save it to ``source`` (joblib), and return scikit-learn's
    label for each shown flight by its id (needs the ``sklearn`` extra)."""
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from streaminfer.flights import FEATURES, flights, split

    training, held_out = split(flights(TRAINING_ROWS))
    pipeline = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=40, random_state=0)
    ).fit(training[FEATURES], training["status"])
    joblib.dump(pipeline, source)
    shown = _shown(held_out)[FEATURES]
    return {f"flight-{i}": str(label) for i, label in enumerate(pipeline.predict(shown))}


def shown_flights() -> list[dict[str, Any]]:
    """The held-out flights the demo sends, as JSON records' fields."""
    from streaminfer.flights import FEATURES, flights, split

    rows = _shown(split(flights(TRAINING_ROWS))[1])[FEATURES]
    return [{k: int(v) for k, v in row.items()} for row in rows.to_dict("records")]


def _shown(held_out: Any) -> Any:
    """A few held-out flights of each arrival status (a DataFrame), so every class shows."""
    return held_out.groupby("status", sort=True).head(SHOWN_PER_STATUS).sort_index()


class TabularDemo(Demo):
    def _run(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with self.console.status("Training a scikit-learn model on generated flights"):
            expected = train(self.options.home / f"{MODEL}.joblib")  # before anything starts
        bootstrap = self._kafka()
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self._import_model()
        rest = self._server_rest()
        TopicAdmin(kafka).ensure([INPUT, OUTPUT, EMBEDDED_OUTPUT, DLQ])
        base = ["run", "-b", bootstrap, "--input", INPUT, "--model", MODEL,
                "--repo", str(self.options.repo)]  # fmt: skip
        workers = {
            "flights-remote": ["--output", OUTPUT, "--mode", "tfserving-rest", "--server", rest,
                               "--group-id", "demo-flights-remote"],
            "flights-embedded": ["--output", EMBEDDED_OUTPUT, "--mode", "embedded",
                                 "--group-id", "demo-flights-embedded", "--dlq", f"{DLQ}.embedded"],
        }  # fmt: skip
        self._start_workers("remote REST", base, workers)
        self.console.print(
            f"[green]✓[/green] workers ready: remote REST → {OUTPUT}, embedded → {EMBEDDED_OUTPUT}"
        )
        self._show_flights(kafka, expected)
        if self.options.keep_running:
            self._save_state(bootstrap)
            self._explain_tabular(bootstrap)

    def _import_model(self) -> None:
        repo = self.options.repo
        if repo.is_dir() and MODEL in scan_repository(repo):
            self.console.print(f"[green]✓[/green] model {MODEL} found in {self.options.repo}")
            return
        from streaminfer.models.imports import import_model

        with self.console.status(f"Importing {MODEL} (converted to ONNX, verified)"):
            import_model(
                self.options.home / f"{MODEL}.joblib", self.options.repo, MODEL, trust_pickle=True
            )
        self.console.print(f"[green]✓[/green] imported {MODEL} into {self.options.repo}")

    def _server_rest(self) -> str:
        with self.console.status("Starting the model server"):
            server = self._start(ModelServerProcess(self.options.repo, self.logs / "server.log"))
        self.console.print(f"[green]✓[/green] model server: REST {server.address(rest=True)}")
        return server.address(rest=True)

    def _show_flights(self, kafka: KafkaSettings, expected: dict[str, str]) -> None:
        run = f"demo-{int(time.time())}"
        records = [{"id": f"{run}/flight-{i}", **row} for i, row in enumerate(shown_flights())]
        broken = {k: v for k, v in records[0].items() if k != "carrier"}
        broken["id"] = f"{run}/no-carrier"
        produce(kafka, INPUT, [json.dumps(r).encode() for r in [*records, broken]])
        self.console.print(
            f"[green]✓[/green] produced {len(records) + 1} flight records to {INPUT} "
            "(the last one lacks its carrier on purpose)"
        )
        table = Table(title="Flight delays: remote REST and embedded, beside scikit-learn")
        for column in ("flight", "dep_delay", "taxi_out", "mode", "predicted", "scikit-learn"):
            table.add_column(column)
        wanted = 2 * len(records) + 1  # both workers' outputs, and the broken record's dead letter
        topics = [OUTPUT, EMBEDDED_OUTPUT, DLQ]
        self._show_live(kafka, topics, table, wanted, lambda r: _row(r, run, expected, records))

    def _explain_tabular(self, bootstrap: str) -> None:
        example = json.dumps({"id": "mine", **shown_flights()[0]})
        self.console.print(
            "\nThe stack keeps running. Send your own flights:\n"
            f"  streaminfer produce {INPUT} -b {bootstrap} --value '{example}'\n"
            "Read the predictions:\n"
            f"  streaminfer consume {OUTPUT} -b {bootstrap} --from-beginning\n"
            f"Logs: {self.logs}\nStop it all: streaminfer demo --stop",
            highlight=False,
        )


def _row(
    record: Record, run: str, expected: dict[str, str], sent: list[dict[str, Any]]
) -> tuple[str, ...] | None:
    """A table row for one output or dead letter of this run (None for others)."""
    if record.topic == DLQ:
        document = json.loads(record.value or b"{}")
        if not str(document.get("id", "")).startswith(run):
            return None
        headers = {k: (v or b"").decode() for k, v in record.headers}
        reason = headers.get("streaminfer.error.type", "")
        message = headers.get("streaminfer.error.message", "")
        flight = document["id"].split("/", 1)[1]
        return (flight, "", "", "[red]dead-letter[/red]", f"[red]{reason}[/red]", message)
    document = json.loads(record.value or b"{}")
    if not str(document.get("id", "")).startswith(run):
        return None
    flight = document["id"].split("/", 1)[1]
    fields = sent[int(flight.rsplit("-", 1)[1])]
    best = document["predictions"][0]
    return (
        flight,
        str(fields["dep_delay"]),
        str(fields["taxi_out"]),
        document["mode"],
        f"{best['label']} {best['score']:.0%}",
        expected[flight],
    )
