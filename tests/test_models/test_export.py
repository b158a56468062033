"""EfficientNet-Lite0 export: the ONNX graph computes the reference network, predicts real
images correctly, uses every weight, and lands in the repository atomically."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
from onnx import numpy_helper
from PIL import Image

from streaminfer.errors import ConfigError
from streaminfer.models.export import (
    export_efficientnet_lite0,
    load_state_dict,
    next_version,
    parameter_count,
    uncovered_weights,
    write_version_atomically,
)
from streaminfer.models.export.efficientnet import lite0_weights_path
from streaminfer.models.layout import parse_version
from streaminfer.models.metadata import ImagePreprocess, ModelMetadata
from tests.test_models import reference_numpy

MODEL = "efficientnet-lite0"
LITE0_PARAMETERS = 4_652_008  # as published for EfficientNet-Lite0 (4.7M)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return load_state_dict(lite0_weights_path())


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_efficientnet_lite0(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def session(version_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def metadata(version_dir: Path) -> ModelMetadata:
    return ModelMetadata.read(version_dir)


def logits(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    (out,) = session.run(["logits"], {"input": batch})
    return np.asarray(out)


# --- the exported version ----------------------------------------------------------------


def test_version_holds_model_labels_and_metadata(version_dir: Path, metadata: ModelMetadata):
    assert version_dir.name == "1"
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no temp folder left
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "labels.txt",
        "model.json",
        "model.onnx",
    ]

    onnx.checker.check_model(onnx.load(version_dir / "model.onnx"), full_check=True)
    assert metadata.model_file == "model.onnx"
    assert [(t.name, t.dtype, t.shape) for t in metadata.signature.inputs] == [
        ("input", "float32", [-1, 3, 224, 224])
    ]
    assert [(t.name, t.dtype, t.shape) for t in metadata.signature.outputs] == [
        ("logits", "float32", [-1, 1000])
    ]
    assert metadata.preprocess is not None and metadata.preprocess.size == (224, 224)
    assert metadata.top_k == 5

    labels = metadata.labels(version_dir)
    assert labels is not None and len(labels) == 1000
    assert all(label.strip() == label and label for label in labels)
    assert (labels[0], labels[967]) == ("tench", "espresso")


def test_onnx_signature_has_dynamic_batch(session: ort.InferenceSession):
    [inp] = session.get_inputs()
    [out] = session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("input", "tensor(float)", [3, 224, 224])
    assert (out.name, out.type, out.shape[1:]) == ("logits", "tensor(float)", [1000])
    assert isinstance(inp.shape[0], str) and inp.shape[0] == out.shape[0]


# --- numerics ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_numpy_reference(
    session: ort.InferenceSession, state_dict: dict[str, np.ndarray], seed: int
):
    rng = np.random.default_rng(seed)
    batch = rng.normal(0.0, 1.0, size=(2, 3, 224, 224)).astype(np.float32)
    expected = reference_numpy.forward(state_dict, batch)
    diff = np.abs(logits(session, batch) - expected).max()
    assert diff < 1e-3, f"max abs diff {diff}"


def test_batch_equals_one_by_one(session: ort.InferenceSession):
    batch = np.random.default_rng(2).uniform(-1, 1, size=(4, 3, 224, 224)).astype(np.float32)
    together = logits(session, batch)
    alone = np.concatenate([logits(session, batch[i : i + 1]) for i in range(len(batch))])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-4)


def preprocess(image: np.ndarray, spec: ImagePreprocess) -> np.ndarray:
    """The metadata's recipe, on a JPEG round trip of ``image`` as a service would get it."""
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="JPEG", quality=95)
    decoded = Image.open(io.BytesIO(encoded.getvalue())).convert("RGB")
    scale = (spec.resize_shorter or min(spec.size)) / min(decoded.size)
    resample = {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }[spec.resample]
    resized = decoded.resize(
        (round(decoded.width * scale), round(decoded.height * scale)), resample
    )
    height, width = spec.size
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    cropped = resized.crop((left, top, left + width, top + height))
    pixels = np.asarray(cropped, dtype=np.float32) / 255
    normalized = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    assert spec.layout == "NCHW"
    return normalized.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.parametrize(
    ("image", "accepted", "within_top"),
    [
        (skimage.data.chelsea, {281, 282, 285}, 1),  # tabby, tiger cat, Egyptian cat
        (skimage.data.coffee, {967}, 1),  # espresso
        (skimage.data.rocket, {657, 744, 812}, 3),  # missile, projectile, space shuttle
    ],
)
def test_golden_predictions(
    session: ort.InferenceSession,
    metadata: ModelMetadata,
    image: Callable[[], np.ndarray],
    accepted: set[int],
    within_top: int,
):
    assert metadata.preprocess is not None
    scores = logits(session, preprocess(image(), metadata.preprocess))[0]
    top = [int(i) for i in np.argsort(-scores)[:within_top]]
    assert accepted & set(top), f"{image.__name__}: top {top}"


