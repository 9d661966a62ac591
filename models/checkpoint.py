"""Checkpoints: what the hardware needs (weights, BN statistics, quantizer scales) plus a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnnflow.atomic import atomic_path
from bnnflow.digest import file_sha256  # noqa: F401  (re-exported: callers name it from here)
from bnnflow.errors import BnnflowError
from bnnflow.model_ref import USER_KEY

from .packing import load_packed, save_packed
from .zoo import build_model

FORMAT = "bnnflow-checkpoint-1"
# trained weights shipped with the repo, one per model/variant; commands use them by default
COMMITTED_DIR = Path(__file__).resolve().parent / "checkpoints"


def committed_checkpoint(model: str, variant: str) -> Path | None:
    path = COMMITTED_DIR / f"{model}-{variant}.pt"
    return path if path.is_file() else None


def recorded_top1(path: str | Path) -> float | None:
    """The CIFAR-10 test top-1 `bnnflow train` recorded in a checkpoint's manifest, if any."""
    acc = read_checkpoint(path).get("meta", {}).get("test_top1")
    return float(acc) if acc is not None else None


def save_checkpoint(path: str | Path, net: nn.Module, model: str, variant: str, meta: dict | None = None,
                    extra: dict | None = None, packed: bool = False) -> Path:
    """Write atomically; `extra` (e.g. optimizer state for --resume) is stored beside the weights.
    `packed`: the lossless compact format of packing.py (last.pt) instead of a plain torch.save file."""
    payload = {"format": FORMAT, "model": model, "variant": variant,
               "state_dict": net.state_dict(), "meta": meta or {}}
    if extra:
        payload.update(extra)
    if packed:
        save_packed(payload, path)
        return Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BnnflowError(f"Checkpoint {path} does not exist: pass the .pt file written by 'bnnflow train'.")
    try:
        payload = load_packed(path)  # last.pt is packed, best.pt a plain torch.save file
    except Exception as exc:  # torch and zlib raise many types for a damaged file
        raise BnnflowError(f"Checkpoint {path} is corrupt or not a PyTorch file ({type(exc).__name__}): "
                           "re-create it with 'bnnflow train'.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BnnflowError(f"Checkpoint {path} is not a bnnflow checkpoint (expected format {FORMAT}).")
    return payload


def refuse_latent_weights(payload: dict, path: str | Path) -> None:
    """A ReCU/PSI run's last.pt holds the latent weights its training parametrizes, not the network's."""
    if any(".parametrizations." in k for k in payload["state_dict"]):
        raise BnnflowError(f"{path} holds ReCU/PSI latent training weights (a last.pt): use the best.pt of the "
                           "same run, which holds the weights the hardware uses.")


def load_checkpoint(path: str | Path, model: str | None = None, variant: str | None = None):
    """Return (net, payload); the model name and variant must match when given."""
    payload = read_checkpoint(path)
    if model is not None and payload["model"] != model or variant is not None and payload["variant"] != variant:
        raise BnnflowError(
            f"Checkpoint {path} holds {payload['model']}/{payload['variant']}, not {model}/{variant}: "
            f"name its model and variant ('{payload['model']} --variant {payload['variant']}') or pass another "
            "checkpoint.")
    if isinstance(payload.get(USER_KEY), dict):  # a user's network: rebuilt from its reference
        from .user_model import network_of

        net = network_of(payload[USER_KEY])
    else:
        net = build_model(payload["model"], payload["variant"])
    try:
        missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False)
        # an activation scale still collecting statistics (never trained) has no value yet
        missing = [k for k in missing if not k.endswith("scaling_impl.value")]
        if missing or unexpected:
            raise KeyError(missing or unexpected)
    except (RuntimeError, KeyError, TypeError, AttributeError):
        raise BnnflowError(
            f"Checkpoint {path} does not fit {payload['model']}/{payload['variant']} "
            "(tensor names or shapes differ): it was made for another variant or version.") from None
    return net.eval(), payload


def calibrate(net: nn.Module, images: np.ndarray, batches: int = 4, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Give an untrained net realistic BN statistics and activation scales from real images.

    Random-weight builds are then non-degenerate (thresholds inside the value range), which
    makes verification meaningful before any training. The running statistics are the plain
    average over the batches (momentum None): with the default momentum, 4 batches leave them
    a third of the way from their initial 0/1, and BinaryDenseNet then predicted 2 classes. Changing this changes
    every random-weight build: bump build_flows.identity.CALIBRATION_VERSION.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            idx = torch.randint(0, len(x), (batch_size,), generator=g)
            net(x[idx])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return net.eval()
