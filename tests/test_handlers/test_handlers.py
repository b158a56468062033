"""The handler contract without Kafka: loading by name, per-record isolation, batch calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest

from streaminfer.errors import ConfigError
from streaminfer.handlers import Handler, HandlerError, Record, load_handler
from tests.handler_examples import BatchCsvHandler
from tests.support import run_cli


def records(*lines: str) -> list[Record]:
    return [Record(None, line.encode(), [], "in", 0, i, None) for i, line in enumerate(lines)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.handler_examples", "expected package.module:ClassName"),
        ("no_such_package.mod:Name", "no module named 'no_such_package'"),
        ("tests.handler_examples:Missing", "has no 'Missing'"),
        ("tests.handler_examples:NOT_A_CLASS", "'NOT_A_CLASS' is a int, not a class"),
        ("tests.handler_examples:NoHooks", "defines none of preprocess"),
        ("tests.handler_examples:Broken", "Broken() raised RuntimeError: cannot start"),
    ],
)
def test_a_bad_handler_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_handler(spec)


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_bad_handler_ends_the_command_with_one_line(command: str, tmp_path: Any) -> None:
    extra = ["--mode", "embedded"] if command == "run" else []
    result = run_cli(command, "--repo", str(tmp_path), *extra, "--handler", "nope.mod:Hook")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "streaminfer: error: --handler nope.mod:Hook: no module named 'nope' on the Python path"
    ]


def test_each_record_gets_its_own_inputs_or_its_own_error() -> None:
    handler = load_handler("tests.handler_examples:CsvHandler")
    assert handler.preprocesses and handler.postprocesses
    good, bad, other = handler.preprocess(records("a,1,2,3,4", "b,1,x,3,4", "c,0,0,0,1"))
    assert isinstance(good, dict) and good["x"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert isinstance(other, dict) and other["x"].shape == (1, 4)
    assert isinstance(bad, HandlerError)
    assert bad.reason == "handler_error" and bad.exception_type == "ValueError"
    assert str(bad).startswith("preprocess raised ValueError: could not convert")


def test_postprocess_values_become_bytes() -> None:
    handler = load_handler("tests.handler_examples:CsvHandler")
    outputs = [{"y": np.array([[1.5, 2.0]], dtype=np.float32)}] * 2
    value, failed = handler.postprocess(outputs, records("a,1", "boom,1"))
    assert orjson.loads(value) == {"id": "a", "y": [1.5, 2.0], "offset": 0}  # type: ignore[arg-type]
    assert isinstance(failed, HandlerError) and failed.exception_type == "KeyError"
    relabel = load_handler("tests.handler_examples:Relabel")
    assert not relabel.preprocesses
    assert relabel.postprocess(outputs[:1], records("a")) == [b"y=1.5,2"]


def test_a_value_that_is_not_json_fails_its_record() -> None:
    class Opaque:
        def postprocess(self, outputs: dict[str, Any], record: Record) -> object:
            return object() if record.offset else {"ok": True}

    ok, opaque = Handler(Opaque()).postprocess([{}, {}], records("a", "b"))
    assert ok == b'{"ok":true}'
    assert isinstance(opaque, HandlerError) and "not JSON" in str(opaque)


def test_a_batch_hook_is_called_once_and_again_per_record_only_when_it_raises() -> None:
    class Counting(BatchCsvHandler):
        calls: list[int] = []

        def preprocess_batch(self, records: list[Record]) -> list[dict[str, Any]]:
            self.calls.append(len(records))
            return super().preprocess_batch(records)

    handler = Handler(Counting())
    assert all(isinstance(i, dict) for i in handler.preprocess(records("a,1,2,3,4", "b,0,0,0,0")))
    assert Counting.calls == [2]
    outcomes = handler.preprocess(records("a,1,2,3,4", "b,oops,0,0,0", "c,1,1,1,1"))
    assert Counting.calls == [2, 3, 1, 1, 1]
    assert [type(o).__name__ for o in outcomes] == ["dict", "HandlerError", "dict"]


def test_a_batch_hook_must_answer_every_record() -> None:
    class Short:
        def preprocess_batch(self, records: list[Record]) -> list[dict[str, Any]]:
            return [{"x": [[1.0]]}][: len(records) - 1]

    outcomes = Handler(Short()).preprocess(records("a", "b"))
    assert all(isinstance(o, HandlerError) and "not a list of 1" in str(o) for o in outcomes)


@pytest.mark.parametrize(
    ("returned", "complaint"),
    [([1, 2], "expected a dict"), ({"x": ["a"]}, "does not hold numbers"), ({}, "expected")],
)
def test_preprocess_must_return_tensors_or_image_bytes(returned: object, complaint: str) -> None:
    class Odd:
        def preprocess(self, record: Record) -> object:
            return returned

    (outcome,) = Handler(Odd()).preprocess(records("a"))
    assert isinstance(outcome, HandlerError) and complaint in str(outcome)
    (image,) = Handler(type("Img", (), {"preprocess": lambda self, r: b"\xff\xd8"})()).preprocess(
        records("a")
    )
    assert image == b"\xff\xd8"


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_a_hook_that_raises_past_exception_fails_only_its_record(raised: BaseException) -> None:
    """Raised for one record, any of these stopped the worker, again at the same record
    after every restart.  Hooks run on chunk threads, as here."""

    class Quitting:
        def preprocess(self, record: Record) -> dict[str, Any]:
            if record.offset == 1:
                raise raised
            return {"x": [[1.0]]}

    with ThreadPoolExecutor(1) as chunk:
        outcomes = chunk.submit(Handler(Quitting()).preprocess, records("a", "b", "c")).result()
    assert [type(o).__name__ for o in outcomes] == ["dict", "HandlerError", "dict"]
    failed = outcomes[1]
    assert isinstance(failed, HandlerError) and failed.exception_type == type(raised).__name__
    assert str(failed).startswith(f"preprocess raised {type(raised).__name__}")


def test_a_keyboard_interrupt_on_the_main_thread_is_a_ctrl_c() -> None:
    class Interrupted:
        def postprocess(self, outputs: dict[str, Any], record: Record) -> object:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Handler(Interrupted()).postprocess([{}], records("a"))


class _Hostile(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message either")


class _RaisingArray:
    """A result whose own method raises something other than TypeError or ValueError."""

    def __array__(self, dtype: object = None, copy: object = None) -> Any:
        raise _Hostile


class _RaisingList(list[Any]):
    def __len__(self) -> int:
        raise SystemExit(4)


def test_a_result_whose_methods_raise_fails_only_its_record() -> None:
    """numpy calls a result's ``__array__``; whatever it raises, and whatever the raised
    exception's ``__str__`` raises, is that record's failure, on a chunk thread."""

    class Odd:
        def preprocess(self, record: Record) -> dict[str, Any]:
            return {"x": _RaisingArray()} if record.offset == 1 else {"x": [[1.0]]}

    with ThreadPoolExecutor(1) as chunk:
        outcomes = chunk.submit(Handler(Odd()).preprocess, records("a", "b", "c")).result()
    assert [type(o).__name__ for o in outcomes] == ["dict", "HandlerError", "dict"]
    failed = outcomes[1]
    assert isinstance(failed, HandlerError) and failed.exception_type == "_Hostile"
    assert str(failed) == (
        "preprocess returned a value whose methods raised _Hostile: (its message could not be read)"
    )


def test_a_batch_result_of_a_list_subclass_is_called_again_per_record() -> None:
    class OddBatch:
        def postprocess_batch(self, outputs: list[Any], records: list[Record]) -> list[Any]:
            return _RaisingList(["v"] * len(records))

        def postprocess(self, outputs: dict[str, Any], record: Record) -> object:
            return "one"

    values = Handler(OddBatch()).postprocess([{}, {}], records("a", "b"))
    assert [type(v).__name__ for v in values] == ["HandlerError", "HandlerError"]
    assert "returned _RaisingList, not a list of 1" in str(values[0])
