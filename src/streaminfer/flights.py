"""A generated flights-style data set (no downloads): departure facts in, delay class out.

``demo --tabular`` trains on it, and so do the tests; it needs pandas (the ``sklearn`` extra).

The label follows the features with noise, so trained models are neither trivial nor
random: arrivals are late mostly when departures were late and taxiing was long.  Every
feature is a whole number (minutes, miles, hours), as in real flight records, so it is
exact in the float32 a served model computes in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = ["dep_delay", "taxi_out", "distance", "dep_hour", "day_of_week", "carrier"]


def flights(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "dep_delay": (rng.gamma(1.5, 12.0, rows) - 8.0).round(),
            "taxi_out": rng.gamma(4.0, 4.0, rows).round(),
            "distance": rng.uniform(100, 3000, rows).round(),
            "dep_hour": rng.integers(5, 23, rows).astype(float),
            "day_of_week": rng.integers(1, 8, rows).astype(float),
            "carrier": rng.integers(0, 12, rows).astype(float),
        }
    )
    arrival = (
        frame["dep_delay"]
        + 0.8 * (frame["taxi_out"] - 16)
        - frame["distance"] / 400
        + 0.6 * (frame["dep_hour"] - 14)
        + rng.normal(0, 8, rows)
    )
    frame["arr_delay"] = arrival
    frame["status"] = np.select([arrival > 45, arrival > 15], ["very_late", "late"], "on_time")
    frame["delayed"] = (arrival > 15).astype(int)
    return frame


def split(frame: pd.DataFrame, held_out: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = int(len(frame) * (1 - held_out))
    return frame.iloc[:cut], frame.iloc[cut:]
