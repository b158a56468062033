"""EfficientNet-Lite0's forward pass in plain numpy (float64), written to follow the
reference ``efficientnet_lite_pytorch`` model.py / utils.py step by step, so that the ONNX
export can be checked against it without torch.  Deliberately independent of the
exporter: its own block strings, width/depth rounding, padding rule and block loop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

# efficientnet_lite(): block strings, batch-norm epsilon, relu6, fixed stem/head.
BLOCK_STRINGS = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]
WIDTH, DEPTH, IMAGE_SIZE = 1.0, 1.0, 224  # efficientnet_params("efficientnet-lite0")
BN_EPS = 1e-3
DEPTH_DIVISOR = 8


@dataclass(frozen=True)
class BlockArgs:
    num_repeat: int
    kernel_size: int
    stride: list[int] | int  # a list when decoded, the int 1 for repeated blocks
    expand_ratio: int
    input_filters: int
    output_filters: int


def decode(block_string: str) -> BlockArgs:
    options = {}
    for op in block_string.split("_"):
        key, value = re.split(r"(\d.*)", op)[:2]
        options[key] = value
    return BlockArgs(
        num_repeat=int(options["r"]),
        kernel_size=int(options["k"]),
        stride=[int(options["s"][0])],
        expand_ratio=int(options["e"]),
        input_filters=int(options["i"]),
        output_filters=int(options["o"]),
    )


def round_filters(filters: int, skip: bool = False) -> int:
    if skip:
        return filters
    scaled = filters * WIDTH
    new = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if new < 0.9 * scaled:
        new += DEPTH_DIVISOR
    return int(new)


def round_repeats(repeats: int) -> int:
    return math.ceil(DEPTH * repeats)


def first(stride: list[int] | int) -> int:
    return stride if isinstance(stride, int) else stride[0]


def output_size(size: int, stride: list[int] | int) -> int:
    return math.ceil(size / first(stride))


def conv2d_static_same(
    x: np.ndarray, w: np.ndarray, stride: int, groups: int, image_size: int
) -> np.ndarray:
    """Conv2dStaticSamePadding: zero padding computed from the declared image size."""
    kh = w.shape[2]
    oh = math.ceil(image_size / stride)
    pad = max((oh - 1) * stride + (kh - 1) + 1 - image_size, 0)
    x = np.pad(x, ((0, 0), (0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)))
    return conv2d(x, w, stride, groups)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """Unpadded convolution, groups 1 or depthwise."""
    n, c, h, width = x.shape
    kh, kw = w.shape[2:]
    oh, ow = (h - kh) // stride + 1, (width - kw) // stride + 1
    if groups == 1:
        out = np.zeros((n, oh, ow, w.shape[0]))
        for i in range(kh):
            for j in range(kw):
                window = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
                out += np.tensordot(window, w[:, :, i, j], axes=([1], [1]))
        return out.transpose(0, 3, 1, 2)
    assert groups == c and w.shape[1] == 1
    out = np.zeros((n, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += window * w[:, 0, i, j][None, :, None, None]
    return out


def batch_norm(x: np.ndarray, sd: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    def p(name: str) -> np.ndarray:
        return sd[f"{prefix}.{name}"].astype(np.float64)[None, :, None, None]

    return (x - p("running_mean")) / np.sqrt(p("running_var") + BN_EPS) * p("weight") + p("bias")


def relu6(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, 0.0), 6.0)


def mbconv(
    x: np.ndarray, sd: dict[str, np.ndarray], prefix: str, args: BlockArgs, image_size: int
) -> np.ndarray:
    inputs = x
    if args.expand_ratio != 1:
        x = conv2d_static_same(x, sd[f"{prefix}._expand_conv.weight"], 1, 1, image_size)
        x = relu6(batch_norm(x, sd, f"{prefix}._bn0"))
    oup = args.input_filters * args.expand_ratio
    x = conv2d_static_same(
        x, sd[f"{prefix}._depthwise_conv.weight"], first(args.stride), oup, image_size
    )
    x = relu6(batch_norm(x, sd, f"{prefix}._bn1"))
    image_size = output_size(image_size, args.stride)
    x = conv2d_static_same(x, sd[f"{prefix}._project_conv.weight"], 1, 1, image_size)
    x = batch_norm(x, sd, f"{prefix}._bn2")
    # As in the reference: a decoded stride is a list, so `stride == 1` only holds for the
    # repeated blocks of a stage (whose stride was replaced by the int 1).
    if args.stride == 1 and args.input_filters == args.output_filters:
        x = x + inputs
    return x


def blocks() -> list[tuple[BlockArgs, int]]:
    """The reference's block list with each block's input image size."""
    decoded = [decode(s) for s in BLOCK_STRINGS]
    image_size = output_size(IMAGE_SIZE, 2)  # after the stem
    out: list[tuple[BlockArgs, int]] = []
    for i, args in enumerate(decoded):
        input_filters = round_filters(args.input_filters)
        output_filters = round_filters(args.output_filters)
        if i in (0, len(decoded) - 1):  # fix_head_stem
            repeats = args.num_repeat
            if i == 0:
                input_filters = 32
        else:
            repeats = round_repeats(args.num_repeat)
        args = replace(
            args, input_filters=input_filters, output_filters=output_filters, num_repeat=repeats
        )
        out.append((args, image_size))
        image_size = output_size(image_size, args.stride)
        if args.num_repeat > 1:
            args = replace(args, input_filters=args.output_filters, stride=1)
        out.extend((args, image_size) for _ in range(args.num_repeat - 1))
    return out


def forward(sd: dict[str, np.ndarray], inputs: np.ndarray) -> np.ndarray:
    """Logits [N, 1000] for float input [N, 3, 224, 224]."""
    x = inputs.astype(np.float64)
    x = conv2d_static_same(x, sd["_conv_stem.weight"], 2, 1, IMAGE_SIZE)
    x = relu6(batch_norm(x, sd, "_bn0"))
    for index, (args, image_size) in enumerate(blocks()):
        x = mbconv(x, sd, f"_blocks.{index}", args, image_size)
    feature_size = output_size(image_size, args.stride)
    x = conv2d_static_same(x, sd["_conv_head.weight"], 1, 1, feature_size)
    x = relu6(batch_norm(x, sd, "_bn1"))
    x = x.mean(axis=(2, 3))
    return x @ sd["_fc.weight"].astype(np.float64).T + sd["_fc.bias"]
