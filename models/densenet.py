"""BinaryDenseNet for CIFAR-10 (Bethge et al., "BinaryDenseNet"), built for FINN.

Each dense layer appends `growth` binary-conv channels to its input; every tensor entering a
concatenation passes through the one shared stream quantizer. Transitions follow the paper's
order, MaxPool -> (BN) -> ReLU -> 1x1 conv, with the BN after the pool because FINN cannot
move a threshold past a MaxPool.
"""

from __future__ import annotations

import torch
from torch import nn

from . import quantizers as q


class DenseLayer(nn.Module):
    """stream -> sign -> pad(-1) -> binary 3x3 conv -> BN -> stream quant, concatenated."""

    def __init__(self, in_ch: int, growth: int, stream: nn.Module):
        super().__init__()
        self.sign = q.binary_act()
        self.pad = q.BipolarPad(1)
        self.conv = q.binary_conv3x3(in_ch, growth)
        self.bn = nn.BatchNorm2d(growth)
        self.stream = stream

    def forward(self, x):
        new = self.stream(self.bn(self.conv(self.pad(self.sign(x)))))
        return torch.cat([x, new], dim=1)


class Transition(nn.Module):
    """MaxPool 2x2 -> BN -> quantized ReLU -> multi-bit 1x1 conv -> BN -> stream quant."""

    def __init__(self, in_ch: int, out_ch: int, stream: nn.Module):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.bn_in = nn.BatchNorm2d(in_ch)
        self.relu = q.quant_relu()
        self.conv = q.edge_conv(in_ch, out_ch, 1)
        self.bn_out = nn.BatchNorm2d(out_ch)
        self.stream = stream

    def forward(self, x):
        return self.stream(self.bn_out(self.conv(self.relu(self.bn_in(self.pool(x))))))


class BinaryDenseNet(nn.Module):
    """stem -> dense blocks joined by transitions -> global average pool -> classifier."""

    def __init__(self, stem: int = 64, growth: int = 32, blocks=(4, 4, 4), reduction: float = 0.5,
                 classes: int = 10, pool_bits: int = 8):
        super().__init__()
        self.stream = q.stream_quant()
        self.stem = nn.Sequential(q.edge_conv(3, stem, 3, padding=1), nn.BatchNorm2d(stem))
        layers, ch = [], stem
        for i, count in enumerate(blocks):
            if i > 0:
                out = int(ch * reduction) // 8 * 8
                layers.append(Transition(ch, out, self.stream))
                ch = out
            for _ in range(count):
                layers.append(DenseLayer(ch, growth, self.stream))
                ch += growth
        self.features = nn.Sequential(*layers)
        side = 32 // 2 ** (len(blocks) - 1)
        # a quantizer between the last Concat and the pool: a Trunc right after a Concat
        # breaks FINN's datatype inference
        self.pool = q.trunc_avg_pool(side, q.STREAM_BITS, pool_bits)
        self.classifier = q.classifier(ch, classes)

    def forward(self, x):
        x = self.features(self.stream(self.stem(x)))
        return self.classifier(self.pool(self.stream(x)).flatten(1))
