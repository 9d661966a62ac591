"""Keep every quantization boundary away from the integers the hardware can produce.

Each batch norm sees an integer accumulator `acc` on a known grid (binary convs: +-1 products;
edge convs: input scale x weight scale), so its output is `y = A * acc + B` per channel, and the
quantizer after it rounds `y / s` (or takes its sign). FINN turns this into integer thresholds on
`acc`, computed in float32. Where an exact boundary lies within float error of an integer `acc`,
PyTorch (float32 or float64) and FINN can break the tie differently: on random and trained nets
this flipped a logit on ~1 % of CIFAR-10 images (a flipped activation propagates). `guard_rounding_ties` shifts each affected
channel's batch-norm bias by a fraction of one accumulator step so that every boundary is at
least `margin` steps from an integer. Only activations that sat on such a near-tie can change;
afterwards PyTorch and the hardware agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant_tensor import QuantTensor
from torch import nn

from .quantizers import BinaryAct


def _unit(t) -> float:
    """Grid step of a tensor entering a conv/BN: a QuantTensor's scale, else 1 (pixels, +-1)."""
    return float(t.scale.detach().reshape(-1)[0]) if isinstance(t, QuantTensor) else 1.0


def _boundaries(module, out) -> np.ndarray:
    """The quantizer's decision boundaries in its input's units."""
    if isinstance(module, QuantIdentity) and issubclass(module.act_quant.quant_injector, BinaryAct):
        return np.array([0.0])
    if not isinstance(out, QuantTensor):
        raise TypeError(f"{type(module).__name__} must return a QuantTensor for the tie guard")
    s = float(out.scale.detach().reshape(-1)[0])
    bits = int(out.bit_width)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if bool(out.signed) else (0, 2 ** bits - 1)
    return s * (np.arange(lo, hi) + 0.5)


def _trace(net: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, object, object]]:
    """Calls of convs, BNs and quantizers in execution order, with their inputs and outputs."""
    kinds = (QuantConv2d, QuantLinear, nn.BatchNorm1d, nn.BatchNorm2d, QuantIdentity, QuantReLU)
    events, hooks = [], []
    for m in net.modules():
        if isinstance(m, kinds):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: events.append((mod, inp[0], out))))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return events


def _shift(acc_bounds: np.ndarray, margin: float) -> float:
    """Smallest |eps| so that every acc_bounds - eps is at least `margin` from an integer."""
    frac = acc_bounds - np.floor(acc_bounds)
    for step in range(0, int(4 / margin)):
        for eps in ((step * margin / 4), -(step * margin / 4)):
            f = (frac - eps) % 1.0
            if np.all((f >= margin) & (f <= 1.0 - margin)):
                return eps
    raise RuntimeError("no tie-free shift found")


FLOAT32_SLACK = 4e-7  # a few float32 roundings, relative to the threshold's magnitude


def guard_rounding_ties(net: nn.Module, margin: float = 1e-3) -> dict:
    """Shift batch-norm biases (in place, eval mode) so no integer accumulator meets a boundary.

    A boundary must be `margin` accumulator steps from every integer, more for large
    accumulators (FINN computes thresholds in float32: error ~ FLOAT32_SLACK * |threshold|).
    """
    net.eval()
    events = _trace(net, torch.zeros(1, 3, 32, 32))
    changed, checked = 0, 0
    for i, (mod, inp, out) in enumerate(events):
        if not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        if isinstance(inp, QuantTensor):  # e.g. a BN right after a max pool of the stream
            unit = _unit(inp)
        else:
            conv, conv_in, _ = events[i - 1]
            assert isinstance(conv, (QuantConv2d, QuantLinear)), f"BN after {type(conv).__name__}"
            w_scale = conv.quant_weight().scale.detach().reshape(-1)
            assert w_scale.numel() == 1, "per-tensor weight scales only"
            unit = _unit(conv_in) * float(w_scale[0])
        quant, _, q_out = events[i + 1]
        bounds = _boundaries(quant, q_out)
        gamma = mod.weight.detach().double().numpy()
        beta = mod.bias.detach().double().numpy()
        mu = mod.running_mean.detach().double().numpy()
        std = np.sqrt(mod.running_var.detach().double().numpy() + mod.eps)
        a = gamma / std * unit  # y = a * acc + b
        b = beta - gamma * mu / std
        new_beta = beta.copy()
        for c in range(len(a)):
            checked += 1
            if a[c] == 0 or not math.isfinite(a[c]):
                continue
            acc_bounds = (bounds - b[c]) / a[c]
            eps = _shift(acc_bounds, max(margin, FLOAT32_SLACK * float(np.max(np.abs(acc_bounds)))))
            if eps:
                new_beta[c] = beta[c] + eps * a[c]
                changed += 1
        with torch.no_grad():
            mod.bias.copy_(torch.from_numpy(new_beta).to(mod.bias.dtype))
    return {"channels_checked": checked, "channels_shifted": changed, "margin": margin}
