"""`bnnflow train`: train any model variant from scratch on CIFAR-10, resumable and deterministic.

The recipe is the seed paper's simple one (Bethge et al., "Back to Simplicity: How to Train
Accurate BNNs from Scratch?"): no full-precision pre-training, no scaling factors (binary
weights and activations are exactly +-1, which is what FINN's XNOR datapath computes), the
straight-through estimator for sign, random crop (pad 4) and horizontal flip, and a cosine
learning-rate schedule to zero.

Optimizer: Adam (lr 2e-3, no weight decay) by default.  The gradients that reach binary
latent weights through sign and batch norm are tiny and vary by orders of magnitude between
layers; Adam's per-parameter normalisation moves every latent weight at a similar rate, so a
single learning rate works for every model and variant without tuning, which is why the
seed paper and most BNN work since (Bi-Real, ReActNet, "How do Adam and training strategies
help BNNs optimization?", ICML 2021) use it; weight decay on binary latent weights only drags
them towards zero, where their signs flip at random.  `--optimizer sgd` (momentum 0.9,
lr 0.1) is kept for comparison, and `--optimizer psi` runs SGD on the PSI manifold
(psi.py) for the scale-invariant weights and Adam for the rest.  `--recu` adds ReCU (recu.py).

The logits of a bias-free classifier on binary features are large integers; the loss uses a
learned positive temperature exp(s) * logits (training only: it never changes the argmax,
so the exported network is unchanged).

Steps run through engine.Engine: the fast twin of fast.py (compiled, bf16 where the hardware
has it) once the activation scales have their statistics, Brevitas before that or with
--engine brevitas.  The last --val-size training images are held out: best.pt is the epoch of
the best validation top-1; the test set is only reported.

A run folder holds last.pt (everything --resume needs: weights, optimizer, schedule, RNG
states, epoch, the quantisers' statistics-collection counters), best.pt (weights, batch-norm
statistics and quantiser scales only, plus a manifest), log.csv / log.json and curve.png.
Every epoch draws its shuffle and augmentation from a generator seeded by (seed, epoch), so a
resumed run repeats an uninterrupted one exactly.

This module keeps torch out of its import-time dependencies: `bnnflow --help` loads
`add_train_parser` without importing torch.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bnnflow.errors import BnnflowError

MODELS = ("resnete", "densenet", "cnv")
OPTIMIZERS = ("adam", "sgd", "psi")
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.1, "psi": 2e-3}  # psi: lr of the Adam part
DEFAULT_PSI_LR = 30.0  # angular steps like Adam 2e-3 (steps on the RMS-1 representative, see psi.py)
RUN_FILES = ("last.pt", "best.pt", "log.csv", "log.json", "curve.png", "run.json")
# recipe options: None on the command line means "default" for a new run, "as saved" for --resume
ENGINES = ("fast", "brevitas")
DEFAULT_VAL_SIZE = 5000  # the last 5,000 training images select best.pt; the test set never does
RECIPE_DEFAULTS = dict(variant="default", epochs=150, batch_size=128, lr=None, optimizer="adam", psi_lr=DEFAULT_PSI_LR,
                       momentum=0.9, weight_decay=0.0, seed=0, recu=False, tau_start=0.85, tau_end=0.99, subset=None,
                       test_subset=None, val_size=DEFAULT_VAL_SIZE, label_smoothing=0.0, warmup_epochs=0)
FIXED_ON_RESUME = ("model", "variant", "batch_size", "lr", "optimizer", "psi_lr", "momentum", "weight_decay", "seed",
                   "recu", "tau_start", "tau_end", "subset", "test_subset", "val_size", "label_smoothing",
                   "warmup_epochs")
# how each step is computed may change on --resume (same state, other arithmetic): logged per epoch
ENGINE_KEYS = ("engine", "bf16", "compile")


@dataclass
class TrainConfig:
    model: str
    variant: str = "default"
    epochs: int = 150
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "adam"
    psi_lr: float = DEFAULT_PSI_LR
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    recu: bool = False
    tau_start: float = 0.85
    tau_end: float = 0.99
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    subset: int | None = None
    test_subset: int | None = None
    val_size: int = DEFAULT_VAL_SIZE
    engine: str = "fast"
    bf16: bool | None = None  # None: on for the fast engine where the CPU/GPU has bf16 units
    compile: bool = True
    shorten: bool = False
    data: str | None = None
    out: str | None = None
    resume: bool = False
    force: bool = False
    device: str = "auto"
    threads: int | None = None
    stop_after: int | None = None
    progress: bool = True
    explicit: set = field(default_factory=set)  # options given on the command line

    def recipe(self) -> dict:
        keys = ("model", "variant", "epochs", "batch_size", "lr", "optimizer", "psi_lr", "momentum", "weight_decay",
                "seed", "recu", "tau_start", "tau_end", "subset", "test_subset", "val_size", "label_smoothing",
                "warmup_epochs")
        d = {k: getattr(self, k) for k in keys}
        if self.optimizer != "psi":
            d.pop("psi_lr")
        if self.optimizer == "adam":
            d.pop("momentum")
        if not self.recu:
            d.pop("tau_start"), d.pop("tau_end")
        return d


# ----------------------------------------------------------------------------------------------- CLI


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a model from scratch on CIFAR-10 (resumable, deterministic)",
        description="Train a binary network from scratch on CIFAR-10 with the simple recipe of Bethge et al. "
                    "(no pre-training, no scaling factors, straight-through sign, crop+flip augmentation, "
                    "Adam with a cosine schedule), through a fast compiled twin of the Brevitas model by default. "
                    "The last 5,000 training images are held out to select best.pt (for 'bnnflow build "
                    "--checkpoint'); last.pt is for --resume; log.csv, log.json and curve.png log every epoch.")
    p.add_argument("model", nargs="?", help=f"network: {', '.join(MODELS)} (optional with --resume)")
    p.add_argument("--variant", help="width/depth variant (see 'bnnflow models'); default: default")
    p.add_argument("--epochs", type=int, help=f"training epochs; default: {RECIPE_DEFAULTS['epochs']} (with --resume: "
                                              "extends the run, stretching the rest of the cosine schedule)")
    p.add_argument("--batch-size", type=int, help=f"default: {RECIPE_DEFAULTS['batch_size']}")
    p.add_argument("--lr", type=float, help="peak learning rate of the cosine schedule; default: 2e-3 (adam, "
                                            "and the Adam part of psi), 0.1 (sgd)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default); sgd (momentum); psi: SGD on the PSI "
                                                           "manifold for weights feeding a sign or a batch norm, "
                                                           "Adam for the rest")
    p.add_argument("--psi-lr", type=float, help=f"learning rate of the PSI part; default: {DEFAULT_PSI_LR}")
    p.add_argument("--momentum", type=float, help="momentum of sgd and psi; default: 0.9")
    p.add_argument("--weight-decay", type=float, help="L2 on conv/linear weights outside PSI; default: 0")
    p.add_argument("--recu", action=argparse.BooleanOptionalAction, default=None,
                   help="ReCU: weight standardisation and rectified clamp of binary latent weights (off by default)")
    p.add_argument("--tau-start", type=float, help="ReCU's tau at the first epoch; default: 0.85")
    p.add_argument("--tau-end", type=float, help="ReCU's tau at the last epoch; default: 0.99")
    p.add_argument("--label-smoothing", type=float, help="label smoothing of the training loss; default: 0")
    p.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up before the cosine decay; default: 0")
    p.add_argument("--seed", type=int, help="seed of weights, shuffling and augmentation; default: 0")
    p.add_argument("--subset", type=int, help="train on the first N training images (quick runs)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images (default: all 10,000)")
    p.add_argument("--val-size", type=int, help=f"hold out the last N training images to select best.pt "
                                                f"(never the test set); default: {DEFAULT_VAL_SIZE}; 0: best.pt is "
                                                "the last epoch")
    p.add_argument("--engine", choices=ENGINES, help="fast (default): a compiled plain-PyTorch twin that shares "
                                                     "the Brevitas model's weights and equals its forward in fp32; "
                                                     "brevitas: Brevitas' own forward (slow on CPUs)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the fast engine's training steps (evaluation stays fp32); default: on "
                        "where the CPU has AMX/AVX512-BF16 or on a GPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the fast engine's forward (default: on; ~1 min to compile on 2 cores)")
    p.add_argument("--shorten", action="store_true",
                   help="with --resume and a smaller --epochs: end the run early on the shortened schedule")
    p.add_argument("--benchmark-steps", type=int, metavar="N",
                   help="time N training steps of the Brevitas forward and of the fast engine side by side on "
                        "the same batches, print images/s and the ratio, and exit (nothing is written)")
    p.add_argument("--data", type=Path, help="CIFAR-10 copy: folder with cifar10_{train,test}.npz or "
                                             "cifar-10-batches-py, or the train .npz (test beside it)")
    p.add_argument("--out", type=Path, help="run folder; default: runs/MODEL-VARIANT[-recu][-psi]-sSEED")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where last.pt ended")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--stop-after", type=int, metavar="EPOCH",
                   help="stop once this many epochs are done (the schedule still spans --epochs; --resume goes on)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto (cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch; default: all cores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    return p


def config_from_args(args) -> TrainConfig:
    explicit = set()
    values = {}
    for key, default in RECIPE_DEFAULTS.items():
        v = getattr(args, key, None)
        if v is None:
            values[key] = default
        else:
            values[key] = v
            explicit.add(key)
    if args.model is not None:
        explicit.add("model")
    explicit.update(k for k in ENGINE_KEYS if getattr(args, k, None) is not None)
    return TrainConfig(model=args.model, data=str(args.data) if args.data else None,
                       out=str(args.out) if args.out else None, resume=args.resume, force=args.force,
                       device=args.device, threads=args.threads, stop_after=args.stop_after,
                       progress=not args.no_progress, explicit=explicit, engine=args.engine or "fast",
                       bf16=args.bf16, compile=True if args.compile is None else args.compile,
                       shorten=args.shorten, **values)


def cmd_train(args) -> int:
    from rich.console import Console

    console = Console(highlight=False)
    if args.benchmark_steps is not None:
        from .train_speed import benchmark

        benchmark(config_from_args(args), args.benchmark_steps, console)
        return 0
    result = train(config_from_args(args), console)
    return 0 if result is not None else 1


# ------------------------------------------------------------------------------------------ checks


def check_config(cfg: TrainConfig) -> None:
    from .zoo import get_variant

    if cfg.model is None:
        raise BnnflowError(f"Name the model to train ({', '.join(MODELS)}), or pass --resume with --out RUN_FOLDER.")
    get_variant(cfg.model, cfg.variant)
    if cfg.epochs < 1:
        raise BnnflowError(f"--epochs must be at least 1, got {cfg.epochs}.")
    if cfg.batch_size < 2:
        raise BnnflowError(f"--batch-size must be at least 2 (batch norm needs two images per batch), got "
                           f"{cfg.batch_size}.")
    if not 0 <= cfg.label_smoothing < 1:
        raise BnnflowError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}.")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise BnnflowError(f"--warmup-epochs must be from 0 to --epochs - 1 ({cfg.epochs - 1}), got {cfg.warmup_epochs}.")
    if cfg.val_size < 0:
        raise BnnflowError(f"--val-size must be 0 or more images, got {cfg.val_size}.")
    if cfg.engine not in ENGINES:
        raise BnnflowError(f"Unknown engine '{cfg.engine}': choose one of {', '.join(ENGINES)}.")
    for name, v in (("lr", cfg.lr), ("psi-lr", cfg.psi_lr)):
        if v is not None and not v > 0:
            raise BnnflowError(f"--{name} must be positive, got {v}.")
    if not 0 <= cfg.momentum < 1:
        raise BnnflowError(f"--momentum must be in [0, 1), got {cfg.momentum}.")
    if cfg.weight_decay < 0:
        raise BnnflowError(f"--weight-decay must not be negative, got {cfg.weight_decay}.")
    if cfg.recu and not 0.5 < cfg.tau_start <= cfg.tau_end < 1:
        raise BnnflowError(f"ReCU needs 0.5 < --tau-start <= --tau-end < 1, got {cfg.tau_start} and {cfg.tau_end}.")
    for name, v in (("subset", cfg.subset), ("test-subset", cfg.test_subset)):
        if v is not None and v < 2:
            raise BnnflowError(f"--{name} must be at least 2 images, got {v}.")
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise BnnflowError(f"--stop-after must be at least 1 epoch, got {cfg.stop_after}.")
    if cfg.threads is not None and cfg.threads < 1:
        raise BnnflowError(f"--threads must be at least 1, got {cfg.threads}.")


def default_out(cfg: TrainConfig) -> Path:
    tags = "".join(t for t, on in (("-recu", cfg.recu), ("-psi", cfg.optimizer == "psi"),
                                    ("-sgd", cfg.optimizer == "sgd")) if on)
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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not cfg.force:
            raise BnnflowError(f"Run folder {out} already exists: pass --resume to continue it, --force to replace "
                               "it, or --out for a new folder.")
        if not out.is_dir() or not any((out / f).exists() for f in RUN_FILES):
            raise BnnflowError(f"{out} is not a bnnflow run folder, so --force will not delete it: choose another --out.")
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


# -------------------------------------------------------------------------------------------- data


def load_data(cfg: TrainConfig) -> dict:
    import numpy as np

    from .checkpoint import file_sha256
    from .data import _find_in_folder, cifar10_subset, default_data_dir, load_cifar10

    source = Path(cfg.data).expanduser() if cfg.data else default_data_dir()
    if source.is_file():
        train_src, test_root = source, source.parent
    else:
        train_src, test_root = source, source
    x, y = load_cifar10(train_src, "train")
    xt, yt = load_cifar10(test_root, "test")
    if cfg.val_size >= len(x):
        raise BnnflowError(f"--val-size {cfg.val_size} leaves none of the {len(x)} training images to train on.")
    split = len(x) - cfg.val_size
    xv, yv = x[split:], y[split:]
    x, y = x[:split], y[:split]
    info = {}
    for split, src in (("train", train_src), ("test", test_root)):
        path = src if Path(src).is_file() else (_find_in_folder(Path(src), split) if Path(src).is_dir() else None)
        info[split] = str(Path(path).resolve()) if path else str(src)
        if path is not None and Path(path).is_file():
            info[f"{split}_sha256"] = file_sha256(path)
    if cfg.subset is not None:
        if cfg.subset > len(x):
            raise BnnflowError(f"--subset {cfg.subset} is more than the {len(x)} training images available.")
        x, y = cifar10_subset(x, y, cfg.subset)
    if cfg.test_subset is not None:
        if cfg.test_subset > len(xt):
            raise BnnflowError(f"--test-subset {cfg.test_subset} is more than the {len(xt)} test images available.")
        xt, yt = cifar10_subset(xt, yt, cfg.test_subset)
    info.update(train_images=int(len(x)), val_images=int(len(xv)), test_images=int(len(xt)))
    return {"x": np.ascontiguousarray(x), "y": y, "xv": np.ascontiguousarray(xv), "yv": yv,
            "xt": np.ascontiguousarray(xt), "yt": yt, "info": info}


def to_device_tensors(data: dict, device):
    """uint8 NCHW images and int64 labels on the device; floats are made per batch."""
    import torch

    def images(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)

    return (images(data["x"]), torch.from_numpy(data["y"]).to(device),
            images(data["xv"]), torch.from_numpy(data["yv"]).to(device),
            images(data["xt"]), torch.from_numpy(data["yt"]).to(device))


def pick_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise BnnflowError("--device cuda was asked for but PyTorch sees no CUDA GPU: use --device cpu or auto.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def epoch_generator(seed: int, epoch: int):
    """The generator of one epoch's shuffle and augmentation: depends only on (seed, epoch)."""
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63))


