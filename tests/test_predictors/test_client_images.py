"""How the worker classifies with a server's tensor model: the plan from model.json or flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streaminfer.images.presets import ImageOptions, image_preprocess
from streaminfer.models.errors import InvalidInput
from streaminfer.predictors.client_images import ClientImageOptions, plan_for
from streaminfer.predictors.signature import ServedModel, ServedTensor
from streaminfer.types import ModelRef

F32 = np.dtype(np.float32)
EXPORTED = ServedModel(
    inputs=(ServedTensor("input", F32, (-1, 3, 224, 224)),),
    outputs=(ServedTensor("logits", F32, (-1, 1000)),),
)


def test_the_repository_model_json_wins(model_repo: Path) -> None:
    options = ClientImageOptions(repo=model_repo, preprocess=ImageOptions.parse("raw", None, None))
    plan = plan_for(ModelRef("efficientnet-lite0"), EXPORTED, options)
    assert (plan.input, plan.output, plan.top_k) == ("input", "logits", 5)
    assert plan.spec.resize_shorter == 256  # from model.json, not the raw preset
    assert plan.labels is not None and plan.labels[967] == "espresso"


def test_flags_for_a_model_the_worker_has_no_files_of(tmp_path: Path) -> None:
    served = ServedModel(
        inputs=(ServedTensor("pixels", F32, (-1, -1, -1, 3)),),
        outputs=(ServedTensor("probs", F32, (-1, 3)),),
    )
    options = ClientImageOptions(
        repo=tmp_path,  # no folder for this model
        preprocess=ImageOptions.parse("inception", "192x160", None),
        labels=["a", "b", "c"],
        output_kind="probabilities",
    )
    plan = plan_for(ModelRef("keras"), served, options)
    assert plan.spec == image_preprocess("inception", [-1, -1, -1, 3], (192, 160))
    predictions = plan.predictions({"probs": np.array([[0.2, 0.7, 0.1]])}, 1, 2, "here")
    assert [(p.label, round(p.score, 3)) for p in predictions[0]] == [("b", 0.7), ("a", 0.2)]


def test_logits_are_turned_into_probabilities() -> None:
    options = ClientImageOptions(preprocess=ImageOptions.parse("imagenet", None, None))
    plan = plan_for(ModelRef("m"), EXPORTED, options)
    logits = np.zeros((2, 1000), np.float32)
    logits[1, 7] = 10
    ranked = plan.predictions({"logits": logits}, 2, 1, "here")
    assert ranked[1][0].class_id == 7 and ranked[1][0].label == "7"
    assert ranked[1][0].score == pytest.approx(np.exp(10) / (np.exp(10) + 999))


def test_without_model_json_or_preset_the_records_say_what_to_give() -> None:
    with pytest.raises(InvalidInput, match=r"give --repo .* or --preprocess"):
        plan_for(ModelRef("m"), EXPORTED, ClientImageOptions())
    two_inputs = ServedModel(inputs=EXPORTED.inputs * 2, outputs=EXPORTED.outputs)
    with pytest.raises(InvalidInput, match="takes one tensor"):
        plan_for(ModelRef("m"), two_inputs, ClientImageOptions())
