"""Handlers the tests load by name (``--handler tests.handler_examples:CsvHandler``).

Records are CSV lines ``id,x0,x1,x2,x3`` for the tiny model (input ``x`` ``[N, 4]``, output
``y``); the answer is a JSON object of the id and ``y``.  A value that is not a number makes
``preprocess`` raise ``ValueError``; the id ``boom`` makes ``postprocess`` raise ``KeyError``.
The ids ``exit`` and ``interrupt`` make ``preprocess``, and ``halt`` makes ``postprocess``,
raise what is no ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``).
"""

from __future__ import annotations

import time
from typing import Any

from streaminfer.handlers import Record


def _fields(record: Record) -> list[str]:
    return (record.value or b"").decode().strip().split(",")


_QUITTING = {"exit": SystemExit(3), "interrupt": KeyboardInterrupt(), "halt": GeneratorExit()}


class CsvHandler:
    """One record at a time."""

    def preprocess(self, record: Record) -> dict[str, Any]:
        ident, *values = _fields(record)
        if ident in ("exit", "interrupt"):
            raise _QUITTING[ident]
        return {"x": [[float(v) for v in values]]}

    def postprocess(self, outputs: dict[str, Any], record: Record) -> dict[str, Any]:
        ident = _fields(record)[0]
        if ident == "boom":
            raise KeyError(ident)
        if ident == "halt":
            raise _QUITTING[ident]
        return {"id": ident, "y": outputs["y"][0], "offset": record.offset}


class BatchCsvHandler(CsvHandler):
    """Whole micro-batches in one call; a bad record makes the whole call raise."""

    def preprocess_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        return [self.preprocess(r) for r in records]

    def postprocess_batch(
        self, outputs: list[dict[str, Any]], records: list[Record]
    ) -> list[dict[str, Any]]:
        return [self.postprocess(o, r) for o, r in zip(outputs, records, strict=True)]


class SlowLookupHandler(CsvHandler):
    """Each hook waits 50 ms, as one that asks another service would."""

    def preprocess_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        time.sleep(0.05)
        return [self.preprocess(r) for r in records]

    def postprocess_batch(
        self, outputs: list[dict[str, Any]], records: list[Record]
    ) -> list[dict[str, Any]]:
        time.sleep(0.05)
        return [self.postprocess(o, r) for o, r in zip(outputs, records, strict=True)]


class Relabel:
    """Only a postprocess: the built-in parse and outputs, reshaped into one's own JSON."""

    def postprocess(self, outputs: dict[str, Any], record: Record) -> str:
        return "y=" + ",".join(f"{v:g}" for v in outputs["y"][0])


NOT_A_CLASS = 42


class NoHooks:
    pass


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("cannot start")

    def preprocess(self, record: Record) -> bytes:
        return b""
