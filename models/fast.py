"""A plain-PyTorch twin of a bnnflow Brevitas model: the same forward, fast to train on a CPU.

Brevitas spends most of a CPU training step in small quantiser ops that nothing fuses, and
`torch.compile` cannot trace it.  The twin re-writes only the forward with plain ops that
compile, and shares every Parameter, BatchNorm and scale with the Brevitas model: the
optimiser, checkpoints and export all see the one Brevitas model, so what is exported is
exactly what was trained.  In fp32 the twin's forward and gradients equal Brevitas'
(tests/test_fast.py); bf16 autocast is for training steps only, never for evaluation.

Semantics matched (Brevitas 0.13, checked numerically in the tests):
- binary weights: latent weight clamped in place to [-1, 1] before each forward, sign with
  0 -> +1, identity straight-through gradient;
- binary activations: clamp to [-1, 1], sign; gradient passes where |x| <= 1;
- multi-bit weights (narrow, per tensor): scale = max|w| / (2^(b-1) - 1), round half-even,
  gradient through the max;
- activation scales learnt from runtime statistics: scale = |value| / 2^(b-1) (signed) or
  / (2^b - 1) (unsigned), clamp of the rounded value stops the gradient (LSQ-style scale
  gradient falls out of autograd).  The statistics phase itself runs in Brevitas
  (`stats_pending`), the twin starts after it;
- truncating average pool: round(sum / s), floor-shift to the output bits, scale kept.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU, TruncAvgPool2d
from torch import nn
from torch.nn.utils import parametrize

from . import quantizers as q


# Without autograd (evaluation) the straight-through form is skipped: its add and sub were a
# quarter of an eval forward, and x + (round(x) - x) equals round(x) anyway (tests/test_fast.py).
def round_ste(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return torch.floor(x)
    return x + (torch.floor(x) - x).detach()


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return (x >= 0).to(x.dtype).mul_(2.0).sub_(1.0)  # 0 -> +1; 1.6x faster than where() in eager
    return x + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - x).detach()


def _injector(proxy) -> type:
    return proxy.quant_injector


def _runtime_scale(module: nn.Module) -> ParameterFromRuntimeStatsScaling:
    found = [m for m in module.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
    if len(found) != 1:
        raise TypeError(f"{type(module).__name__}: expected one runtime-statistics scale, found {len(found)}")
    return found[0]


def stats_pending(net: nn.Module) -> bool:
    """True while a Brevitas activation scale still collects statistics (train it in Brevitas until then)."""
    return any(m.counter <= m.collect_stats_steps for m in net.modules()
               if isinstance(m, ParameterFromRuntimeStatsScaling))


def binary_latent_weights(net: nn.Module) -> list[nn.Parameter]:
    """Binary layers' weight Parameters that Brevitas clamps in place.  A parametrized weight (ReCU,
    PSI) is computed afresh each forward, so its in-place clamp changes nothing and it is skipped."""
    return [m.weight for m in net.modules()
            if isinstance(m, (QuantConv2d, QuantLinear)) and issubclass(_injector(m.weight_quant), q.BinaryWeight)
            and not parametrize.is_parametrized(m, "weight")]


@torch.no_grad()
def clamp_binary_weights(weights: list[nn.Parameter]) -> None:
    """What Brevitas' binary weight quantiser does in place at every forward."""
    for w in weights:
        w.clamp_(-1.0, 1.0)


