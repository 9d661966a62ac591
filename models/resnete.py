"""Binary ResNetE for CIFAR-10 (Bethge et al., "Back to Simplicity"), built for FINN.

Every binary 3x3 conv has its own shortcut ("more shortcuts"); downsampling shortcuts are a
2x2 average pool then a multi-bit 1x1 conv, as in the paper. The residual stream is a few-bit
integer so the adds map onto FINN's integer ElementwiseAdd.
"""

from __future__ import annotations

from torch import nn

from . import quantizers as q


class BinaryBlock(nn.Module):
    """stream -> sign -> pad(-1) -> binary 3x3 conv -> BN -> stream quant, plus shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, stream: nn.Module):
        super().__init__()
        self.sign = q.binary_act()
        self.pad = q.BipolarPad(1)
        self.conv = q.binary_conv3x3(in_ch, out_ch, stride)
        self.bn = nn.BatchNorm2d(out_ch)
        self.stream = stream  # shared instance: branch, shortcut and sum share one scale
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                q.trunc_avg_pool(stride, q.STREAM_BITS, q.STREAM_BITS),
                q.edge_conv(in_ch, out_ch, 1),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x):
        branch = self.stream(self.bn(self.conv(self.pad(self.sign(x)))))
        short = x if self.shortcut is None else self.stream(self.shortcut(x))
        return self.stream(branch + short)


class ResNetE(nn.Module):
    """stem -> stages of binary blocks -> global average pool -> classifier.

    `widths[i]` channels and `blocks[i]` binary convs in stage i; every stage after the first
    starts with a stride-2 block.
    """

    def __init__(self, widths=(32, 64, 128), blocks=(4, 4, 4), classes: int = 10, pool_bits: int = 8):
        super().__init__()
        assert len(widths) == len(blocks)
        self.stream = q.stream_quant()
        self.stem = nn.Sequential(q.edge_conv(3, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]))
        layers, in_ch = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BinaryBlock(in_ch, width, stride, self.stream))
                in_ch = width
        self.blocks = nn.Sequential(*layers)
        side = 32 // 2 ** (len(widths) - 1)
        self.pool = q.trunc_avg_pool(side, q.STREAM_BITS, pool_bits)
        self.classifier = q.classifier(in_ch, classes)

    def forward(self, x):
        x = self.blocks(self.stream(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))
