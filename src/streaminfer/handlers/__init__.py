"""Custom processing in Python: a user's handler class, loaded once per process by name.

``--handler package.module:Name`` (on ``run`` and ``serve``) names a class, imported from
the user's ``PYTHONPATH`` and instantiated once without arguments.  It defines any of:

* ``preprocess(record) -> inputs``: the raw ``Record`` in, the model's input instead of
  the built-in reading of the value: a mapping ``{input name: array-like}`` (the model's
  input tensors for this record, with their batch axis, usually one row), or ``bytes`` of
  an encoded image for an image model;
* ``postprocess(outputs, record) -> value``: the record's ``outputs`` in, what to write
  instead of the built-in output: ``bytes`` as they are, a ``str`` as UTF-8, anything
  else as JSON (numpy arrays and scalars included).  ``outputs`` is a dict: the model's
  output tensors by name (numpy arrays holding this record's rows), or, where the model's
  answer is ranked classes (image models, tabular classifiers), ``{"predictions":
  [{"class_id", "label", "score"}, ...]}``;
* ``preprocess_batch(records) -> [inputs]`` and ``postprocess_batch(outputs, records) ->
  [value]``: the same for a whole micro-batch in one call (one result per record, in
  order), preferred over the single-record hooks when defined.

A hook may be called from several threads at once.  Whatever a hook raises, even
``SystemExit`` or ``KeyboardInterrupt`` (but for the latter on the main thread, where it
is a Ctrl-C), or a result that is not one of the above, fails only the record it was
called for, as a ``HandlerError`` (reason ``handler_error``, the message naming the
exception's type); a batch hook that raises is called again one record at a time to find
the culprit.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson

from streaminfer.errors import ConfigError, RecordError, bounded
from streaminfer.plugins import load_object
from streaminfer.types import Tensors

T = TypeVar("T")

Headers = list[tuple[str, bytes | None]]
Inputs = Tensors | bytes
"""What ``preprocess`` gives the model: named input tensors, or an encoded image."""

HOOKS = ("preprocess", "postprocess", "preprocess_batch", "postprocess_batch")


@dataclass(frozen=True)
class Record:
    """What a hook sees of one record.

    In the worker: a consumed Kafka record (``topic``, ``partition``, ``offset`` and
    ``timestamp`` in milliseconds are set).  On the server: one REST predict request,
    its body as ``value``, its HTTP headers as ``headers``, and ``key`` and the Kafka
    fields ``None``.
    """

    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp: int | None = None


class HandlerError(RecordError):
    """A handler's hook raised for this record, or returned something unusable."""

    reason = "handler_error"

    def __init__(self, hook: str, message: str, exception_type: str | None = None) -> None:
        super().__init__(f"{hook} {message}")
        self.exception_type = exception_type


class Handler:
    """A loaded handler: its hooks, called so that one record's failure stays its own."""

    def __init__(self, instance: object, spec: str = "") -> None:
        self.spec = spec
        self.instance = instance
        self._hooks: dict[str, Callable[..., Any]] = {
            name: hook for name in HOOKS if callable(hook := getattr(instance, name, None))
        }
        if not self._hooks:
            raise ConfigError(f"--handler {spec}: the class defines none of {', '.join(HOOKS)}")

    @property
    def preprocesses(self) -> bool:
        return "preprocess" in self._hooks or "preprocess_batch" in self._hooks

    @property
    def postprocesses(self) -> bool:
        return "postprocess" in self._hooks or "postprocess_batch" in self._hooks

    def preprocess(self, records: Sequence[Record]) -> list[Inputs | HandlerError]:
        """Each record's model input, or why its hook failed."""
        return self._each(
            "preprocess",
            records,
            lambda r: self._hooks["preprocess"](r),
            lambda rs: self._hooks["preprocess_batch"](rs),
            _inputs,
        )

    def postprocess(
        self, outputs: Sequence[dict[str, Any]], records: Sequence[Record]
    ) -> list[bytes | HandlerError]:
        """Each record's output value as bytes, or why its hook failed."""
        pairs = list(zip(outputs, records, strict=True))
        return self._each(
            "postprocess",
            pairs,
            lambda p: self._hooks["postprocess"](*p),
            lambda ps: self._hooks["postprocess_batch"]([o for o, _ in ps], [r for _, r in ps]),
            _value,
        )

    def _each(
        self,
        hook: str,
        items: Sequence[Any],
        one: Callable[[Any], Any],
        many: Callable[[list[Any]], Any],
        check: Callable[[Any], T],
    ) -> list[T | HandlerError]:
        if f"{hook}_batch" in self._hooks:
            name = f"{hook}_batch"
            results = _call(name, lambda: many(list(items)))
            if not isinstance(results, HandlerError):
                # Exactly a list or tuple: a subclass's own __len__ or __iter__ could raise.
                if type(results) in (list, tuple) and len(results) == len(items):
                    return [_checked(name, check, r) for r in results]
                wrong = f"returned {_kind(results)}, not a list of {len(items)}"
                results = HandlerError(name, wrong)
            if len(items) == 1:
                return [results]
            # Call it again per record: only the record that fails it gets the error.
            return [self._each(hook, [item], one, many, check)[0] for item in items]
        if hook not in self._hooks:
            raise ConfigError(f"the handler has no {hook} hook")  # callers check first
        return [_checked(hook, check, _call(hook, functools.partial(one, item))) for item in items]


