"""A training run's folder: where it goes, what --resume takes from it, its logs and run.json.

A run folder holds last.pt (everything --resume needs, train_state.py), best.pt (the epoch
selected on the held-out split), log.csv / log.json / curve.png (one row per epoch) and
run.json (recipe, data, device; status and selected epoch once the run ends).  An existing
folder is only continued (--resume) or replaced (--force), never mixed into.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path

from bnnflow.errors import BnnflowError

from .train_config import DEFAULT_LR, ENGINE_KEYS, FIXED_ON_RESUME, TrainConfig, check_config

TEACHER_LOGITS = "teacher_logits.pt"  # --teacher: its logits of the training images, read back on --resume
LATE_SHARE = 0.15  # issue 9's flattening test: what the best validation top-1 gains over the last 15 % of a run
RUN_FILES = ("last.pt", "best.pt", "log.csv", "log.json", "curve.png", "run.json", TEACHER_LOGITS)
# seconds: the epoch's training steps; eval_seconds: its validation and test passes (logged since epoch 70 of
# the long run), so what --test-eval saves can be read from the log, and the precise batch norm before them;
# bn_images: the training images that batch norm's statistics were re-estimated on (empty: running averages);
# cpu_seconds: the training steps' CPU time (logged since epoch 95 of BinaryDenseNet's long run)
LOG_COLUMNS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "test_loss", "test_top1", "lr", "tau",
               "seconds", "images_per_s", "engine", "eval_seconds", "threads", "bn_images", "cpu_seconds")


def default_out(cfg: TrainConfig) -> Path:
    """runs/MODEL-VARIANT[-recu][-psi|-sgd]-sSEED: runs of different recipes never share a folder."""
    tags = "".join(t for t, on in (("-recu", cfg.recu), ("-psi", cfg.optimizer == "psi"),
                                    ("-sgd", cfg.optimizer == "sgd")) if on)
    if cfg.is_user_model:
        from bnnflow.model_ref import parse_model_ref

        return Path("runs") / f"{parse_model_ref(cfg.model).short_name}{tags}-s{cfg.seed}"
    return Path("runs") / f"{cfg.model}-{cfg.variant}{tags}-s{cfg.seed}"


def plan_run_folder(cfg: TrainConfig) -> Path:
    """The run folder; refuse to touch an existing one unless --resume or --force."""
    if cfg.resume:
        if cfg.out is None:
            raise BnnflowError("--resume needs --out RUN_FOLDER: the folder of the run to continue.")
        out = Path(cfg.out)
        if not (out / "last.pt").is_file():
            raise BnnflowError(f"There is no run to resume in {out} (no last.pt): start it without --resume.")
        return out
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if out.exists() and not out.is_dir():
        raise BnnflowError(f"{out} is a file, not a run folder: choose another --out.")
    if out.exists() and any(out.iterdir()):
        if not any((out / f).exists() for f in RUN_FILES):
            raise BnnflowError(f"{out} is not a bnnflow run folder, so it is neither resumed nor replaced: choose "
                               "another --out.")
        if not cfg.force:
            raise BnnflowError(f"Run folder {out} already exists: pass --resume to continue it, --force to replace "
                               "it, or --out for a new folder.")
        shutil.rmtree(out)
    return out


def merge_resume(cfg: TrainConfig, saved: dict, path: Path) -> TrainConfig:
    """The saved run's recipe, with a clear error where the command line asks for something else."""
    for key in FIXED_ON_RESUME:
        if key in cfg.explicit and getattr(cfg, key) != saved.get(key):
            flag = "the model" if key == "model" else "--" + key.replace("_", "-")
            raise BnnflowError(f"The run in {path} was trained with {flag} {saved.get(key)}, not {getattr(cfg, key)}: "
                               "drop the option to resume it, or start a new run with another --out.")
    fixed = {k: saved[k] for k in FIXED_ON_RESUME if k in saved}
    fixed.setdefault("val_size", 0)  # runs from before the validation split selected on the last epoch
    merged = TrainConfig(**{**asdict(cfg), **fixed})
    merged.explicit = cfg.explicit
    merged.epochs = cfg.epochs if "epochs" in cfg.explicit else saved["epochs"]
    merged.data = cfg.data if cfg.data is not None else saved.get("data")
    # the engine is how steps are computed, not what is trained: a resumed run may switch it
    for key in ENGINE_KEYS:
        if key not in cfg.explicit and key in saved:
            setattr(merged, key, saved[key])
    if merged.epochs < saved["epochs"] and not cfg.shorten:
        raise BnnflowError(f"The run in {path.parent} is planned for {saved['epochs']} epochs: --epochs {merged.epochs} would "
                           "compress the rest of its cosine schedule and end it early, so pass --shorten to do that, "
                           "or drop --epochs.")
    return merged


