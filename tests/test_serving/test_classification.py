"""The classification extension's post-step: top-K classes as Triton's strings."""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.codecs.arrays import BYTES
from streaminfer.serving.classification import class_count, classified
from streaminfer.serving.errors import InvalidRequest


def test_each_row_becomes_its_top_classes_best_first() -> None:
    logits = np.array([[0.1, 2.5, -1.0], [3.0, 0.0, 1.0]], dtype=np.float32)
    out = classified({"logits": logits, "other": logits}, {"logits": 2}, "logits", ["a", "b", "c"])
    assert out["logits"].dtype == BYTES
    assert out["logits"].tolist() == [
        [b"2.500000:1:b", b"0.100000:0:a"],
        [b"3.000000:0:a", b"1.000000:2:c"],
    ]
    assert out["other"] is logits  # outputs not asked for stay as they are


def test_unlabelled_outputs_give_score_and_index_and_k_is_capped() -> None:
    scores = np.array([1, 7, 3], dtype=np.int64)
    out = classified({"y": scores}, {"y": 10}, labelled="logits", class_names=["a", "b", "c"])
    assert out["y"].tolist() == [b"7.000000:1", b"3.000000:2", b"1.000000:0"]


def test_wider_outputs_rank_each_row_flattened() -> None:
    values = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    out = classified({"y": values}, {"y": 1})
    assert out["y"].tolist() == [[b"3.000000:3"], [b"7.000000:3"]]


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ({"y": np.array([b"a"], dtype=BYTES)}, "no classes to rank"),
        ({"y": np.float32(1.0)}, "no classes to rank"),
        ({"y": np.zeros((0, 3))}, "no classes to rank"),
        ({"z": np.zeros(3)}, "no output 'y'"),
    ],
)
def test_what_cannot_be_classified_is_refused(outputs: dict[str, np.ndarray], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        classified(outputs, {"y": 1})


def test_class_count_reads_the_parameter() -> None:
    assert class_count(None, "y") is None
    assert class_count(0, "y") is None  # tritonclient's default: no classification
    assert class_count(3, "y") == 3
    for bad in (-1, True, "3", 2.0):
        with pytest.raises(InvalidRequest, match="non-negative integer"):
            class_count(bad, "y")
