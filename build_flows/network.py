"""The Brevitas network a build starts from: a checkpoint, or random weights calibrated on CIFAR-10.

Either way the network is tie-guarded (models/tie_guard.py) before export, and the origin of
its weights is returned for build_state.json.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console

from bnnflow.digest import file_sha256
from bnnflow.errors import BnnflowError
from bnnflow.images import IMAGE_SHAPE
from bnnflow.models.checkpoint import calibrate, load_checkpoint
from bnnflow.models.tie_guard import guard_rounding_ties
from bnnflow.models.zoo import build_model

from .identity import BuildRequest

CALIBRATION_FALLBACK_IMAGES = 256  # random pixels when no CIFAR-10 copy is found


def load_request_checkpoint(req: BuildRequest) -> tuple:
    """load_checkpoint, with a payload of the right format but damaged fields also one sentence."""
    try:
        net, payload = load_checkpoint(req.checkpoint, req.model, req.variant)
        if not isinstance(payload.get("meta", {}), dict):
            raise TypeError("meta")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BnnflowError(f"Checkpoint {req.checkpoint} is damaged (its {exc} entry is missing or of the wrong "
                           "type): re-create it with 'bnnflow train'.") from None
    return net, payload


def prepare_network(req: BuildRequest, console: Console, loaded: tuple | None = None):
    """The Brevitas network to build (checkpoint, else calibrated random weights), tie-guarded.
    `loaded`: the (net, payload) of req.checkpoint when the caller has loaded it already."""
    net, origin = _load_or_init(req, console, loaded)
    origin["tie_guard"] = guard_rounding_ties(net)
    return net, origin


def _load_or_init(req: BuildRequest, console: Console, loaded: tuple | None = None):
    if req.checkpoint is not None:
        net, payload = loaded or load_request_checkpoint(req)
        return net, {"checkpoint": str(req.checkpoint), "checkpoint_sha256": file_sha256(req.checkpoint),
                     "accuracy": payload.get("meta", {}).get("test_top1")}
    import torch

    from bnnflow.models.data import load_cifar10

    torch.manual_seed(req.seed)
    net = build_model(req.model, req.variant)
    try:
        images, _ = load_cifar10(None, "train")
        source = "CIFAR-10 training images"
    except BnnflowError:
        images = np.random.default_rng(req.seed).integers(0, 256, (CALIBRATION_FALLBACK_IMAGES, *IMAGE_SHAPE),
                                                           dtype=np.uint8)
        source = "random pixels (no CIFAR-10 copy found)"
    calibrate(net, images, seed=req.seed)
    console.print(f"[yellow]No checkpoint given: building random weights (seed {req.seed}) with batch-norm "
                  f"statistics calibrated on {source}.[/]")
    return net, {"checkpoint": None, "seed": req.seed, "calibration": source, "accuracy": None}
