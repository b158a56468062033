"""Numbers written as text by a peer: ASCII digits only, of a size an int64 holds."""

from __future__ import annotations

import pytest

from streaminfer.codecs.numbers import ascii_int

FULLWIDTH_ONE = "\uff11"


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("7", 7), ("000123", 123), ("9" * 18, int("9" * 18))]
)
def test_ascii_digits_are_numbers(text: str, value: int) -> None:
    assert ascii_int(text) == value


@pytest.mark.parametrize(
    "text", ["", "²", "٣", FULLWIDTH_ONE, "-1", "+1", " 1", "1.0", "1e3", "9" * 19, "1" * 5000]
)
def test_anything_else_is_not(text: str) -> None:
    assert ascii_int(text) is None
