"""Run by the TensorFlow venv (``.venv-tf``): build a small CNN, save it as ``.keras`` and
as a SavedModel, and record TensorFlow's answers to random images.

``python keras_models.py OUT`` writes ``OUT/cnn.keras``, ``OUT/cnn_savedmodel/``,
``OUT/inputs.npz`` (``image``) and ``OUT/expected.npz`` (``keras`` and ``savedmodel``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6")(x)
    x = keras.layers.Conv2D(16, 1, activation="swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    # Moving statistics away from 0/1, so batch normalisation is not the identity.
    model.layers[2].set_weights([w + 0.3 for w in model.layers[2].get_weights()])
    return model


def main(out: Path) -> None:
    model = build()
    model.save(out / "cnn.keras")
    model.export(out / "cnn_savedmodel")
    images = np.random.default_rng(1).random((6, 32, 32, 3), dtype=np.float32)
    served = tf.saved_model.load(str(out / "cnn_savedmodel")).signatures["serving_default"]
    (savedmodel_output,) = served(image=tf.constant(images)).values()
    np.savez(out / "inputs.npz", image=images)
    np.savez(
        out / "expected.npz",
        keras=model(images, training=False).numpy(),
        savedmodel=savedmodel_output.numpy(),
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