# ------------------------------------------------------------------------------------------ model


def prepare_model(cfg: TrainConfig, device):
    """The network with this run's training-time parametrizations, and the logit temperature."""
    import torch

    from . import psi, recu
    from .zoo import build_model

    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model, cfg.variant)
    if cfg.recu:
        recu.apply_recu(net, recu.tau_schedule(0.0, cfg.tau_start, cfg.tau_end))
    if cfg.optimizer == "psi":
        psi.make_scale_invariant(net)
    net.to(device)
    classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    binary = any(m is classifier for _, m in recu.binary_layers(net))
    # binary classifier: logits are sums of +-1 over fan-in features, std ~ sqrt(fan_in)
    s0 = -0.5 * math.log(classifier.in_features) if binary else 0.0
    logit_scale = torch.nn.Parameter(torch.tensor(s0, device=device))
    return net, logit_scale


def make_optimizers(cfg: TrainConfig, net, logit_scale, device) -> list:
    import torch

    from . import psi

    lr = cfg.lr
    covered, psi_opts = set(), []
    if cfg.optimizer == "psi":
        groups, covered = psi.psi_param_groups(net, torch.zeros(2, 3, 32, 32, device=device))
        psi_opts = [psi.PSI(groups, lr=cfg.psi_lr, momentum=cfg.momentum)]
    decay, no_decay = [], []
    for p in list(net.parameters()) + [logit_scale]:
        if id(p) in covered:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        base = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    else:
        base = torch.optim.Adam(groups, lr=lr)
    opts = [base] + psi_opts
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts


