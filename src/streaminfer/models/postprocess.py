"""From logits or probabilities to the top-k classes a user reads: id, label, probability."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Prediction:
    class_id: int
    label: str
    score: float

    def as_dict(self) -> dict[str, object]:
        # By hand: dataclasses.asdict deep-copies, 12 us for three fields.
        return {"class_id": self.class_id, "label": self.label, "score": self.score}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def top_k(logits: np.ndarray, k: int, class_names: list[str] | None) -> list[list[Prediction]]:
    """Top ``k`` classes per row of a ``[N, classes]`` logit matrix, best first."""
    return rank(softmax(np.asarray(logits, dtype=np.float32)), k, class_names)


def rank(
    probabilities: np.ndarray, k: int, class_names: list[str] | None
) -> list[list[Prediction]]:
    """Top ``k`` classes per row of a ``[N, classes]`` probability matrix, best first."""
    k = min(k, probabilities.shape[-1])
    best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    names = class_names or []
    # Python lists: indexing numpy arrays element by element costs more than ranking them.
    return [
        [Prediction(c, names[c] if c < len(names) else str(c), row[c]) for c in ids]
        for row, ids in zip(probabilities.tolist(), best.tolist(), strict=True)
    ]
