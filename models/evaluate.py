"""Test top-1 of a Brevitas network on CIFAR-10 images (the model side of `bnnflow evaluate`)."""

from __future__ import annotations

EVAL_BATCH = 500


def brevitas_top1(net, x_uint8, y, device, batch: int = EVAL_BATCH):
    """(top-1, float logits N x 10 as numpy) of `net` on uint8 N x 32 x 32 x 3 images."""
    import numpy as np
    import torch

    from .data import to_model_input

    net = net.to(device).eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x_uint8), batch):
            outs.append(net(to_model_input(x_uint8[i:i + batch]).to(device)).float().cpu().numpy())
    logits = np.concatenate(outs)
    return float(np.mean(logits.argmax(1) == y)), logits
