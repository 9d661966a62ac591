"""`bnnflow recalibrate`: a trained checkpoint with precise batch-norm statistics (precise_bn.py).

For runs that ended with PyTorch's running averages: the statistics are re-estimated over the
checkpoint's own training split (the held-out validation images stay out), and the validation and
test top-1 before and after are printed, so the choice between the two is made on validation.
Only the batch-norm statistics change; the new file's manifest says so and from what.
"""

from __future__ import annotations

from pathlib import Path

from bnnflow.errors import BnnflowError


def recalibrate(checkpoint: Path, out: Path, images: int | None = None, data: Path | None = None,
                device: str = "auto", console=None, download: bool = False) -> dict:
    """Write `out`; returns {"images", "before": {val, test}, "after": {val, test}}."""
    import torch
    from rich.console import Console

    from bnnflow.model_ref import USER_KEY, is_user_model, network_name

    from .checkpoint import load_checkpoint, read_checkpoint, refuse_latent_weights, save_checkpoint
    from .engine import Engine
    from .precise_bn import training_batches
    from .train import evaluate_tensors, pick_device
    from .train_config import TrainConfig
    from .train_data import load_data, to_device_tensors
    from .train_state import cpu_copy

    console = console or Console(quiet=True)
    if out.resolve() == checkpoint.resolve():
        raise BnnflowError(f"--out {out} is the checkpoint being read: name a new file, so the original stays.")
    if images is not None and images < 2:
        raise BnnflowError(f"--bn-images must be at least 2 images, got {images}.")
    refuse_latent_weights(read_checkpoint(checkpoint), checkpoint)
    net, payload = load_checkpoint(checkpoint)
    meta = _training_record(payload, checkpoint)
    recipe, recorded = meta["recipe"], meta.get("dataset") or {}
    cfg = TrainConfig(model=payload["model"], variant=payload["variant"], data=str(data) if data else None,
                      download=download, val_size=recipe.get("val_size", 0), subset=recipe.get("subset"),
                      test_subset=recipe.get("test_subset"), batch_size=recipe.get("batch_size", 128))
    loaded = load_data(cfg)
    for key in ("train_sha256", "test_sha256"):
        if key in recorded and key in loaded["info"] and recorded[key] != loaded["info"][key]:
            raise BnnflowError(f"The CIFAR-10 copy differs from the one {checkpoint} was trained on ({key}): "
                               "pass that copy with --data.")
    dev = pick_device(device)
    x, _, xv, yv, xt, yt = to_device_tensors(loaded, dev)
    net.to(dev)
    engine = Engine(net, torch.zeros((), device=dev), [], dev, "brevitas" if is_user_model(payload["model"])
                    else "fast", compile=False)
    n = len(x) if images is None else min(images, len(x))

    def top1s():
        with console.status(f"Evaluating {len(xv)} validation and {len(xt)} test images..."):
            return {"val_top1": evaluate_tensors(engine, xv, yv)[1] if len(xv) else None,
                    "test_top1": evaluate_tensors(engine, xt, yt)[1]}

    before = top1s()
    with console.status(f"Re-estimating batch-norm statistics over {n:,} augmented training images..."):
        if not engine.reestimate_bn(training_batches(x, n, cfg.batch_size, recipe.get("seed", 0))):
            raise BnnflowError(f"{checkpoint}'s activation scales never finished collecting their statistics: "
                               "train it further first.")
    after = top1s()
    new_meta = {**meta, **after, "bn_images": n,
                "bn_recalibrated_from": {"checkpoint": str(checkpoint), "epoch": meta.get("epoch"), **before}}
    user = payload.get(USER_KEY)
    save_checkpoint(out, cpu_copy(net, baked=True, compact=user is None), payload["model"], payload["variant"],
                    meta=new_meta, extra={USER_KEY: user} if user is not None else None)
    name = network_name(payload["model"], payload["variant"])

    def shown(d):
        val = f"validation {d['val_top1']:.2%}, " if d["val_top1"] is not None else ""
        return f"{val}test {d['test_top1']:.2%}"

    console.print(f"{name}: batch-norm statistics re-estimated over {n:,} training images: {shown(before)} -> "
                  f"{shown(after)} ({len(xv)} validation, {len(xt)} test images); wrote {out}.")
    return {"images": n, "before": before, "after": after}


def _training_record(payload: dict, checkpoint: Path) -> dict:
    """The manifest of a best.pt; for a last.pt, one made from its resume state (the same keys)."""
    from dataclasses import fields

    from .train_config import TrainConfig

    meta = payload.get("meta") or {}
    if isinstance(meta.get("recipe"), dict):
        return meta
    state = payload.get("train_state")
    if isinstance(state, dict) and isinstance(state.get("config"), dict):
        names = {f.name for f in fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in names})
        return {"trained_with": "bnnflow train", "dataset": state.get("data") or {}, "epochs": cfg.epochs,
                "epoch": state.get("epoch"), "seed": cfg.seed, "recipe": cfg.recipe(), "selected_on": "last epoch"}
    raise BnnflowError(f"{checkpoint} does not record the training run it came from (no recipe): only "
                       "checkpoints written by 'bnnflow train' know their training images.")
