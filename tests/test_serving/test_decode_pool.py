"""The decode pool reads each image's size from its header to budget decoded pixels."""

from __future__ import annotations

import io
import threading

from PIL import Image

from streaminfer.serving.decode_pool import DecodePool, header_pixels


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_header_pixels_are_read_without_decoding_and_garbage_has_none() -> None:
    assert header_pixels(_png(30, 20)) == 600
    assert header_pixels(b"<html>") == 0
    assert header_pixels(b"") == 0


def test_images_over_budget_wait_for_the_ones_in_flight() -> None:
    pool = DecodePool(3, budget=1000)
    first_running, release, first_done = threading.Event(), threading.Event(), threading.Event()
    saw_first_done: dict[str, bool] = {}

    def decode(data: bytes, name: str) -> str:
        saw_first_done[name] = first_done.is_set()
        if name == "first":
            first_running.set()
            release.wait(30)
            first_done.set()
        return name

    first = pool.submit(decode, _png(30, 30), "first")  # 900 of the 1000 pixels
    assert first_running.wait(30)
    assert pool.submit(decode, _png(10, 10), "small").result(30) == "small"  # 100 fit beside
    big = pool.submit(decode, _png(20, 20), "big")  # 400 wait until the first is done
    release.set()
    assert first.result(30) == "first" and big.result(30) == "big"
    assert saw_first_done == {"first": False, "small": False, "big": True}
    pool.shutdown()
