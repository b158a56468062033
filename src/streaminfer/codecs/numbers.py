"""Whole numbers a peer writes as text: versions in paths, lengths in headers.

Only ASCII digits count: ``str.isdigit`` also accepts ``"²"`` (which ``int`` refuses)
and other scripts' digits (which it reads), and ``int`` refuses more than 4300 digits.
"""

from __future__ import annotations

MAX_DIGITS = 18
"""Every number of 18 digits fits an int64, as versions and lengths do on the wire."""


def ascii_int(text: str) -> int | None:
    """``text`` as a non-negative integer if it is 1 to 18 ASCII digits, else None."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS:
        return int(text)
    return None
