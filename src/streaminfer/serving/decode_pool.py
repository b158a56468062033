"""The server's image-decoding threads, with a budget of decoded bytes in flight.

One image may be up to ``DEFAULT_MAX_PIXELS`` (50 MP, 200 MB as Pillow holds RGB), and a
request may hold 64 of them in a few hundred kilobytes (a blank PNG compresses a
thousandfold).  Decoded four at a time, such images would take the server past a
gigabyte; so each image first reserves what its decoding holds at most, read from its
header (:func:`~streaminfer.images.decode.peak_bytes`: twice as much for a transparent
image as for an RGB one), from a budget of one largest RGB image, and waits while the
images being decoded hold it.  An image that needs more than the whole budget decodes
alone.  Ordinary photos (a few megapixels) still decode side by side.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

from PIL import Image

from streaminfer.images.decode import DEFAULT_MAX_PIXELS, peak_bytes

T = TypeVar("T")


class DecodePool(Executor):
    """A thread pool whose tasks, called with an encoded image first, share a budget of
    decoded bytes."""

    def __init__(self, threads: int, budget: int = DEFAULT_MAX_PIXELS * 4) -> None:
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="image-decode")
        self._budget = budget
        self._free = budget
        self._changed = threading.Condition()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        size = header_bytes(args[0]) if args and isinstance(args[0], bytes) else 0
        return self._threads.submit(
            self._within_budget, min(size, self._budget), fn, *args, **kwargs
        )

    def _within_budget(self, size: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._changed:
            self._changed.wait_for(lambda: self._free >= size)
            self._free -= size
        try:
            return fn(*args, **kwargs)
        finally:
            with self._changed:
                self._free += size
                self._changed.notify_all()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._threads.shutdown(wait, cancel_futures=cancel_futures)


def header_bytes(data: bytes) -> int:
    """The bytes that decoding an encoded image holds at most, from what its header
    claims; 0 if it has none we can read (decoding will say what is wrong with it)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return peak_bytes(image)
    except Exception:  # any unreadable header: the decoder refuses it later
        return 0
