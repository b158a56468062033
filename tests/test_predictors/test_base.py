"""The predictors' shared helpers."""

from __future__ import annotations

from streaminfer.predictors.base import elapsed_ms


def test_elapsed_ms_is_cut_to_the_microsecond() -> None:
    assert elapsed_ms(10.0, 10.0123456789) == 12.345
    assert elapsed_ms(5.0, 5.0000009) == 0.0
    assert elapsed_ms(0.0, 1.5) == 1500.0