def load_handler(spec: str) -> Handler:
    """The handler ``package.module:Name`` names, instantiated once; ``ConfigError`` if not."""
    kind = load_object(spec, "--handler", "package.module:ClassName")
    if not isinstance(kind, type):
        name = spec.partition(":")[2]
        raise ConfigError(f"--handler {spec}: {name!r} is a {_kind(kind)}, not a class")
    try:
        instance = kind()
    except Exception as exc:
        raise ConfigError(
            f"--handler {spec}: {kind.__name__}() raised {type(exc).__name__}: {exc}"
        ) from None
    return Handler(instance, spec)


def _call(hook: str, fn: Callable[[], T]) -> T | HandlerError:
    try:
        return fn()
    except BaseException as exc:  # the user's code: whatever it raises is this record's
        return _failure(hook, "raised", exc)


def _checked(hook: str, check: Callable[[Any], T], result: Any) -> T | HandlerError:
    if isinstance(result, HandlerError):
        return result
    try:
        return check(result)
    except (TypeError, ValueError) as exc:
        return HandlerError(hook, f"returned {_text(exc)}")
    except BaseException as exc:  # the result's own methods (``__array__``, ``items``) ran
        return _failure(hook, "returned a value whose methods raised", exc)


def _failure(hook: str, what: str, exc: BaseException) -> HandlerError:
    """Why a hook failed this record.  Even SystemExit or GeneratorExit: one stopped the
    worker at the same record after every restart.  A real Ctrl-C is raised on the main
    thread only (``run`` and ``serve`` handle SIGINT themselves and call hooks on other
    threads): there it stops the process."""
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        raise exc
    name = type(exc).__name__
    return HandlerError(hook, f"{what} {name}: {_text(exc)}", name)


def _text(exc: BaseException) -> str:
    """The exception's message, its start and end in 1,000 bytes at most (as a model
    server's errors are kept); its ``__str__`` is user code too."""
    try:
        text = str(exc)
    except BaseException:
        return "(its message could not be read)"
    return bounded(text, 1000)


def _inputs(result: Any) -> Inputs:
    """A preprocess result as the model's input: named arrays of numbers, or image bytes."""
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result)
    if not isinstance(result, Mapping) or not result:
        raise TypeError(f"{_kind(result)}; expected a dict of input tensors or image bytes")
    tensors: Tensors = {}
    for name, values in result.items():
        array = np.asarray(values)
        if array.dtype == object or array.dtype.kind in "USV":
            raise ValueError(f"input {name!r} that does not hold numbers")
        tensors[str(name)] = array
    return tensors


def _value(result: Any) -> bytes:
    """A postprocess result as an output value: bytes, text as UTF-8, else JSON."""
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result)
    if isinstance(result, str):
        return result.encode()
    try:
        return orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"a value that is not JSON: {exc}") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _kind(value: object) -> str:
    return type(value).__name__
