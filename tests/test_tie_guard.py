"""The tie guard moves every quantization boundary off the integer accumulator grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnflow.models import tie_guard
from bnnflow.models.checkpoint import calibrate
from bnnflow.models.zoo import build_model

pytestmark = pytest.mark.beside_image  # `make test`: in the Docker image's session (Makefile)


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
    """On an ordinary calibrated net the shift changes no logit at all (float64, every class), not just top-1."""
    x, _ = cifar_test
    torch.manual_seed(0)
    net = build_model("cnv", "tiny")
    calibrate(net, x[:256])
    inp = torch.from_numpy(x[:500]).permute(0, 3, 1, 2).double()
    with torch.no_grad():
        y0 = net.double()(inp)
        stats = tie_guard.guard_rounding_ties(net.float())
        y1 = net.double()(inp)
    assert stats["channels_shifted"] > 0  # it did move boundaries, just none that these images sit on
    assert len(torch.unique(y0.argmax(1))) >= 3
    assert torch.equal(y0, y1)


# ------------------------------------------------------------------ from the outside: exact ties, verify


def _bn_inputs(net, images: np.ndarray) -> list[np.ndarray]:
    """Every batch norm's input (the layer's accumulator, pixels x channels), by forward hooks."""
    bns = [m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    seen = {}
    hooks = [bn.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0].detach().double().numpy()))
             for k, bn in enumerate(bns)]
    with torch.no_grad():
        net.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    for h in hooks:
        h.remove()
    return bns, [np.moveaxis(seen[k], 1, -1).reshape(-1, seen[k].shape[1]) for k in range(len(bns))]


def _tied_cnv(images: np.ndarray, seed: int = 0):
    """CNV tiny (integer accumulators, every BN followed by a sign) with each channel's sign boundary
    put on that channel's most frequent accumulator value: mean = c + beta * std / gamma, exact in
    real arithmetic, off by the float32 rounding of the stored mean."""
    torch.manual_seed(seed)
    net = build_model("cnv", "tiny")
    calibrate(net, images[:256])
    bns, accs = _bn_inputs(net, images[256:512])
    rng = np.random.default_rng(seed)
    for bn, acc in zip(bns, accs):
        assert np.array_equal(acc, np.rint(acc))  # XNOR-popcount / binary-weight accumulators are integers
        acc = np.rint(acc).astype(np.int64)
        c = np.array([np.bincount(col - col.min()).argmax() + col.min() for col in acc.T], dtype=np.float64)
        std = np.sqrt(bn.running_var.double().numpy() + bn.eps)
        beta = rng.uniform(-0.5, 0.5, len(c))
        with torch.no_grad():
            bn.bias.copy_(torch.from_numpy(beta))
            bn.running_mean.copy_(torch.from_numpy(c + beta * std / bn.weight.detach().double().numpy()))
    return net.eval(), bns


def _sign_boundaries(bns) -> list[np.ndarray]:
    """Accumulator value where each channel's BN output crosses 0 (the sign quantizer's boundary)."""
    out = []
    for bn in bns:
        std = np.sqrt(bn.running_var.double().numpy() + bn.eps)
        gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
        out.append(bn.running_mean.double().numpy() - beta * std / gamma)
    return out


def _grid_distance(bns) -> float:
    return min(float(np.min(np.abs(b - np.rint(b)))) for b in _sign_boundaries(bns))


@pytest.mark.slow
@pytest.mark.build
def test_exact_ties_fail_verify_without_the_guard_and_pass_with_it(cifar_test, tmp_path, monkeypatch):
    """Builds a net whose boundaries sit on the integer grid (constructed here, not with the guard's helpers)
    twice: with the guard disabled verify must find images whose integer logits differ from Brevitas
    float64; with it every stage must equal Brevitas float64, logit for logit."""
    from rich.console import Console

    from bnnflow.build_flows import network
    from bnnflow.build_flows.build import BREVITAS_FILE, BuildRequest, run_build
    from bnnflow.build_flows.verify import FOLDED_STEP, verify_build
    from bnnflow.models.checkpoint import load_checkpoint, save_checkpoint

    x, y = cifar_test
    net, bns = _tied_cnv(x[:512])
    assert _grid_distance(bns) < 1e-4  # on the grid up to float32 rounding
    ckpt = save_checkpoint(tmp_path / "tied.pt", net, "cnv", "tiny")
    images = x[1000:1200]
    results = {}
    for guarded in (False, True):
        with monkeypatch.context() as mp:
            if not guarded:
                mp.setattr(network, "guard_rounding_ties", lambda n: {"channels_shifted": 0, "margin": 0.0})
            out = tmp_path / f"guard-{guarded}"
            run_build(BuildRequest("cnv", "tiny", checkpoint=ckpt, out=out, stop_after=FOLDED_STEP),
                      Console(quiet=True))
        built, _ = load_checkpoint(out / BREVITAS_FILE)
        bn_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
        distance = _grid_distance([m for m in built.modules() if isinstance(m, bn_types)])
        results[guarded] = verify_build(out, built, images, y, Console(quiet=True))
    unguarded = {s["stage"]: s["identical_integer_logits"] for s in results[False]["stages"]}
    assert not results[False]["all_identical"]
    assert unguarded["specialised + folded graph"] < len(images) // 2, unguarded
    assert results[True]["all_identical"]
    for stage in results[True]["stages"]:
        assert stage["identical_integer_logits"] == len(images), stage
        limit = 1e-9 if stage["stage"] == "Brevitas (PyTorch, float64)" else 0.05  # float32 stages: far from 0.5
        assert stage.get("max_distance_to_integer", 0.0) <= limit, stage
    assert distance >= 0.999e-3  # the guarded build's boundaries are at least the margin off the grid


def test_guard_resolves_each_tie_the_way_pytorch_does(cifar_test, monkeypatch):
    """On a net whose sign boundaries sit on the accumulator values images hit most, the guarded net
    computes exactly what the unguarded one computes in float32, logit for logit: each boundary moved
    off an integer goes to the side PyTorch put that integer on. Moved to the other side, many differ."""
    x, _ = cifar_test
    images = torch.from_numpy(x[1000:1200]).permute(0, 3, 1, 2).float()
    outputs = {}
    for sides in ("pytorch", "flipped"):
        net, _ = _tied_cnv(x[:512])
        with torch.no_grad():
            before = net(images)
        if sides == "flipped":
            asked = tie_guard._pytorch_above
            monkeypatch.setattr(tie_guard, "_pytorch_above", lambda *a: [not up for up in asked(*a)])
        stats = tie_guard.guard_rounding_ties(net)
        with torch.no_grad():
            outputs[sides] = (before, net(images), stats)
    before, after, stats = outputs["pytorch"]
    assert stats["channels_shifted"] > 0
    assert torch.equal(before, after)
    before, after, _ = outputs["flipped"]
    assert int((~(before == after).all(1)).sum()) > len(images) // 4
