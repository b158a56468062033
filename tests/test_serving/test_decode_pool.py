"""The decode pool reads each image's size and mode from its header to budget decoded bytes."""

from __future__ import annotations

import io
import threading

from PIL import Image

from streaminfer.serving.decode_pool import DecodePool, header_bytes


def _png(width: int, height: int, mode: str = "RGB", **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG", **options)
    return buffer.getvalue()


def test_what_an_image_costs_is_read_from_its_header_and_garbage_costs_nothing() -> None:
    """Pillow's own pixels, then the RGB copy unless the image is RGB: a transparent image
    costs twice an RGB one of its size."""
    assert header_bytes(_png(30, 20)) == 600 * 4
    assert header_bytes(_png(30, 20, "RGBA")) == header_bytes(_png(30, 20, "LA")) == 600 * 8
    assert header_bytes(_png(30, 20, "L")) == header_bytes(_png(30, 20, "P")) == 600 * 5
    assert header_bytes(_png(30, 20, "P", transparency=0)) == 600 * 5
    assert header_bytes(_png(30, 20, "I;16")) == 600 * 6
    assert header_bytes(b"<html>") == 0
    assert header_bytes(b"") == 0


def test_images_over_budget_wait_for_the_ones_in_flight() -> None:
    pool = DecodePool(3, budget=4000)
    first_running, release, first_done = threading.Event(), threading.Event(), threading.Event()
    saw_first_done: dict[str, bool] = {}

    def decode(data: bytes, name: str) -> str:
        saw_first_done[name] = first_done.is_set()
        if name == "first":
            first_running.set()
            release.wait(30)
            first_done.set()
        return name

    first = pool.submit(decode, _png(30, 30), "first")  # 900 of the 1000 pixels' bytes
    assert first_running.wait(30)
    assert pool.submit(decode, _png(10, 10), "small").result(30) == "small"  # 100 fit beside
    big = pool.submit(decode, _png(10, 10, "RGBA"), "big")  # 200 wait until the first is done
    release.set()
    assert first.result(30) == "first" and big.result(30) == "big"
    assert saw_first_done == {"first": False, "small": False, "big": True}
    pool.shutdown()
