"""The tie guard moves every quantization boundary off the integer accumulator grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnflow.models import tie_guard
from bnnflow.models.checkpoint import calibrate
from bnnflow.models.zoo import build_model


def _sites(net):
    """(bn, a, b, boundaries) per batch norm: y = a * acc + b, quantizer boundaries on y."""
    out = []
    events = tie_guard._trace(net.eval(), torch.zeros(1, 3, 32, 32))
    for i, (mod, inp, _) in enumerate(events):
        if not isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            continue
        if isinstance(inp, tie_guard.QuantTensor):
            unit = tie_guard._unit(inp)
        else:
            conv, conv_in, _ = events[i - 1]
            unit = tie_guard._unit(conv_in) * float(conv.quant_weight().scale.reshape(-1)[0])
        quant, _, q_out = events[i + 1]
        std = np.sqrt(mod.running_var.double().numpy() + mod.eps)
        gamma = mod.weight.detach().double().numpy()
        a = gamma / std * unit
        b = mod.bias.detach().double().numpy() - gamma * mod.running_mean.double().numpy() / std
        out.append((mod, a, b, tie_guard._boundaries(quant, q_out)))
    return out


def _min_distance(net) -> float:
    worst = np.inf
    for _, a, b, bounds in _sites(net):
        acc = (bounds[None, :] - b[:, None]) / a[:, None]
        worst = min(worst, float(np.abs(acc - np.rint(acc)).min()))
    return worst


@pytest.mark.parametrize("model", ["resnete", "densenet", "cnv"])
def test_boundaries_leave_the_integer_grid(model, cifar_test):
    torch.manual_seed(1)
    net = build_model(model, "tiny")
    x, _ = cifar_test
    calibrate(net, x[:256])
    # the worst case for exactness: move each channel's first boundary exactly onto an integer
    for mod, a, b, bounds in _sites(net):
        acc = (bounds[0] - b) / a
        shift = (acc - np.rint(acc)) * a  # y offset that puts the boundary on rint(acc)
        with torch.no_grad():
            mod.bias.add_(torch.from_numpy(shift).to(mod.bias.dtype))
    before = _min_distance(net)
    stats = tie_guard.guard_rounding_ties(net)
    assert before < 1e-4  # the construction produced (float32-exact) ties
    assert stats["channels_shifted"] > 0
    assert _min_distance(net) >= stats["margin"] * 0.999


def test_guard_leaves_ordinary_nets_alone(cifar_test):
    x, _ = cifar_test
    torch.manual_seed(0)
    net = build_model("cnv", "tiny")
    calibrate(net, x[:256])
    inp = torch.from_numpy(x[:128]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        y0 = net(inp)
        tie_guard.guard_rounding_ties(net)
        y1 = net(inp)
    assert torch.equal(y0.argmax(1), y1.argmax(1))