# --- weights ---------------------------------------------------------------------------------


def test_every_weight_used_with_its_shape(version_dir: Path, state_dict: dict[str, np.ndarray]):
    model = onnx.load(version_dir / "model.onnx")
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}

    assert {k: v.shape for k, v in initializers.items()} == {k: v.shape for k, v in weights.items()}
    assert uncovered_weights(model, state_dict) == []
    learned = [
        v for k, v in initializers.items() if not k.endswith(("running_mean", "running_var"))
    ]
    assert parameter_count(state_dict) == sum(v.size for v in learned) == LITE0_PARAMETERS


def test_uncovered_weights_names_changed_and_missing(
    version_dir: Path, state_dict: dict[str, np.ndarray]
):
    model = onnx.load(version_dir / "model.onnx")
    altered = dict(state_dict)
    altered["_fc.bias"] = altered["_fc.bias"] + 1
    altered["_extra.weight"] = np.zeros(3, dtype=np.float32)
    assert uncovered_weights(model, altered) == ["_fc.bias", "_extra.weight"]


# --- reading .pth files without torch ------------------------------------------------------


def _pickle_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _pickle_ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def _state_dict_pickle(
    tensors: Mapping[str, tuple[str, str, int, int, tuple[int, ...], tuple[int, ...]]], legacy: bool
) -> bytes:
    """A torch-style state-dict pickle, assembled opcode by opcode (torch is not available).

    ``tensors``: name -> (storage class, storage key, storage numel, offset, size, stride).
    """
    out = [b"\x80\x02ccollections\nOrderedDict\n)R("]
    for name, (storage_class, key, numel, offset, size, stride) in tensors.items():
        persistent_id = (
            b"(" + _pickle_str("storage") + f"ctorch\n{storage_class}\n".encode()
            + _pickle_str(key) + _pickle_str("cpu") + b"J" + struct.pack("<i", numel)
            + (b"N" if legacy else b"") + b"t"
        )  # fmt: skip
        out += [
            _pickle_str(name),
            b"ctorch._utils\n_rebuild_tensor_v2\n(",
            persistent_id + b"Q",
            b"J" + struct.pack("<i", offset),
            _pickle_ints(size),
            _pickle_ints(stride),
            b"\x89ccollections\nOrderedDict\n)Rt",
            b"R",
        ]
    out.append(b"u.")
    return b"".join(out)


