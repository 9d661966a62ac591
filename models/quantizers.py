"""Every quantizer bnnflow uses, in one place (as Brevitas' bnn_pynq examples do).

The rules that keep PyTorch and FINN's integer hardware bit-exact live here:
binary weights and activations have a constant scale of 1 (no scaling factors), padding of
binary activations is -1 (FINN's XNOR datapath has no zero), and every tensor that meets
another in an Add or a Concat passes through one shared stream quantizer so scales match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU, TruncAvgPool2d
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8WeightPerTensorFloat,
    SignedBinaryActPerTensorConst,
    SignedBinaryWeightPerTensorConst,
    TruncTo8bit,
    Uint8ActPerTensorFloat,
)
from torch import nn

STREAM_BITS = 4  # residual / concat stream width: small enough for cheap adds and concats
EDGE_WEIGHT_BITS = 4  # first conv and the 1x1 shortcut / transition convs
CLASSIFIER_WEIGHT_BITS = 8


class BinaryWeight(SignedBinaryWeightPerTensorConst):
    """Weights in {-1, +1}: a constant scale of 1, i.e. no scaling factor."""

    scaling_const = 1.0


class BinaryAct(SignedBinaryActPerTensorConst):
    """sign(x) with the clipped straight-through estimator."""


class StreamAct(Int8ActPerTensorFloat):
    """Signed few-bit quantizer shared by every tensor entering an Add or a Concat."""

    bit_width = STREAM_BITS


class EdgeWeight(Int8WeightPerTensorFloat):
    bit_width = EDGE_WEIGHT_BITS


class ClassifierWeight(Int8WeightPerTensorFloat):
    """Per-tensor so the classifier's scale is one scalar that FINN absorbs into TopK."""

    bit_width = CLASSIFIER_WEIGHT_BITS


class UnsignedStreamAct(Uint8ActPerTensorFloat):
    bit_width = STREAM_BITS


class FloorTrunc(TruncTo8bit):
    """FINN's average pool floors; Brevitas' default rounds. Bit width is set per pool."""


def stream_quant() -> QuantIdentity:
    # Returns QuantTensors so Brevitas checks that added/concatenated scales really match.
    return QuantIdentity(act_quant=StreamAct, return_quant_tensor=True)


def binary_act() -> QuantIdentity:
    return QuantIdentity(act_quant=BinaryAct, return_quant_tensor=False)


def quant_relu() -> QuantReLU:
    return QuantReLU(act_quant=UnsignedStreamAct, return_quant_tensor=True)


def binary_conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> QuantConv2d:
    # padding=0: BipolarPad pads with -1 beforehand
    return QuantConv2d(in_ch, out_ch, 3, stride=stride, padding=0, bias=False, weight_quant=BinaryWeight)


def edge_conv(in_ch: int, out_ch: int, kernel: int, padding: int = 0) -> QuantConv2d:
    return QuantConv2d(in_ch, out_ch, kernel, padding=padding, bias=False, weight_quant=EdgeWeight)


def classifier(in_features: int, classes: int, weight_quant=ClassifierWeight) -> QuantLinear:
    # No bias: FINN absorbs the classifier's scalar scale into TopK.
    return QuantLinear(in_features, classes, bias=False, weight_quant=weight_quant)


def trunc_avg_pool(kernel: int, in_bits: int, out_bits: int) -> TruncAvgPool2d:
    """Power-of-two average pool that floors to `out_bits` (at most in_bits + log2(kernel^2))."""
    assert kernel & (kernel - 1) == 0, "FINN's pool divides by shifting: kernel must be a power of two"
    max_bits = in_bits + 2 * (kernel.bit_length() - 1)
    assert out_bits <= max_bits, f"trunc bits {out_bits} above {max_bits} would not be exact"
    trunc = type(f"FloorTrunc{out_bits}", (FloorTrunc,), {"bit_width": out_bits})
    # QuantTensor out: the next conv (and the tie guard) must know the grid its input lies on
    return TruncAvgPool2d(kernel_size=kernel, stride=kernel, trunc_quant=trunc, return_quant_tensor=True)


class BipolarPad(nn.Module):
    """Pad binary activations with -1, which is 0 in FINN's {0,1} XNOR encoding."""

    def __init__(self, pad: int = 1):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        return F.pad(x, (p, p, p, p), value=-1.0)