def cosine(step: int, total: int, warmup: int = 0) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine from 1 to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


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


# ------------------------------------------------------------------------------------ evaluation


def evaluate_tensors(net, x_uint8, y, logit_scale=None, batch: int = 500) -> tuple[float, float, "object"]:
    """(mean loss, top-1, predictions) in eval mode (fp32) on uint8 NCHW images; `net` is a model
    or an engine.Engine (its fp32 forward, equal to Brevitas')."""
    import torch
    import torch.nn.functional as F

    forward = getattr(net, "eval_forward", net)
    net = getattr(net, "net", net)
    was = net.training
    net.eval()
    loss_sum, correct, preds = 0.0, 0, []
    scale = logit_scale.exp() if logit_scale is not None else 1.0
    with torch.no_grad():
        for i in range(0, len(x_uint8), batch):
            logits = forward(x_uint8[i:i + batch].float())
            loss_sum += float(F.cross_entropy(logits * scale, y[i:i + batch], reduction="sum"))
            p = logits.argmax(1)
            preds.append(p)
            correct += int((p == y[i:i + batch]).sum())
    net.train(was)
    n = max(len(x_uint8), 1)
    return loss_sum / n, correct / n, torch.cat(preds) if preds else None


# ------------------------------------------------------------------------------------------- logs