def open_run(cfg: TrainConfig):
    """(cfg merged with a resumed run's recipe, run folder, saved last.pt payload or None)."""
    from .checkpoint import read_checkpoint

    saved = None
    if cfg.resume:
        out = plan_run_folder(cfg)
        saved = read_checkpoint(out / "last.pt")
        if "train_state" not in saved:
            raise BnnflowError(f"{out / 'last.pt'} has no training state (it is not a last.pt of 'bnnflow train'): "
                               "resume from the run folder that wrote it.")
        cfg = merge_resume(cfg, saved["train_state"]["config"], out / "last.pt")
        check_config(cfg)
    else:
        check_config(cfg)
        if cfg.lr is None:
            cfg.lr = DEFAULT_LR[cfg.optimizer]
        out = plan_run_folder(cfg)
    return cfg, out, saved


def selection_score(row: dict) -> float:
    """What best.pt is chosen by: the held-out split's top-1 only; without one, the latest epoch."""
    return row["val_top1"] if row.get("val_top1") is not None else float(row["epoch"])


def selected_row(history: list[dict]) -> dict:
    """The epoch best.pt holds: highest validation top-1 (first of equals), or the last epoch."""
    if history and all(r.get("val_top1") is not None for r in history):
        top = max(r["val_top1"] for r in history)
        return next(r for r in history if r["val_top1"] == top)
    return history[-1]


def late_gain(history: list[dict]) -> float | None:
    """Points the best validation top-1 rose over the last 15 % of the logged epochs (at least one; a
    finished run has flattened under 0.3); None without a validation split or an earlier epoch to compare."""
    vals = [r.get("val_top1") for r in history]
    late = math.ceil(LATE_SHARE * len(vals))
    if None in vals or len(vals) <= late:
        return None
    return 100 * (max(vals) - max(vals[:-late]))


def write_logs(out: Path, history: list[dict], title: str) -> None:
    """log.csv, log.json and curve.png, rewritten whole after every epoch."""
    from bnnflow.atomic import write_json, write_text

    lines = [",".join(LOG_COLUMNS)]
    for row in history:
        lines.append(",".join("" if row.get(c) is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]))
                              for c in LOG_COLUMNS))
    write_text(out / "log.csv", "\n".join(lines) + "\n")
    write_json(out / "log.json", history)
    plot_curve(out / "curve.png", history, title)


def plot_curve(path: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnnflow.atomic import atomic_path

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    tested = [r for r in history if r.get("test_top1") is not None]  # --test-eval selected: best.pt's epochs
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train (augmented)")
    test_label = "test" if len(tested) == len(history) else "test (the epochs best.pt took)"
    a.plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "s-", label=test_label)
    b.plot(ep, [100 * r["train_top1"] for r in history], "o-", label="train (augmented)")
    b.plot([r["epoch"] for r in tested], [100 * r["test_top1"] for r in tested], "s-", label=test_label)
    val = [(r["epoch"], r["val_loss"], r["val_top1"]) for r in history if r.get("val_top1") is not None]
    if val:
        a.plot([v[0] for v in val], [v[1] for v in val], "^-", label="validation")
        b.plot([v[0] for v in val], [100 * v[2] for v in val], "^-", label="validation (selects best.pt)")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.legend(), a.grid(alpha=0.3)
    b.set_xlabel("epoch"), b.set_ylabel("top-1 (%)"), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_run_json(out: Path, run_info: dict, history: list[dict] | None = None, done: bool = False) -> None:
    """run.json: "running" while epochs run (history None), then finished/stopped with the selected epoch."""
    from bnnflow.atomic import write_json

    if history is None:
        write_json(out / "run.json", {**run_info, "status": "running"})
        return
    best_row = selected_row(history)
    write_json(out / "run.json", {**run_info, "status": "finished" if done else "stopped",
                                  "epochs_done": len(history), "best_epoch": best_row["epoch"],
                                  "best_val_top1": best_row.get("val_top1"),
                                  "best_test_top1": best_row["test_top1"]})
