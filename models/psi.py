"""Gradient descent on the PSI manifold (Yi, Meng, Chen, Ma: "Towards Accelerating Training of
Batch Normalization: A Manifold Perspective", UAI 2022).

A weight vector w that feeds a batch norm (or a sign) can be rescaled by any c > 0 without
changing the network, so the points c*w of a ray are one network: the "positively scale
invariant" (PSI) quotient manifold.  Plain SGD treats them differently (the gradient shrinks
as 1/|w|), so equivalent networks train differently.  The paper puts the metric
<xi, eta>_w = xi.eta / |w|^2 on every ray; the Riemannian gradient is then |w|^2 grad L(w), the
retraction is w + xi, and the update

    w <- w - lr * |w|^2 * grad L(w)

maps c*w to c times the update of w: every representative of a point follows the same path on
the manifold, and the angular step no longer depends on |w|.

How bnnflow applies it:

* Groups (one point of the manifold each): every output channel (row) of a binary conv/linear,
  since sign(c w) = sign(w) per row; and every whole multi-bit weight tensor that feeds a batch
  norm (stem, shortcut and transition convs), since their per-tensor quantiser scale makes
  only whole-tensor rescaling an exact symmetry.
* Metric scaled per group by its size n: <xi, eta>_w = n xi.eta / |w|^2, a constant factor per
  group that keeps the quotient geometry (it is still constant along every ray) but makes the
  step independent of fan-in, so one learning rate serves a 27-weight stem and a 4608-weight
  row: the update is SGD on the representative with RMS 1.
* The straight-through gradient of sign(w) does not scale like 1/|w|, so for binary layers
  the latent weight is first normalised per row, w / rms(w) (`ScaleInvariant`, a
  parametrization; with ReCU the standardisation already does this).  The loss is then exactly
  scale invariant in the latent weight and autograd returns its true gradient.
* Momentum as in SGD, with the buffer's radial component removed before each step (the
  horizontal projection: moving along the ray is no move on the manifold).  No weight decay
  on these groups: on the quotient it is the identity.
* All other parameters (batch-norm affine, multi-bit classifier, quantiser scales) use the
  default optimizer.
* Learning rate: the straight-through gradients that reach binary weights are small (at
  initialisation the angular step is ~1e-4..5e-3 rad per unit of lr, smaller in wide layers),
  so the PSI learning rate is of order 10-100; `bnnflow train`'s default of 30 gives angular
  steps comparable to Adam's at lr 2e-3 and was the best of 10/30/100 in a few-step sweep on
  the tiny variants.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .recu import binary_layers

EPS = 1e-12


class ScaleInvariant(nn.Module):
    """Parametrization w -> w / rms(w) per output channel: same signs, exactly scale invariant."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.flatten(1)
        rms = flat.pow(2).mean(dim=1, keepdim=True).add(EPS).sqrt()
        return (flat / rms).view_as(w)


def make_scale_invariant(net: nn.Module) -> nn.Module:
    """Normalise every binary layer's latent weight (those without a parametrization yet)."""
    for _, m in binary_layers(net):
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", ScaleInvariant())
    return net


def latent_weight(m: nn.Module) -> nn.Parameter:
    return m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight


def bn_fed_layers(net: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Convs/linears whose output goes straight into a batch norm, found by tracing one forward."""
    outputs, fed, keep = {}, [], []

    def after(module, inputs, output):
        outputs[id(output)] = module
        keep.append(output)  # keeps ids unique during the trace

    def before(module, inputs):
        src = outputs.get(id(inputs[0]))
        if src is not None and src not in fed:
            fed.append(src)

    hooks = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(after))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(before))
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(example)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return fed


def psi_param_groups(net: nn.Module, example: torch.Tensor) -> tuple[list[dict], set[int]]:
    """PSI groups for `net` and the ids of the parameters they cover.

    Binary layers: one point per row (`rows=True`); other BN-fed weights: one point per tensor.
    Call after `make_scale_invariant` / `apply_recu` so binary layers are parametrized.
    """
    binary = [m for _, m in binary_layers(net)]
    rows = [latent_weight(m) for m in binary]
    tensors = [latent_weight(m) for m in bn_fed_layers(net, example) if m not in binary]
    groups = []
    if rows:
        groups.append({"params": rows, "rows": True})
    if tensors:
        groups.append({"params": tensors, "rows": False})
    return groups, {id(p) for p in rows + tensors}


class PSI(torch.optim.Optimizer):
    """SGD with momentum on the PSI manifold; each param group says whether its points are rows or tensors."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, rows: bool = True):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"invalid PSI lr {lr} or momentum {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, rows=rows))

    @staticmethod
    def riemannian_grad(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(|w|^2 / n) times the horizontal part of g, per row of the N x n views w and g."""
        sq = w.pow(2).sum(dim=1, keepdim=True).clamp_min(EPS)
        horizontal = g - (g * w).sum(dim=1, keepdim=True) / sq * w
        return sq / w.shape[1] * horizontal

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                w = p.view(p.shape[0], -1) if group["rows"] else p.view(1, -1)
                g = p.grad.view_as(w)
                r = self.riemannian_grad(w, g)
                state = self.state[p]
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = r.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(r)
                    sq = w.pow(2).sum(dim=1, keepdim=True).clamp_min(EPS)
                    r = buf - (buf * w).sum(dim=1, keepdim=True) / sq * w
                w.sub_(r, alpha=group["lr"])  # retraction: w + xi
        return loss
