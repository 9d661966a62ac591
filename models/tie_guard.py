"""Keep every quantization boundary away from the integers the hardware can produce.

Each batch norm sees an integer accumulator `acc` on a known grid (binary convs: +-1 products;
edge convs: input scale x weight scale), so its output is `y = A * acc + B` per channel, and the
quantizer after it rounds `y / s` (or takes its sign). FINN turns this into integer thresholds on
`acc`, computed in float32. Where an exact boundary lies within float error of an integer `acc`,
PyTorch (float32 or float64) and FINN can break the tie differently: on random and trained nets
this flipped a logit on ~1 % of CIFAR-10 images (a flipped activation propagates).
`guard_rounding_ties` shifts each affected channel's batch-norm bias so that every boundary is at
least `margin` steps from an integer, and moves a boundary that sat on an integer to the side the
network itself (its batch norm and quantizer, in its own dtype) puts that integer on. So the
guarded network computes what the checkpoint computed, and PyTorch and the hardware then agree
exactly. Where a conv's float rounding gives one integer accumulator two answers in PyTorch (edge
convs on float grids: their sums can miss k * unit by a few ulps), the guard follows the answer for
the float nearest k * unit, which was the common one where this was seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from brevitas.nn import QuantConv2d, QuantHardTanh, QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant_tensor import QuantTensor
from torch import nn

from .export import INPUT_SHAPE
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


def _pytorch_above(bn: nn.Module, quant: nn.Module, shape: tuple, unit: float, bounds: np.ndarray,
                   ties: list[tuple[int, int, int]]) -> list[bool]:
    """For each (channel, boundary index, integer acc) in `ties`: does PyTorch, in the net's own dtype,
    put that accumulator value (k * unit, rounded to that dtype) above the boundary? Runs the real batch
    norm and quantizer on a batch of the traced input's shape, so the answer is what the network
    computes, rounding included."""
    channels, spatial = shape[1], tuple(shape[2:])
    slot = {}  # (channel, k) -> its place among the channel's values
    for c, _, k in ties:
        slot.setdefault((c, k), sum(1 for key in slot if key[0] == c))
    depth = max(slot.values()) + 1
    flat = torch.zeros(channels, depth, *spatial, dtype=torch.float64)
    for (c, k), i in slot.items():
        flat.view(channels, depth, -1)[c, i, 0] = k * unit
    with torch.no_grad():
        v = quant(bn(flat.transpose(0, 1).contiguous().to(bn.weight.dtype)))
    v = (v.value if isinstance(v, QuantTensor) else v).transpose(0, 1).reshape(channels, depth, -1)[..., 0]
    return [bool(v[c, slot[(c, k)]] > bounds[j]) for c, j, k in ties]


def _shift(acc_bounds: np.ndarray, margin: float, floor: float, tie_below: dict[int, bool]) -> tuple[float, float, bool]:
    """(eps, kept margin, PyTorch's sides kept): a shift of the boundaries (new = acc_bounds - eps) that
    puts each at least the kept margin from every integer without moving any integer to the other
    side. A boundary within `margin` of an integer k (a tie) goes to the side of k given by
    `tie_below[j]` (True: it ends below k); the others stay between the integers they lie between.
    eps is 0 without ties, else the middle of the room. Where ties and near-ties crowd, the margin is
    halved, down to `floor`; below that the smallest shift off the grid, whatever the ties' sides."""
    lo = np.floor(acc_bounds)
    for j, below in tie_below.items():
        k = np.rint(acc_bounds[j])
        lo[j] = k - 1 if below else k
    kept = margin
    while kept >= floor:
        lo_eps, hi_eps = float(np.max(acc_bounds - (lo + 1 - kept))), float(np.min(acc_bounds - (lo + kept)))
        if lo_eps <= hi_eps:
            return (0.0 if not tie_below else (lo_eps + hi_eps) / 2), kept, True
        kept /= 2
    frac = acc_bounds - np.floor(acc_bounds)
    for step in range(1, int(4 / margin)):
        for eps in (step * margin / 4, -step * margin / 4):
            f = (frac - eps) % 1.0
            if np.all((f >= margin) & (f <= 1.0 - margin)):
                return eps, margin, False
    raise RuntimeError(f"no tie-free shift found for accumulator boundaries {acc_bounds.tolist()}")


# Changing which side a boundary goes to changes exported weights: bump build_flows/identity.TIE_GUARD_VERSION.
FLOAT32_SLACK = 4e-7  # a few float32 roundings, relative to the threshold's magnitude
MIN_MARGIN = 1e-5  # accumulator steps: the least distance from an integer a crowded boundary may keep


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
    events, _ = _trace_units(net, torch.zeros(INPUT_SHAPE))
    changed, checked, skipped, kept, against = 0, 0, [], margin, 0
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
        live = [c for c in range(len(a)) if a[c] != 0 and math.isfinite(a[c])]
        checked += len(a)
        acc_bounds = {c: (bounds - b[c]) / a[c] for c in live}
        floors = {c: max(FLOAT32_SLACK * float(np.max(np.abs(acc_bounds[c]))), MIN_MARGIN) for c in live}
        margins = {c: max(margin, floors[c]) for c in live}
        ties = [(c, j, int(np.rint(t))) for c in live for j, t in enumerate(acc_bounds[c])
                if abs(t - np.rint(t)) < margins[c]]
        tie_below = {c: {} for c in live}
        if ties:  # a boundary goes below its integer when PyTorch puts that integer above it (slope > 0)
            above = _pytorch_above(mod, events[i + 1][0], tuple(events[i][1].shape), unit, bounds, ties)
            for (c, j, _), up in zip(ties, above):
                tie_below[c][j] = up == (a[c] > 0)
        for c in live:
            eps, margin_c, as_pytorch = _shift(acc_bounds[c], margins[c], floors[c], tie_below[c])
            kept = min(kept, margin_c)
            against += not as_pytorch
            if eps:
                new_beta[c] = beta[c] + eps * a[c]
                changed += 1
        with torch.no_grad():
            mod.bias.copy_(torch.from_numpy(new_beta).to(mod.bias.dtype))
    result = {"channels_checked": checked, "channels_shifted": changed, "margin": kept}
    if against:  # channels whose ties could not all keep PyTorch's side: those accumulator values differ
        result["channels_against_pytorch"] = against
    if skipped:  # only then: zoo builds keep the record they always had
        result["skipped"] = skipped
    return result
