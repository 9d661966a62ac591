"""ReCU: rectified clamp of the latent weights of binary layers (Xu et al., ICCV 2021).

"ReCU: Reviving the Dead Weights in Binary Neural Networks" observes that latent weights far
from zero ("dead weights") barely ever change sign, which slows training and wastes capacity.
Before the sign, each binary layer's latent weight goes through

1. weight standardisation per output channel, w_hat = (w - mean) / std: maximises the entropy
   of the binary weights (balanced signs) and makes the layer invariant to the latent scale;
2. the rectified clamp ReCU(w_hat) = max(min(w_hat, Q(tau)), Q(1 - tau)), where Q is the
   quantile function of the channel's weights.  As in the paper, the weights are modelled as
   Laplace(0, b) with the maximum-likelihood b = mean|w_hat|, so Q(tau) = -b ln(2 - 2 tau)
   and Q(1 - tau) = -Q(tau): a fraction 2 (1 - tau) of each channel is clamped.  Clamping
   pulls the outliers back to the edge of the bulk of the distribution, which lowers the
   quantisation error E(w - alpha sign w)^2 / E w^2 (the paper's Theorem 1) and lets them
   flip again; the gradient reaches them through the standardisation statistics.
3. tau grows over training on the paper's exponential schedule from tau_start to tau_end
   (0.85 -> 0.99): tau(t) = A e^(t/T) + B with tau(0) = tau_start and tau(T) = tau_end.
   A small tau early revives many weights; a tau near 1 late keeps the information
   (entropy) of the distribution's tails.

The clamp is a parametrization of the layer's `weight` (torch.nn.utils.parametrize), so the
Brevitas quantizer signs the rectified weight.  The clamp never changes a sign, so the binary
weights the hardware stores are sign(w - mean); `baked_state_dict` writes the rectified
weights as plain `weight` tensors, which makes checkpoints load into the unmodified model.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

TAU_START = 0.85
TAU_END = 0.99
EPS = 1e-5


def tau_schedule(progress: float, start: float = TAU_START, end: float = TAU_END) -> float:
    """The paper's exponential schedule: tau at `progress` in [0, 1] of training (epoch / epochs)."""
    a = (end - start) / (math.e - 1.0)
    return a * math.exp(min(max(progress, 0.0), 1.0)) + start - a


def laplace_quantile(tau: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Q(tau) of Laplace(0, b) for tau >= 0.5. tau is a tensor (ReCU's buffer) so that it stays in the graph:
    torch.compile breaks its graph at a tensor -> float, and the broken graph failed to compile ReCU runs.
    The log is taken in double, as math.log took it before, then in b's dtype: the same values."""
    return -b * torch.log(2.0 - 2.0 * tau.double()).to(b.dtype)


def standardize(w: torch.Tensor) -> torch.Tensor:
    """(w - mean) / std over each output channel (row of the flattened weight)."""
    flat = w.flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    std = torch.sqrt(centred.var(dim=1, unbiased=False, keepdim=True) + EPS)
    return (centred / std).view_as(w)


class ReCU(nn.Module):
    """Parametrization: standardise per output channel, then clamp to the channel's [Q(1-tau), Q(tau)]."""

    def __init__(self, tau: float = TAU_START):
        super().__init__()
        self.register_buffer("tau", torch.tensor(float(tau)))

    def bounds(self, z: torch.Tensor) -> torch.Tensor:
        """Per-channel Q(tau) of standardised weights z (N x 1), treated as a constant as in the paper."""
        b = z.detach().flatten(1).abs().mean(dim=1, keepdim=True)
        return laplace_quantile(self.tau, b)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        z = standardize(w)
        q = self.bounds(z)
        flat = z.flatten(1)
        return torch.clamp(flat, -q, q).view_as(w)


def binary_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv/linear whose weights are binary (feed a sign): the layers ReCU and PSI act on."""
    from brevitas.nn import QuantConv2d, QuantLinear

    out = []
    for name, m in net.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant.is_quant_enabled:
            if int(m.weight_quant.bit_width().item()) == 1:
                out.append((name, m))
    return out


def apply_recu(net: nn.Module, tau: float = TAU_START) -> nn.Module:
    for _, m in binary_layers(net):
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", ReCU(tau))
    return net


def set_tau(net: nn.Module, tau: float) -> None:
    for m in net.modules():
        if isinstance(m, ReCU):
            m.tau.fill_(tau)


def current_tau(net: nn.Module) -> float | None:
    for m in net.modules():
        if isinstance(m, ReCU):
            return float(m.tau)
    return None


def baked_state_dict(net: nn.Module) -> dict:
    """state_dict with every parametrized weight replaced by its computed value under its plain name.

    Works for any parametrization (ReCU, PSI's scale normalisation); the result loads into the
    unmodified model with strict=True.
    """
    computed = {}
    for name, m in net.named_modules():
        if parametrize.is_parametrized(m):
            for pname in m.parametrizations:
                with torch.no_grad():
                    computed[f"{name}.{pname}.original"] = (f"{name}.{pname}", getattr(m, pname).detach().clone())
    out = {}
    for key, value in net.state_dict().items():
        prefix, sep, rest = key.partition(".parametrizations.")
        if not sep:
            out[key] = value
        elif rest.endswith(".original"):
            plain, tensor = computed[f"{prefix}.{rest}"]
            out[plain] = tensor
    return out


def relative_quantisation_error(w: torch.Tensor) -> torch.Tensor:
    """Per channel E(w - alpha sign w)^2 / E w^2 with the optimal alpha = E|w|, i.e. 1 - (E|w|)^2 / E w^2."""
    flat = w.flatten(1)
    return 1.0 - flat.abs().mean(1) ** 2 / flat.pow(2).mean(1)
