"""Small Brevitas networks that break a FINN design rule, each in one place (for tests/test_user_models.py).

Written with plain Brevitas quantizers, not bnnflow's: what a new user would bring.
"""

import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
from brevitas.quant import Int8ActPerTensorFloat, SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from torch import nn


class Bin(SignedBinaryWeightPerTensorConst):
    scaling_const = 1.0


class Act4(Int8ActPerTensorFloat):
    bit_width = 4


def _conv(cin, cout):
    return QuantConv2d(cin, cout, 3, padding=0, bias=False, weight_quant=Bin)


class TwoScaleAdd(nn.Module):
    """A residual Add whose two inputs come from two different quantizers (two scales): FINN converts it, but
    with float elementwise Mul/Add layers in hardware."""

    def __init__(self, ch: int = 16):
        super().__init__()
        self.inp = QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
        self.conv0 = QuantConv2d(3, ch, 3, bias=False, weight_quant=Bin)
        self.bn0 = nn.BatchNorm2d(ch)
        self.q_a = QuantIdentity(act_quant=Act4, return_quant_tensor=False)
        self.sign = QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
        self.conv1 = _conv(ch, ch)
        self.bn1 = nn.BatchNorm2d(ch)
        self.q_b = QuantIdentity(act_quant=Act4, return_quant_tensor=False)  # its own scale: the mistake
        self.pool = nn.MaxPool2d(2)
        self.fc = QuantLinear(ch * 15 * 15, 10, bias=False, weight_quant=Bin)

    def forward(self, x):
        a = self.q_a(self.bn0(self.conv0(self.inp(x))))
        b = self.q_b(self.bn1(self.conv1(F.pad(self.sign(a), (1, 1, 1, 1), value=-1.0))))
        y = self.pool(self.sign(a + b))
        return self.fc(y.flatten(1))


class OddPool(nn.Module):
    """An average pool of 3 x 3: FINN's pools divide by shifting, so 1/9 stays a float Mul."""

    def __init__(self, ch: int = 16):
        super().__init__()
        self.inp = QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
        self.conv0 = QuantConv2d(3, ch, 3, bias=False, weight_quant=Bin)
        self.bn0 = nn.BatchNorm2d(ch)
        self.q = QuantIdentity(act_quant=Act4, return_quant_tensor=False)
        self.pool = nn.AvgPool2d(3)
        self.q2 = QuantIdentity(act_quant=Act4, return_quant_tensor=True)
        self.fc = QuantLinear(ch * 10 * 10, 10, bias=False, weight_quant=Bin)

    def forward(self, x):
        y = self.q2(self.pool(self.q(self.bn0(self.conv0(self.inp(x))))))
        return self.fc(y.flatten(1))


class BnBeforePool(nn.Module):
    """A batch norm right before a max pool, quantized only after it: the BN's float scale (negative on some
    channels) cannot move past the max."""

    def __init__(self, ch: int = 16):
        super().__init__()
        self.inp = QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
        self.conv0 = QuantConv2d(3, ch, 3, bias=False, weight_quant=Bin)
        self.bn0 = nn.BatchNorm2d(ch)
        self.pool = nn.MaxPool2d(2)
        self.q = QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
        self.fc = QuantLinear(ch * 15 * 15, 10, bias=False, weight_quant=Bin)

    def forward(self, x):
        y = self.q(self.pool(self.bn0(self.conv0(self.inp(x)))))
        return self.fc(y.flatten(1))


class TwoScaleConcat(nn.Module):
    """A Concat of two branches quantized by two different quantizers: their scales differ, so the Concat
    cannot become an integer stream concatenation."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.inp = QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
        self.conv_a = QuantConv2d(3, ch, 3, bias=False, weight_quant=Bin)
        self.conv_b = QuantConv2d(3, ch, 3, bias=False, weight_quant=Bin)
        self.bn_a, self.bn_b = nn.BatchNorm2d(ch), nn.BatchNorm2d(ch)
        self.q_a = QuantIdentity(act_quant=Act4, return_quant_tensor=False)
        self.q_b = QuantIdentity(act_quant=Act4, return_quant_tensor=False)  # its own scale: the mistake
        self.sign = QuantIdentity(act_quant=SignedBinaryActPerTensorConst)
        self.conv = _conv(2 * ch, ch)
        self.bn = nn.BatchNorm2d(ch)
        self.pool = nn.MaxPool2d(2)
        self.fc = QuantLinear(ch * 14 * 14, 10, bias=False, weight_quant=Bin)

    def forward(self, x):
        x = self.inp(x)
        a = self.q_a(self.bn_a(self.conv_a(x)))
        b = self.q_b(self.bn_b(self.conv_b(x)))
        y = self.sign(self.bn(self.conv(torch.cat([a, b], dim=1))))
        return self.fc(self.pool(y).flatten(1))