def _write_legacy(path: Path, main_pickle: bytes, storages: dict[str, np.ndarray]) -> None:
    sys_info = {"protocol_version": 1001, "little_endian": True}
    with path.open("wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
            file.write(pickle.dumps(header, protocol=2))
        file.write(main_pickle)
        file.write(pickle.dumps(list(storages), protocol=2))
        for array in storages.values():
            file.write(struct.pack("<q", array.size) + array.tobytes())


def _write_zip(path: Path, main_pickle: bytes, storages: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", main_pickle)
        archive.writestr("archive/byteorder", "little")
        for key, array in storages.items():
            archive.writestr(f"archive/data/{key}", array.tobytes())


STORAGES = {"0": np.arange(12, dtype="<f4"), "1": np.array([41, 42], dtype="<i8")}
TENSORS = {
    "matrix": ("FloatStorage", "0", 12, 0, (3, 4), (4, 1)),
    "transposed": ("FloatStorage", "0", 12, 0, (4, 3), (1, 4)),
    "strided": ("FloatStorage", "0", 12, 5, (2, 2), (4, 2)),
    "count": ("LongStorage", "1", 2, 1, (), ()),
}
LAYOUTS = {"legacy": _write_legacy, "zip": _write_zip}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pth_respects_offset_size_stride_and_dtype(tmp_path: Path, layout: str):
    path = tmp_path / "weights.pth"
    LAYOUTS[layout](path, _state_dict_pickle(TENSORS, legacy=layout == "legacy"), STORAGES)

    loaded = load_state_dict(path)

    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert list(loaded) == list(TENSORS)
    np.testing.assert_array_equal(loaded["matrix"], matrix)
    np.testing.assert_array_equal(loaded["transposed"], matrix.T)
    np.testing.assert_array_equal(loaded["strided"], [[5, 7], [9, 11]])
    assert loaded["count"].shape == () and loaded["count"] == 42
    assert [a.dtype for a in loaded.values()] == [np.float32] * 3 + [np.int64]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pth_refuses_tensor_past_its_storage(tmp_path: Path, layout: str):
    path = tmp_path / "weights.pth"
    too_big = {"w": ("FloatStorage", "0", 12, 0, (4, 4), (4, 1))}
    storages = {"0": STORAGES["0"]}
    LAYOUTS[layout](path, _state_dict_pickle(too_big, legacy=layout == "legacy"), storages)
    with pytest.raises(ConfigError, match="past the end"):
        load_state_dict(path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pth_never_runs_pickled_code(tmp_path: Path, layout: str):
    marker = tmp_path / "pwned"
    payload = b"\x80\x02cos\nsystem\n(" + _pickle_str(f"touch {marker}") + b"tR."
    path = tmp_path / "weights.pth"
    LAYOUTS[layout](path, payload, {})
    with pytest.raises(ConfigError, match=r"os\.system is not allowed"):
        load_state_dict(path)
    assert not marker.exists()


def test_pth_refuses_other_files(tmp_path: Path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="not a readable PyTorch state dict"):
        load_state_dict(path)


# --- atomic versions -------------------------------------------------------------------------


def test_existing_version_is_refused(version_dir: Path):
    before = (version_dir / "model.onnx").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already exists"):
        export_efficientnet_lite0(version_dir.parent.parent, version=1)
    assert (version_dir / "model.onnx").stat().st_mtime_ns == before
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]


def test_export_takes_next_version_or_the_one_given(tmp_path: Path):
    (tmp_path / MODEL / "4").mkdir(parents=True)
    (tmp_path / MODEL / "junk-9").mkdir()
    assert export_efficientnet_lite0(tmp_path) == tmp_path / MODEL / "5"
    assert export_efficientnet_lite0(tmp_path, version=2, model_name="lite") == tmp_path / "lite/2"
    assert sorted(p.name for p in (tmp_path / MODEL).iterdir()) == ["4", "5", "junk-9"]


def test_version_appears_only_when_complete(tmp_path: Path):
    model_dir = tmp_path / "m"
    seen: list[Path] = []

    def fill(folder: Path) -> None:
        seen.append(folder)
        assert parse_version(folder.name) is None  # readers skip it
        assert folder.parent == model_dir and not (model_dir / "1").exists()
        (folder / "a.txt").write_text("a")

    assert write_version_atomically(model_dir, None, fill) == model_dir / "1"
    assert (model_dir / "1" / "a.txt").read_text() == "a"
    assert not seen[0].exists()


def test_failed_fill_leaves_nothing(tmp_path: Path):
    def fill(folder: Path) -> None:
        (folder / "half").write_text("written")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_version_atomically(tmp_path, 3, fill)
    assert list(tmp_path.iterdir()) == []


def test_next_version_ignores_non_versions(tmp_path: Path):
    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "0", "007x", ".tmp-12", "²"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    assert next_version(tmp_path) == 4


@pytest.mark.parametrize(
    ("version", "name"), [(0, MODEL), (-1, MODEL), (None, ".."), (None, "a/b")]
)
def test_bad_version_or_name_is_a_config_error(tmp_path: Path, version: int | None, name: str):
    with pytest.raises(ConfigError):
        export_efficientnet_lite0(tmp_path, version=version, model_name=name)