LOG_COLUMNS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "test_loss", "test_top1", "lr", "tau",
               "seconds", "images_per_s", "engine")


def write_logs(out: Path, history: list[dict], title: str) -> None:
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
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train (augmented)")
    a.plot(ep, [r["test_loss"] for r in history], "s-", label="test")
    b.plot(ep, [100 * r["train_top1"] for r in history], "o-", label="train (augmented)")
    b.plot(ep, [100 * r["test_top1"] for r in history], "s-", label="test")
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


# ------------------------------------------------------------------------------------------ train


def _open_run(cfg: TrainConfig, console):
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


def _restore(cfg: TrainConfig, saved: dict, out: Path, net, logit_scale, device) -> list:
    """Load last.pt's state into the fresh net; returns the optimizers with their state."""
    import torch

    st = saved["train_state"]
    try:
        # before the optimizers exist: Brevitas rebuilds its quantiser modules (and their
        # scale Parameters) when a state_dict is loaded
        net.load_state_dict(saved["state_dict"], strict=True)
        restore_quant_stats(net, st["quant_stats"])
        with torch.no_grad():
            logit_scale.copy_(st["logit_scale"])
        opts = make_optimizers(cfg, net, logit_scale, device)
        if len(st["optimizers"]) != len(opts):
            raise ValueError("optimizer count")
        for opt, s in zip(opts, st["optimizers"]):
            opt.load_state_dict(s)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise BnnflowError(f"{out / 'last.pt'} does not fit {cfg.model}/{cfg.variant} with this recipe "
                           f"({type(exc).__name__}): it was written by another version; start a new run.") from None
    set_rng_state(st["rng"])
    return opts


