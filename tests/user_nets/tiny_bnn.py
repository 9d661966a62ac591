"""A small binary CNN written with plain Brevitas, following the README's design rules (for
tests/test_user_onnx.py: exported to QONNX by the test, then built and verified from the .onnx)."""

import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
from brevitas.quant import Int8ActPerTensorFloat, SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from torch import nn


class BinaryWeight(SignedBinaryWeightPerTensorConst):
    scaling_const = 1.0  # no scaling factor


def binary_conv(cin, cout):
    return QuantConv2d(cin, cout, 3, padding=0, bias=False, weight_quant=BinaryWeight)


class TinyBNN(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10, channels: int = 3, size: int = 32, input_quant: bool = True):
        super().__init__()
        # input_quant=False: the first conv takes the pixels as they come (no 8-bit input quantizer)
        self.inp = QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True) if input_quant \
            else nn.Identity()
        self.conv0 = QuantConv2d(channels, width, 3, bias=False, weight_quant=BinaryWeight)
        self.convs = nn.ModuleList([binary_conv(width, width) for _ in range(2)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(3)])
        self.sign = nn.ModuleList([QuantIdentity(act_quant=SignedBinaryActPerTensorConst) for _ in range(3)])
        self.pool = nn.MaxPool2d(2)
        side = ((size - 2) // 2) // 2
        self.fc = QuantLinear(width * side * side, classes, bias=False, weight_quant=BinaryWeight)

    def forward(self, x):
        x = self.sign[0](self.bns[0](self.conv0(self.inp(x))))
        for i, conv in enumerate(self.convs, 1):
            x = F.pad(x, (1, 1, 1, 1), value=-1.0)  # bipolar padding
            x = self.sign[i](self.bns[i](conv(x)))
            x = self.pool(x)
        return self.fc(x.flatten(1))