class WeightLayer(nn.Module):
    """QuantConv2d / QuantLinear: binary or narrow multi-bit per-tensor weights, no bias."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        if layer.bias is not None:
            raise TypeError("the twin covers bias-free quantised layers only")
        # read layer.weight at every forward (a parametrization computes it); kept out of the
        # module tree so the Parameter is not registered twice
        self._layer = [layer]
        self.conv = isinstance(layer, QuantConv2d)
        if self.conv:
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups
        inj = _injector(layer.weight_quant)
        self.binary = issubclass(inj, q.BinaryWeight)
        self.real = False  # two-stage training's first stage: the clamped latent weight, not its sign
        if not self.binary:
            if not (getattr(inj, "narrow_range", False) and inj.bit_width >= 2):
                raise TypeError(f"unsupported weight quantiser {inj.__name__}")
            self.levels = 2 ** (inj.bit_width - 1) - 1

    def quant_weight(self) -> torch.Tensor:
        w = self._layer[0].weight
        if self.binary:
            return w if self.real else sign_ste(w)  # clamped in place before the step (clamp_binary_weights)
        scale = w.abs().max() / self.levels
        return round_ste(w / scale) * scale  # |w / scale| <= levels: Brevitas' clamp (an STE) never acts

    def forward(self, x):
        w = self.quant_weight()
        if self.conv:
            return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w)


class BinaryAct(nn.Module):
    def forward(self, x):
        if not torch.is_grad_enabled():
            return sign_ste(x)  # the clamp only masks the gradient: it keeps every sign
        return sign_ste(torch.clamp(x, -1.0, 1.0))


class IntAct(nn.Module):
    """Signed (QuantIdentity) or unsigned (QuantReLU) per-tensor integer activation, learnt scale."""

    def __init__(self, module: nn.Module, relu: bool):
        super().__init__()
        inj = _injector(module.act_quant)
        bits, signed, narrow = inj.bit_width, inj.signed, getattr(inj, "narrow_range", False)
        self.relu = relu
        self.scaling = _runtime_scale(module)  # registered: the twin's params include `value`
        if signed:
            self.lo, self.hi, self.threshold = -2 ** (bits - 1) + int(narrow), 2 ** (bits - 1) - 1, 2 ** (bits - 1)
        else:
            self.lo, self.hi, self.threshold = 0, 2 ** bits - 1, 2 ** bits - 1

    def forward(self, x):
        if self.relu:
            x = F.relu(x)
        scale = self.scaling.value.abs() / self.threshold
        if not torch.is_grad_enabled():  # same ops in place: fewer passes over memory
            return torch.round(x / scale).clamp_(self.lo, self.hi).mul_(scale)
        return torch.clamp(round_ste(x / scale), self.lo, self.hi) * scale


class TruncPool(nn.Module):
    """TruncAvgPool2d with FloorTrunc on the stream grid of `stream` (its learnt scale)."""

    def __init__(self, pool: TruncAvgPool2d, stream: IntAct):
        super().__init__()
        k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
        self.kernel = k
        self.stream = stream
        in_bits = int(math.log2(stream.threshold)) + 1
        acc_bits = in_bits + 2 * int(math.log2(k))
        out_bits = _injector(pool.trunc_quant).bit_width
        self.shift = 2.0 ** (acc_bits - out_bits)
        self.lo, self.hi = -2 ** (out_bits - 1), 2 ** (out_bits - 1) - 1

    def forward(self, x):
        s = self.stream.scaling.value.abs() / self.stream.threshold / self.kernel ** 2
        r = round_ste(F.avg_pool2d(x, self.kernel, self.kernel) / s)
        f = torch.clamp(floor_ste(r / self.shift), self.lo, self.hi)
        return f * (s * self.shift)


def set_real_weights(twin: nn.Module, real: bool) -> None:
    """Binary layers compute with their real-valued (clamped latent) weights, or binarise them again."""
    for m in twin.modules():
        if isinstance(m, WeightLayer) and m.binary:
            m.real = real


def make_twin(net: nn.Module) -> nn.Module:
    """The twin of a bnnflow Brevitas model (build it after loading a state_dict: Brevitas rebuilds
    its scale Parameters on load)."""
    memo: dict[int, nn.Module] = {}
    streams = [m for m in net.modules() if isinstance(m, QuantIdentity)
               and not issubclass(_injector(m.act_quant), q.BinaryAct)]
    stream = streams[0] if streams else None

    def convert(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        if isinstance(m, (QuantConv2d, QuantLinear)):
            new = WeightLayer(m)
        elif isinstance(m, QuantReLU):
            new = IntAct(m, relu=True)
        elif isinstance(m, QuantIdentity):
            new = BinaryAct() if issubclass(_injector(m.act_quant), q.BinaryAct) else IntAct(m, relu=False)
        elif isinstance(m, TruncAvgPool2d):
            if stream is None:
                raise TypeError("a truncating pool needs the model's stream quantiser")
            new = TruncPool(m, convert(stream))
        elif type(m).__module__.startswith("brevitas"):
            raise TypeError(f"the fast twin does not know Brevitas' {type(m).__name__}")
        elif not m._modules:
            new = m  # plain torch leaf (BatchNorm, MaxPool, BipolarPad): shared as it is
        else:
            new = copy.copy(m)  # container: same forward code, converted children
            new._modules = {}
            memo[id(m)] = new
            for name, child in m._modules.items():
                new._modules[name] = convert(child) if child is not None else None
            return new
        memo[id(m)] = new
        return new

    return convert(net)