def _check_same_data(saved: dict | None, data: dict, out: Path) -> None:
    if saved is None:
        return
    old = saved["train_state"]["data"]
    for key in ("train_sha256", "test_sha256", "train_images", "val_images", "test_images"):
        if key in old and key in data["info"] and old[key] != data["info"][key]:
            raise BnnflowError(f"The CIFAR-10 copy differs from the one the run in {out} started with ({key}): "
                               "pass the same --data to resume.")


def _train_epoch(engine, x, y, epoch: int, cfg: TrainConfig, total_steps: int, progress_bar) -> dict:
    """One epoch of steps: shuffle and augmentation drawn from the (seed, epoch) generator."""
    import torch

    from .data import augment

    n, bs = len(x), min(cfg.batch_size, len(x))
    steps = max(n // bs, 1)
    gen = epoch_generator(cfg.seed, epoch)
    perm = torch.randperm(n, generator=gen).to(x.device)
    engine.net.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for i in range(steps):
        factor = cosine(epoch * steps + i, total_steps, cfg.warmup_epochs * steps)
        for opt in engine.opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
        idx = perm[i * bs:(i + 1) * bs]
        yb = y[idx]
        loss, logits = engine.step(augment(x[idx].float(), gen), yb)
        if not torch.isfinite(loss):
            raise BnnflowError(f"The loss became {float(loss)} at epoch {epoch + 1}: lower --lr (or --psi-lr) "
                               "and start again with --force.")
        loss_sum += float(loss) * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(idx)
        progress_bar.update(1)
        progress_bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", refresh=False)
    return {"train_loss": loss_sum / seen, "train_top1": correct / seen, "seen": seen,
            "lr": engine.opts[0].param_groups[0]["lr"]}


def train(cfg: TrainConfig, console=None) -> dict:
    """Run (or resume) one training run; returns a summary dict."""
    import torch
    from rich.console import Console
    from tqdm import tqdm

    from bnnflow.atomic import write_json

    from . import recu
    from .checkpoint import save_checkpoint
    from .engine import Engine, bf16_default

    console = console or Console(quiet=True)
    cfg, out, saved = _open_run(cfg, console)
    if cfg.stop_after is not None and saved is not None and saved["train_state"]["epoch"] >= min(cfg.stop_after, cfg.epochs):
        console.print(f"The run in {out} already has {saved['train_state']['epoch']} epochs: nothing to do.")
        return {"out": out, "history": saved["train_state"]["history"], "stopped": True}
    if saved is not None and saved["train_state"]["epoch"] > cfg.epochs:
        raise BnnflowError(f"The run in {out} already has {saved['train_state']['epoch']} epochs, more than "
                           f"--epochs {cfg.epochs}: nothing to shorten.")

    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if cfg.bf16 is None:
        cfg.bf16 = cfg.engine == "fast" and bf16_default(device)
    data = load_data(cfg)
    _check_same_data(saved, data, out)
    x, y, xv, yv, xt, yt = to_device_tensors(data, device)
    steps_per_epoch = max(len(x) // min(cfg.batch_size, len(x)), 1)
    total_steps = steps_per_epoch * cfg.epochs

    net, logit_scale = prepare_model(cfg, device)
    history, start_epoch, best = [], 0, -1.0
    if saved is not None:
        opts = _restore(cfg, saved, out, net, logit_scale, device)
        st = saved["train_state"]
        history, start_epoch = st["history"], st["epoch"]
        best = _selection_score(_selected_row(history)) if history else -1.0
        console.print(f"Resuming {out} after epoch {start_epoch} of {cfg.epochs}.")
    else:
        opts = make_optimizers(cfg, net, logit_scale, device)
        out.mkdir(parents=True, exist_ok=True)
    engine = Engine(net, logit_scale, opts, device, cfg.engine, cfg.bf16, cfg.compile, cfg.label_smoothing)

    run_info = {"config": cfg.recipe(), "engine": {k: getattr(cfg, k) for k in ENGINE_KEYS}, "data": data["info"],
                "device": str(device), "threads": torch.get_num_threads(), "command": "bnnflow train", "out": str(out)}
    write_json(out / "run.json", {**run_info, "status": "running"})
    title = (f"{cfg.model}/{cfg.variant} " + ("ReCU " if cfg.recu else "") + f"{cfg.optimizer} "
             f"({data['info']['train_images']} train images)")
    end_epoch = min(cfg.epochs, cfg.stop_after) if cfg.stop_after else cfg.epochs
    console.print(f"Training [bold]{cfg.model}/{cfg.variant}[/] on {len(x)} CIFAR-10 images ({len(xv)} held out to "
                  f"select best.pt) for epochs {start_epoch + 1}..{end_epoch} of {cfg.epochs} on {device} "
                  f"({torch.get_num_threads()} threads, {cfg.engine} engine{', bf16' if engine.bf16 else ''}"
                  f"{', compiled' if engine.compile else ''}), run folder {out}")
    tty = sys.stderr.isatty()

    for epoch in range(start_epoch, end_epoch):
        tau = None
        if cfg.recu:
            tau = recu.tau_schedule(epoch / cfg.epochs, cfg.tau_start, cfg.tau_end)
            recu.set_tau(net, tau)
        t0 = time.time()
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                  disable=not cfg.progress, mininterval=0.5 if tty else 60, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            stats = _train_epoch(engine, x, y, epoch, cfg, total_steps, bar)
        seconds = time.time() - t0
        val_loss, val_top1, _ = evaluate_tensors(engine, xv, yv, logit_scale) if len(xv) else (None, None, None)
        test_loss, test_top1, _ = evaluate_tensors(engine, xt, yt, logit_scale)
        row = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_top1": stats["train_top1"],
               "val_loss": val_loss, "val_top1": val_top1, "test_loss": test_loss, "test_top1": test_top1,
               "lr": stats["lr"], "tau": tau, "seconds": round(seconds, 2),
               "images_per_s": round(stats["seen"] / seconds, 1),
               "engine": cfg.engine + ("+bf16" if engine.bf16 else "") + ("+compile" if engine.compile else "")}
        history.append(row)
        score = _selection_score(row)
        improved = score > best
        if improved:
            best = score
            meta = {"trained_with": "bnnflow train", "dataset": data["info"], "epochs": cfg.epochs,
                    "epoch": epoch + 1, "seed": cfg.seed, "recipe": cfg.recipe(), "selected_on": (
                        f"val_top1 (last {len(xv)} training images)" if len(xv) else "last epoch"),
                    "val_top1": val_top1, "test_top1": test_top1,
                    "test_images": int(len(xt)), "test_top1_is_full_test_set": int(len(xt)) == 10_000}
            save_checkpoint(out / "best.pt", _cpu(net, baked=True), cfg.model, cfg.variant, meta=meta)
        state = {"config": {**{k: getattr(cfg, k) for k in FIXED_ON_RESUME + ENGINE_KEYS}, "epochs": cfg.epochs,
                            "data": cfg.data},
                 "data": data["info"], "epoch": epoch + 1, "history": history,
                 "optimizers": [opt.state_dict() for opt in opts], "quant_stats": quant_stats_state(net),
                 "logit_scale": logit_scale.detach().cpu(), "rng": rng_state(),
                 "schedule": {"kind": "cosine", "step": (epoch + 1) * steps_per_epoch, "total_steps": total_steps}}
        save_checkpoint(out / "last.pt", _cpu(net, baked=False), cfg.model, cfg.variant,
                        meta={"epoch": epoch + 1, "epochs": cfg.epochs}, extra={"train_state": state})
        write_logs(out, history, title)
        val_text = f"  val {val_top1:6.1%}" if val_top1 is not None else ""
        console.print(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.3f}  train {row['train_top1']:6.1%}"
                      f"{val_text}  test {test_top1:6.1%}{' (best.pt)' if improved else ''}  "
                      f"{row['images_per_s']:.0f} img/s  {seconds:.0f} s")

    done = len(history) >= cfg.epochs
    best_row = _selected_row(history)
    write_json(out / "run.json", {**run_info, "status": "finished" if done else "stopped",
                                  "epochs_done": len(history), "best_epoch": best_row["epoch"],
                                  "best_val_top1": best_row.get("val_top1"),
                                  "best_test_top1": best_row["test_top1"]})
    if done:
        console.print(f"Finished: best.pt is epoch {best_row['epoch']} (selected on "
                      f"{'validation' if best_row.get('val_top1') is not None else 'the last epoch'}), test top-1 "
                      f"{best_row['test_top1']:.2%}; use it with 'bnnflow build {cfg.model} --variant {cfg.variant} "
                      f"--checkpoint {out / 'best.pt'}'.")
    else:
        console.print(f"Stopped after epoch {len(history)} of {cfg.epochs}: continue with "
                      f"'bnnflow train --resume --out {out}'.")
    return {"out": out, "history": history, "best_top1": best_row["test_top1"], "best_epoch": best_row["epoch"],
            "stopped": not done}


def _selection_score(row: dict) -> float:
    """What best.pt is chosen by: the held-out split's top-1 only; without one, the latest epoch."""
    return row["val_top1"] if row.get("val_top1") is not None else float(row["epoch"])


def _selected_row(history: list[dict]) -> dict:
    """The epoch best.pt holds: highest validation top-1 (first of equals), or the last epoch."""
    if history and all(r.get("val_top1") is not None for r in history):
        top = max(r["val_top1"] for r in history)
        return next(r for r in history if r["val_top1"] == top)
    return history[-1]


def _cpu(net, baked: bool):
    """A CPU copy of the state to save: raw (parametrized, latent weights) for last.pt; for best.pt
    baked plain weights, binary ones as int8 +-1 (Brevitas' sign, 0 -> +1: a quarter of the
    size, and load_state_dict casts them back to float)."""
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
    for name, _ in binary_layers(net):
        w = sd[f"{name}.weight"]
        sd[f"{name}.weight"] = torch.where(w >= 0, 1, -1).to(torch.int8)
    return _Holder(sd)
