"""What a run's checkpoints hold: last.pt, everything --resume needs to repeat an uninterrupted
run bit for bit, and best.pt, the selected epoch's weights for 'bnnflow build --checkpoint'.

last.pt: raw weights (parametrized, latent), optimizer states, the schedule position, every RNG
state, the history, and the quantisers' statistics-collection counters.  best.pt: baked weights,
batch-norm statistics and quantiser scales only, plus a manifest.  last.pt is committed every working
session, so it is written packed (packing.py, lossless): read it with checkpoint.read_checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from .train_config import ENGINE_KEYS, FIXED_ON_RESUME, TrainConfig


def quant_stats_state(net) -> dict:
    """Brevitas' runtime-statistics quantisers (counter < 300 while they collect): their full state.

    Their state_dict keeps only the averaged statistic and marks collection as finished on
    load, so a resumed run would stop collecting early; this keeps the counter, buffer and raw value.
    """
    out = {}
    for name, m in net.named_modules():
        counter = getattr(m, "counter", None)
        if isinstance(counter, int) and not isinstance(counter, bool):
            out[name] = {"counter": counter,
                         "buffers": {k: v.detach().clone() for k, v in m._buffers.items() if v is not None},
                         "params": {k: v.detach().clone() for k, v in m._parameters.items() if v is not None}}
    return out


def restore_quant_stats(net, state: dict) -> None:
    """Put quant_stats_state's counters, buffers and raw values back (after load_state_dict)."""
    import torch

    modules = dict(net.named_modules())
    for name, s in state.items():
        m = modules[name]
        m.counter = s["counter"]
        with torch.no_grad():
            for k, v in s["buffers"].items():
                m._buffers[k].copy_(v)
            for k, v in s["params"].items():
                m._parameters[k].copy_(v)


def rng_state() -> dict:
    import random

    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_copy(net, baked: bool, compact: bool = True):
    """A CPU copy of the state to save: raw (parametrized, latent weights) for last.pt; for best.pt
    baked plain weights, binary ones as int8 +-1 when `compact` (Brevitas' sign, 0 -> +1: a quarter of
    the size, and load_state_dict casts them back to float; only where the binary scale is the constant 1,
    as in bnnflow's models: a user's quantiser may scale by statistics of the latent weights)."""
    import torch

    from .recu import baked_state_dict, binary_layers

    class _Holder:  # save_checkpoint only calls state_dict()
        def __init__(self, sd):
            self.sd = {k: v.detach().cpu().clone() if hasattr(v, "detach") else v for k, v in sd.items()}

        def state_dict(self):
            return self.sd

    if not baked:
        return _Holder(net.state_dict())
    sd = baked_state_dict(net)
    for name, _ in binary_layers(net) if compact else ():
        w = sd[f"{name}.weight"]
        sd[f"{name}.weight"] = torch.where(w >= 0, 1, -1).to(torch.int8)
    return _Holder(sd)


def save_best(out: Path, net, cfg: TrainConfig, data_info: dict, row: dict, val_images: int, test_images: int) -> None:
    """best.pt of the epoch in `row`, with a manifest saying what selected it."""
    from .checkpoint import save_checkpoint

    meta = {"trained_with": "bnnflow train", "dataset": data_info, "epochs": cfg.epochs,
            "epoch": row["epoch"], "seed": cfg.seed, "recipe": cfg.recipe(), "selected_on": (
                f"val_top1 (last {val_images} training images)" if val_images else "last epoch"),
            "val_top1": row["val_top1"], "test_top1": row["test_top1"],
            "test_images": test_images, "test_top1_is_full_test_set": test_images == 10_000}
    save_checkpoint(out / "best.pt", cpu_copy(net, baked=True, compact=not cfg.is_user_model), cfg.model, cfg.variant,
                    meta=meta, extra=user_payload(cfg))


def save_last(out: Path, net, cfg: TrainConfig, data_info: dict, history: list[dict], opts: list, logit_scale,
              steps_per_epoch: int, total_steps: int) -> None:
    """last.pt after the newest epoch in `history`: the RNG states are taken now, so call it
    after the epoch's evaluation and best.pt, and before anything else draws."""
    from .checkpoint import save_checkpoint

    epoch = history[-1]["epoch"]
    state = {"config": {**{k: getattr(cfg, k) for k in FIXED_ON_RESUME + ENGINE_KEYS}, "epochs": cfg.epochs,
                        "data": cfg.data},
             "data": data_info, "epoch": epoch, "history": history,
             "optimizers": [opt.state_dict() for opt in opts], "quant_stats": quant_stats_state(net),
             "logit_scale": logit_scale.detach().cpu(), "rng": rng_state(),
             "schedule": {"kind": "cosine", "step": epoch * steps_per_epoch, "total_steps": total_steps}}
    save_checkpoint(out / "last.pt", cpu_copy(net, baked=False), cfg.model, cfg.variant,
                    meta={"epoch": epoch, "epochs": cfg.epochs}, extra={"train_state": state, **user_payload(cfg)},
                    packed=True)


def user_payload(cfg: TrainConfig) -> dict:
    """A user's network: how load_checkpoint rebuilds it (models/user_model.py), beside the weights."""
    if not cfg.is_user_model:
        return {}
    from bnnflow.model_ref import USER_KEY

    from .user_model import user_spec

    return {USER_KEY: user_spec(cfg)}
