"""TF Serving's REST formats ⇄ numpy arrays: the row format and the columnar one.

Rows (``instances``) are a list with one entry per batch row: a bare value for a model
with one input, else an object of the inputs by name.  Columns (``inputs`` / ``outputs``)
are an object of whole tensors by name, or a single tensor's value without a name.  A
tensor sent without a name is keyed ``UNNAMED``; the model's only input or output is meant.
Bytes whose tensor name ends in ``_bytes`` travel as ``{"b64": ...}``, as TF Serving does.
"""

from __future__ import annotations

import numpy as np

from streaminfer.codecs.errors import DecodeError
from streaminfer.codecs.jsonvalues import JSON, from_json, is_binary, to_json
from streaminfer.types import Tensors

UNNAMED = ""
"""Key of a tensor sent without a name: the model's only input or output."""

MODEL_VERSION_HEADER = "X-Model-Version"
"""Which version answered: TF Serving's body does not say, streaminfer's server adds this."""


def tensor_json(name: str, array: np.ndarray) -> JSON:
    """One tensor's value, in b64 where its name asks for it."""
    return to_json(array, b64=name.endswith("_bytes"))


def write_columns(tensors: Tensors) -> JSON:
    """The columnar form; a single tensor goes without its name, as TF Serving answers."""
    if len(tensors) == 1:
        ((name, array),) = tensors.items()
        return tensor_json(name, array)
    return {name: tensor_json(name, array) for name, array in tensors.items()}


def read_columns(value: JSON, field: str) -> Tensors:
    """The tensors of the columnar ``field`` ("inputs" or "outputs"), by name or ``UNNAMED``."""
    if isinstance(value, dict) and not is_binary(value):
        return {str(name): from_json(str(name), item) for name, item in value.items()}
    return {UNNAMED: from_json(field, value)}


def read_instances(instances: JSON) -> Tensors:
    """The tensors of the row form, each row's values stacked along a new first axis."""
    if isinstance(instances, np.ndarray):  # rows of floats, read by ``loads_tensors``
        return {UNNAMED: from_json("instances", instances)}
    if not isinstance(instances, list) or not instances:
        raise DecodeError('"instances" must be a non-empty list')
    if not all(isinstance(i, dict) and not is_binary(i) for i in instances):
        return {UNNAMED: from_json("instances", instances)}
    names = set(instances[0])
    if any(set(i) != names for i in instances):
        raise DecodeError("every instance must name the same inputs")
    return {name: from_json(name, [i[name] for i in instances]) for name in names}
