"""CNV-W1A1, FINN's reference binary network for CIFAR-10, as the baseline.

Topology of finn-examples' CNV: 3x3 valid convs 64-64-pool-128-128-pool-256-256, then fully
connected 512-512-10, binary weights and activations except the 8-bit input. The classifier
is binary and bias-free, so the integer logits are exact.
"""

from __future__ import annotations

from torch import nn

from . import quantizers as q


class CNV(nn.Module):
    def __init__(self, convs=(64, 64, "P", 128, 128, "P", 256, 256), fcs=(512, 512), classes: int = 10):
        super().__init__()
        layers, ch, side = [], 3, 32
        for i, item in enumerate(convs):
            if item == "P":
                layers.append(nn.MaxPool2d(2))
                side //= 2
                continue
            # binary weights everywhere, the first conv included (it sees the 8-bit pixels)
            layers += [
                q.QuantConv2d(ch, item, 3, bias=False, weight_quant=q.BinaryWeight),
                nn.BatchNorm2d(item),
                q.binary_act(),
            ]
            ch, side = item, side - 2
        self.features = nn.Sequential(*layers)
        fc, width = [], ch * side * side
        for item in fcs:
            fc += [q.QuantLinear(width, item, bias=False, weight_quant=q.BinaryWeight),
                   nn.BatchNorm1d(item), q.binary_act()]
            width = item
        self.fc = nn.Sequential(*fc)
        self.classifier = q.classifier(width, classes, weight_quant=q.BinaryWeight)

    def forward(self, x):
        return self.classifier(self.fc(self.features(x).flatten(1)))
