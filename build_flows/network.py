"""The Brevitas network a build starts from: a checkpoint, or random weights calibrated on CIFAR-10.

Either way the network is tie-guarded (models/tie_guard.py) before export, and the origin of
its weights is returned for build_state.json.
"""

from __future__ import annotations

import contextlib

import numpy as np
from rich.console import Console

from bnnflow.digest import file_sha256
from bnnflow.errors import BnnflowError
from bnnflow.images import IMAGE_SHAPE
from bnnflow.model_ref import is_user_model
from bnnflow.models.checkpoint import calibrate, load_checkpoint
from bnnflow.models.tie_guard import guard_rounding_ties
from bnnflow.models.zoo import build_model

from .identity import BuildRequest, request_source

CALIBRATION_FALLBACK_IMAGES = 256  # random pixels when no CIFAR-10 copy is found


def load_request_checkpoint(req: BuildRequest) -> tuple:
    """load_checkpoint, with a payload of the right format but damaged fields also one sentence."""
    if is_user_model(req.model):  # a plain state_dict (or a bnnflow checkpoint) of the user's network
        from bnnflow.models.user_model import build_user_network, load_user_weights

        net = build_user_network(req.model, req.model_args, req.input_scale, req.variant)
        return load_user_weights(net, req.checkpoint), {"meta": {}}
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
    with user_code(req, "Running"):
        net, origin = _load_or_init(req, console, loaded)
        origin["tie_guard"] = guard_rounding_ties(net)
    skipped = origin["tie_guard"].get("skipped")
    if skipped:
        console.print(f"[yellow]Tie guard: {skipped[0]['why']} (batch norm {skipped[0]['module']}"
                      f"{f' and {len(skipped) - 1} more' if len(skipped) > 1 else ''}), so PyTorch and FINN "
                      "may round an activation that sits on a near-tie differently: rare single-image logit "
                      "differences, which 'bnnflow verify' shows.[/]")
    if is_user_model(req.model):
        from bnnflow.models.user_model import user_spec

        origin["source"] = request_source(req)
        origin["user_model"] = user_spec(req)
    return net, origin


def user_code(req: BuildRequest, what: str):
    """A user's network that fails inside bnnflow is one sentence; bnnflow's own are left to fail loudly."""
    if not is_user_model(req.model):
        return contextlib.nullcontext()
    from bnnflow.models.user_model import running

    return running(req.model, what)


def _network(req: BuildRequest):
    """A fresh network of the request: bnnflow's own, or the user's (its factory's weights)."""
    if is_user_model(req.model):
        from bnnflow.models.user_model import build_user_network

        return build_user_network(req.model, req.model_args, req.input_scale, req.variant)
    return build_model(req.model, req.variant)


def _load_or_init(req: BuildRequest, console: Console, loaded: tuple | None = None):
    if req.checkpoint is not None:
        net, payload = loaded or load_request_checkpoint(req)
        return net, {"checkpoint": str(req.checkpoint), "checkpoint_sha256": file_sha256(req.checkpoint),
                     "accuracy": payload.get("meta", {}).get("test_top1")}
    import torch

    from bnnflow.models.data import load_cifar10

    torch.manual_seed(req.seed)
    net = _network(req)
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
