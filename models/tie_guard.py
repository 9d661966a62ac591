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
from brevitas.nn import QuantConv2d, QuantHardTanh, QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant_tensor import QuantTensor
from torch import nn

from .quantizers import BinaryAct


def _unit(t, grids: dict | None = None, last: float | None = None) -> float | None:
    """Grid step of a tensor entering a conv/BN: a QuantTensor's scale, else the grid of the quantizer that
    made it (or, behind a pool or a reshape, of the last quantizer run), else 1 (raw pixels)."""
    if isinstance(t, QuantTensor):
        return _scalar(t.scale)
    if grids and id(t) in grids:
        return grids[id(t)][0]
    return 1.0 if last is None else last


def _scalar(v) -> float | None:
    v = v.detach().reshape(-1)
    return float(v[0]) if v.numel() == 1 or bool(torch.all(v == v[0])) else None  # per-channel: unknown


def _act_grid(mod, inp, out) -> tuple | None:
    """(scale, bit width, signed, binary) of an activation quantizer's output, QuantTensor or not:
    a quantizer that returns plain tensors is asked again through its proxy."""
    q = out
    if not isinstance(q, QuantTensor):
        try:
            q = mod.act_quant(inp)
        except Exception:  # a proxy this version of Brevitas calls differently
            return None
        if not isinstance(q, QuantTensor):
            return None
    scale = _scalar(q.scale)
    impl = getattr(getattr(mod.act_quant, "fused_activation_quant_proxy", None), "tensor_quant", None)
    binary = "Binary" in type(impl).__name__  # sign(): one boundary at 0 whatever the scale
    return None if scale is None else (scale, int(q.bit_width), bool(q.signed), binary)


def _boundaries(module, out, inp=None) -> np.ndarray | None:
    """The quantizer's decision boundaries in its input's units (None: not a quantizer we can read)."""
    if isinstance(module, QuantIdentity) and issubclass(module.act_quant.quant_injector, BinaryAct):
        return np.array([0.0])
    grid = _act_grid(module, inp, out) if isinstance(module, ACTS) else None
    if grid is None:
        return None
    s, bits, signed, binary = grid
    if binary:
        return np.array([0.0])
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return s * (np.arange(lo, hi) + 0.5)


ACTS = (QuantIdentity, QuantReLU, QuantHardTanh)


def _trace(net: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, object, object]]:
    """Calls of convs, BNs and quantizers in execution order, with their inputs and outputs."""
    return [e[:3] for e in _trace_units(net, x)[0]]


def _trace_units(net: nn.Module, x: torch.Tensor) -> tuple[list, dict]:
    """_trace's calls with the grid step of each input as a fourth entry (None: per-channel), and the
    grid of each quantizer output by tensor id."""
    kinds = (QuantConv2d, QuantLinear, nn.BatchNorm1d, nn.BatchNorm2d) + ACTS
    events, hooks, grids, last = [], [], {}, [None]

    def hook(mod, inp, out):
        events.append((mod, inp[0], out, _unit(inp[0], grids, last[0])))
        if isinstance(mod, ACTS):
            grid = _act_grid(mod, inp[0], out)
            if grid is not None:
                grids[id(out)] = grid
                last[0] = grid[0]
        elif hasattr(mod, "grid_step"):  # bnnflow's own pixel scaling of a 0..1 network
            grids[id(out)] = (mod.grid_step,)
            last[0] = mod.grid_step

    for m in net.modules():
        if isinstance(m, kinds) or hasattr(m, "grid_step"):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return [e for e in events if not hasattr(e[0], "grid_step")], grids


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


def _site(events: list, i: int) -> tuple[float, np.ndarray] | str:
    """(accumulator step, quantizer boundaries) of the BN at events[i], or why they cannot be read."""
    mod, inp, _, in_unit = events[i]
    if mod.weight is None or mod.bias is None or mod.running_mean is None:
        return "a batch norm without affine parameters or running statistics"
    if isinstance(inp, QuantTensor):  # e.g. a BN right after a max pool of the stream
        unit = in_unit
    else:
        conv, _, _, conv_unit = events[i - 1] if i else (None, None, None, None)
        if not isinstance(conv, (QuantConv2d, QuantLinear)):
            return f"a batch norm after a {type(conv).__name__}, not right after a quantized conv or linear layer"
        w_scale = _scalar(conv.quant_weight().scale)
        if w_scale is None or conv_unit is None:
            return "a layer with per-channel weight or input scales"
        unit = conv_unit * w_scale
    quant, q_in, q_out, _ = events[i + 1] if i + 1 < len(events) else (None, None, None, None)
    bounds = _boundaries(quant, q_out, q_in) if isinstance(quant, ACTS) else None
    if bounds is None:
        return "a batch norm not followed by an activation quantizer whose scale Brevitas reports"
    return unit, bounds


def guard_rounding_ties(net: nn.Module, margin: float = 1e-3) -> dict:
    """Shift batch-norm biases (in place, eval mode) so no integer accumulator meets a boundary.

    A boundary must be `margin` accumulator steps from every integer, more for large
    accumulators (FINN computes thresholds in float32: error ~ FLOAT32_SLACK * |threshold|).
    A batch norm whose grid cannot be read is left as it is and listed under "skipped".
    """
    net.eval()
    events, _ = _trace_units(net, torch.zeros(1, 3, 32, 32))
    changed, checked, skipped = 0, 0, []
    names = {m: n for n, m in net.named_modules()}
    for i, (mod, _, _, _) in enumerate(events):
        if not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        site = _site(events, i)
        if isinstance(site, str):
            skipped.append({"module": names.get(mod, "?"), "why": site})
            continue
        unit, bounds = site
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
    result = {"channels_checked": checked, "channels_shifted": changed, "margin": margin}
    if skipped:  # only then: zoo builds keep the record they always had
        result["skipped"] = skipped
    return result
