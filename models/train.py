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

Every epoch draws its shuffle and augmentation from a generator seeded by (seed, epoch), so a
resumed run repeats an uninterrupted one exactly.

This module is the training itself; its neighbours hold the rest of the command:
train_config.py (flags, TrainConfig, checks; loaded by `bnnflow --help` without torch),
train_data.py (the CIFAR-10 splits), run_folder.py (folder, --resume recipe, logs, run.json)
and train_state.py (what last.pt and best.pt hold).  The names they define are re-exported
here, where callers have always imported them from.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bnnflow.cores import usable_cores
from bnnflow.errors import BnnflowError
from bnnflow.images import CHANNELS, IMAGE_SIZE

# re-exported: callers import these from bnnflow.models.train
from .run_folder import (LOG_COLUMNS, RUN_FILES, TEACHER_LOGITS, default_out, late_gain, merge_resume,  # noqa: F401
                         open_run, plan_run_folder, plot_curve, selected_row, selection_score, write_logs, write_run_json)
from .train_config import (DEFAULT_BN_IMAGES, DEFAULT_LR, DEFAULT_PSI_LR, DEFAULT_VAL_SIZE,  # noqa: F401
                           ENGINE_KEYS, ENGINES, EVAL_COMPILE_MIN_IMAGES, FIXED_ON_RESUME, MODELS, OPTIMIZERS,
                           RECIPE_DEFAULTS, TrainConfig, add_train_parser, check_config, config_from_args)
from .train_data import check_same_data, load_data, to_device_tensors  # noqa: F401
from .train_state import (cpu_copy, quant_stats_state, restore_quant_stats, rng_state, save_best,  # noqa: F401
                          save_last, set_rng_state)



# ------------------------------------------------------------------------------------ building blocks


def pick_device(name: str):
    """--device: auto is CUDA where PyTorch sees a GPU."""
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


def prepare_model(cfg: TrainConfig, device):
    """The network with this run's training-time parametrizations, and the logit temperature."""
    import torch

    from . import psi, recu
    from .zoo import build_model

    torch.manual_seed(cfg.seed)
    net = _user_network(cfg) if cfg.is_user_model else build_model(cfg.model, cfg.variant)
    if cfg.recu:
        recu.apply_recu(net, recu.tau_schedule(0.0, cfg.tau_start, cfg.tau_end))
    if cfg.optimizer == "psi":
        psi.make_scale_invariant(net)
    net.to(device)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    binary = bool(linears) and any(m is linears[-1] for _, m in recu.binary_layers(net))
    # binary classifier: logits are sums of +-1 over fan-in features, std ~ sqrt(fan_in)
    s0 = -0.5 * math.log(linears[-1].in_features) if binary else 0.0
    logit_scale = torch.nn.Parameter(torch.tensor(s0, device=device))
    return net, logit_scale


def _user_network(cfg: TrainConfig):
    """A user's Brevitas network as its factory makes it, fed raw pixels (scaled as --input-scale says)."""
    import copy

    import torch

    from .user_model import build_user_network, running

    net = build_user_network(cfg.model, cfg.model_args or {}, cfg.input_scale)
    # one training forward on a copy (its statistics stay untouched): a network that cannot take CIFAR-10
    # batches fails here in one sentence, not in a traceback from the first step
    with running(cfg.model, "Training"):
        logits = copy.deepcopy(net).train()(torch.zeros(2, CHANNELS, IMAGE_SIZE, IMAGE_SIZE))
    if not torch.is_tensor(logits):
        raise BnnflowError(f"{cfg.model} returns a {type(logits).__name__}, not a tensor of logits: let its last "
                           "layer return a plain tensor (return_quant_tensor=False).")
    if logits.ndim != 2 or logits.shape[1] != 10:
        raise BnnflowError(f"{cfg.model} returns logits of shape {tuple(logits.shape)}: training on CIFAR-10 needs "
                           "N x 10 (ten classes).")
    return net


def make_optimizers(cfg: TrainConfig, net, logit_scale, device) -> list:
    """[Adam or SGD] (+ PSI for the scale-invariant weights); each group's base_lr is the peak
    that the schedule scales step by step."""
    import torch

    from . import psi

    lr = cfg.lr
    covered, psi_opts = set(), []
    if cfg.optimizer == "psi":
        groups, covered = psi.psi_param_groups(net, torch.zeros(2, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, device=device))
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


EVAL_BATCH = 500


def eval_logits(net, x_uint8, batch: int = EVAL_BATCH):
    """(first image index, fp32 logits) per batch of uint8 NCHW images, in eval mode and without
    gradients; `net` is a model or an engine.Engine (its fp32 forward, equal to Brevitas')."""
    import torch

    forward = getattr(net, "eval_forward", net)
    module = getattr(net, "net", net)
    was = module.training
    module.eval()
    try:
        for i in range(0, len(x_uint8), batch):
            with torch.no_grad():  # not held across the yield: the caller keeps its own grad mode
                logits = forward(x_uint8[i:i + batch].float())
            yield i, logits
    finally:
        module.train(was)


def evaluate_tensors(net, x_uint8, y, logit_scale=None, batch: int = EVAL_BATCH) -> tuple[float, float, "object"]:
    """(mean loss, top-1, predictions) in eval mode (fp32) on uint8 NCHW images (eval_logits)."""
    import torch
    import torch.nn.functional as F

    loss_sum, correct, preds = 0.0, 0, []
    scale = logit_scale.detach().exp() if logit_scale is not None else 1.0
    for i, logits in eval_logits(net, x_uint8, batch):
        loss_sum += float(F.cross_entropy(logits * scale, y[i:i + batch], reduction="sum"))
        p = logits.argmax(1)
        preds.append(p)
        correct += int((p == y[i:i + batch]).sum())
    n = max(len(x_uint8), 1)
    return loss_sum / n, correct / n, torch.cat(preds) if preds else None


# ------------------------------------------------------------------------------------------ one run


def train(cfg: TrainConfig, console=None) -> dict:
    """Run (or resume) one training run; returns a summary dict. Under torchrun with several processes
    the run is data-parallel (train_ddp.py) and only rank 0 writes and prints."""
    from rich.console import Console

    from .train_ddp import maybe_parallel

    console = console or Console(quiet=True)
    with maybe_parallel(cfg.device) as parallel:
        if parallel is not None and not parallel.main:
            console = Console(quiet=True)
        return _train(cfg, console, parallel)


def _train(cfg: TrainConfig, console, parallel) -> dict:
    cfg, out, saved = open_run(cfg) if parallel is None else _open_on_rank0(cfg, parallel)
    already = _nothing_to_do(cfg, out, saved, console)
    if already is not None:
        return already
    run = _start_run(cfg, out, saved, console, parallel)
    for epoch in range(run.start_epoch, run.end_epoch):
        row, seconds, improved = _run_epoch(run, epoch)
        _record_epoch(run, row, improved)
        _print_epoch(console, run.cfg, row, improved, seconds)
    return _finish(run, console)


def _open_on_rank0(cfg: TrainConfig, parallel):
    """open_run on rank 0 only (it may replace the folder), its result (or its error) on every rank."""
    opened = None
    if parallel.main:
        try:
            opened = open_run(cfg)
        except BnnflowError as exc:
            opened = exc
    opened = parallel.share(opened)
    if isinstance(opened, BnnflowError):
        raise opened
    return opened


@dataclass
class _Run:
    """What a training run carries from epoch to epoch."""
    cfg: TrainConfig
    out: Path
    device: object
    data_info: dict  # paths, sha256 and sizes of the splits (run.json, last.pt, best.pt's manifest)
    tensors: tuple  # x, y (train), xv, yv (held out), xt, yt (test): uint8 NCHW images, labels; on the device
    net: object
    logit_scale: object
    opts: list
    engine: object
    history: list[dict]
    start_epoch: int
    steps_per_epoch: int
    run_info: dict  # run.json without its status
    best: float = -1.0  # selection_score of the epoch in best.pt; -1 before there is one
    main: bool = True  # the process that writes the run folder (rank 0 under torchrun)
    soft: object = None  # distillation: the teacher's class probabilities per training image (distill.py)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def end_epoch(self) -> int:  # --stop-after ends early; the schedule still spans --epochs
        return min(self.cfg.epochs, self.cfg.stop_after) if self.cfg.stop_after else self.cfg.epochs

    @property
    def title(self) -> str:
        return (f"{self.cfg.name} " + ("ReCU " if self.cfg.recu else "") + f"{self.cfg.optimizer} "
                f"({self.data_info['train_images']} train images)")


def _nothing_to_do(cfg: TrainConfig, out: Path, saved: dict | None, console) -> dict | None:
    """The summary when a resumed run already reached --stop-after; an error when it has more epochs
    than --epochs; None when there are epochs to train."""
    if saved is None:
        return None
    done = saved["train_state"]["epoch"]
    if cfg.stop_after is not None and done >= min(cfg.stop_after, cfg.epochs):
        console.print(f"The run in {out} already has {done} epochs: nothing to do.")
        return {"out": out, "history": saved["train_state"]["history"], "stopped": True}
    if done > cfg.epochs:
        raise BnnflowError(f"The run in {out} already has {done} epochs, more than "
                           f"--epochs {cfg.epochs}: nothing to shorten.")
    return None


def _set_up_device(cfg: TrainConfig, parallel=None):
    """The device, with torch's threads set, deterministic cuDNN, and cfg.bf16 decided for it."""
    import torch

    from .engine import bf16_default

    device = pick_device(cfg.device) if parallel is None else parallel.device
    # torchrun's processes on one node share its cores
    per_process = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if parallel is not None else 1
    torch.set_num_threads(cfg.threads or max(usable_cores() // per_process, 1))
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if cfg.bf16 is None:
        cfg.bf16 = cfg.engine == "fast" and bf16_default(device)
    return device


def _start_run(cfg: TrainConfig, out: Path, saved: dict | None, console, parallel=None) -> _Run:
    """Data, model, optimizers and engine of a new run, or of a resumed one as last.pt left it;
    run.json says "running" from here on."""
    import torch

    from .distill import attach_teacher
    from .engine import Engine

    device = _set_up_device(cfg, parallel)
    main = parallel is None or parallel.main
    data = load_data(cfg)
    check_same_data(saved, data, out)
    tensors = to_device_tensors(data, device)
    steps_per_epoch = max(len(tensors[0]) // min(cfg.batch_size, len(tensors[0])), 1)
    net, logit_scale = prepare_model(cfg, device)
    if saved is not None:
        opts = _restore(cfg, saved, out, net, logit_scale, device)
        history, start_epoch = saved["train_state"]["history"], saved["train_state"]["epoch"]
        console.print(f"Resuming {out} after epoch {start_epoch} of {cfg.epochs}.")
    else:
        opts = make_optimizers(cfg, net, logit_scale, device)
        history, start_epoch = [], 0
        if main:
            out.mkdir(parents=True, exist_ok=True)
    # not compiled under torchrun: the global batch norm's all-reduce is not traced
    engine = Engine(net, logit_scale, opts, device, cfg.engine, cfg.bf16, cfg.compile and parallel is None,
                    cfg.label_smoothing, parallel)
    run_info = {"config": cfg.recipe(), "engine": {k: getattr(engine, k if k != "engine" else "kind")
                                                   for k in ENGINE_KEYS}, "data": data["info"],
                "device": str(device), "threads": torch.get_num_threads(), "command": "bnnflow train", "out": str(out)}
    if parallel is not None:
        run_info.update(processes=parallel.world, command="torchrun ... bnnflow train")
    soft = attach_teacher(cfg, out, tensors, engine, run_info, saved is not None) if cfg.teacher else None
    run = _Run(cfg, out, device, data["info"], tensors, net, logit_scale, opts, engine, history, start_epoch,
               steps_per_epoch, run_info, selection_score(selected_row(history)) if history else -1.0, main, soft)
    engine.compile_eval = (run.end_epoch - start_epoch) * len(tensors[2]) >= EVAL_COMPILE_MIN_IMAGES
    if main:
        write_run_json(out, run_info)
    _announce(run, console)
    return run


def _announce(run: _Run, console) -> None:
    """The one line that says what will be trained, where, how, and into which folder."""
    import torch

    cfg, engine = run.cfg, run.engine
    console.print(f"Training [bold]{cfg.name}[/] on {len(run.tensors[0])} CIFAR-10 images "
                  f"({len(run.tensors[2])} held out to select best.pt) for epochs {run.start_epoch + 1}..{run.end_epoch} "
                  f"of {cfg.epochs} on {run.device} ({torch.get_num_threads()} threads, {cfg.engine} engine"
                  f"{', bf16' if engine.bf16 else ''}{', compiled' if engine.compile else ''}), run folder {run.out}")
    images = _bn_images(run)
    before = (run.history[-1].get("bn_images") or 0) if run.history else images
    what = (f"re-estimated over the same {images:,} augmented training images (--bn-images N; 0 keeps the running "
            "averages)" if images else "the running averages of training (--bn-images 0)")
    change = (f", from epoch {run.start_epoch + 1} on (until now: "
              f"{f'{before:,} images' if before else 'the running averages'})" if before != images else "")
    console.print(f"Batch-norm statistics for each evaluation: {what}{change}.")
    if run.soft is not None:
        t = run.run_info["teacher"]
        labels = (f"its labels read back from {TEACHER_LOGITS}" if t.get("logits_reused")
                  else f"labelled in {t['seconds']:.0f} s")
        console.print(f"Distilling from {cfg.teacher} (top-1 {t['train_top1']:.1%} on these training images, "
                      f"{labels}), weight {cfg.teacher_weight}, temperature {cfg.teacher_temperature}")


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
        raise BnnflowError(f"{out / 'last.pt'} does not fit {cfg.name} with this recipe "
                           f"({type(exc).__name__}): it was written by another version; start a new run.") from None
    set_rng_state(st["rng"])
    return opts


def _train_epoch(engine, x, y, epoch: int, cfg: TrainConfig, total_steps: int, progress_bar, soft=None) -> dict:
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
        loss, logits = engine.step(augment(x[idx].float(), gen), yb, soft[idx] if soft is not None else None)
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


def _run_epoch(run: _Run, epoch: int) -> tuple[dict, float, bool]:
    """Train one epoch, then evaluate on the held-out and test images: (the epoch's log row, seconds
    of training, whether best.pt selects it)."""
    import torch
    from tqdm import tqdm

    from . import recu

    cfg, engine, (x, y, xv, yv, xt, yt) = run.cfg, run.engine, run.tensors
    tau = None
    if cfg.recu:
        tau = recu.tau_schedule(epoch / cfg.epochs, cfg.tau_start, cfg.tau_end)
        recu.set_tau(run.net, tau)
    engine.real_weights = epoch < cfg.real_weights_epochs
    t0, cpu0 = time.time(), time.process_time()
    with tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
              disable=not cfg.progress, mininterval=0.5 if sys.stderr.isatty() else 60, file=sys.stderr,
              dynamic_ncols=True) as bar:
        stats = _train_epoch(engine, x, y, epoch, cfg, run.total_steps, bar, run.soft)
    seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
    processes = run.run_info.get("processes") or 1  # torchrun's, on one node
    t1 = time.time()
    bn_images = _precise_bn(run)
    val_loss, val_top1, _ = evaluate_tensors(engine, xv, yv, run.logit_scale) if len(xv) else (None, None, None)
    # the test set is only reported, never selects: with --test-eval selected, only for the epochs best.pt takes
    selected = selection_score({"epoch": epoch + 1, "val_top1": val_top1}) > run.best
    test_loss, test_top1 = (evaluate_tensors(engine, xt, yt, run.logit_scale)[:2]
                            if selected or cfg.test_eval == "every" else (None, None))
    row = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_top1": stats["train_top1"],
           "val_loss": val_loss, "val_top1": val_top1, "test_loss": test_loss, "test_top1": test_top1,
           "lr": stats["lr"], "tau": tau, "seconds": round(seconds, 2),
           "images_per_s": round(stats["seen"] / seconds, 1),
           "engine": cfg.engine + ("+bf16" if engine.bf16 else "") + ("+compile" if engine.compile else ""),
           "eval_seconds": round(time.time() - t1, 2), "bn_images": bn_images,
           # CPU threads of the epoch, all processes (--threads may change on resume)
           "threads": torch.get_num_threads() * processes,
           # the training steps' CPU time, all threads (torchrun: this process's x the processes): unlike
           # wall seconds x threads it does not count the time other programs took the cores
           "cpu_seconds": round(cpu_seconds * processes, 2)}
    return row, seconds, selected


def _precise_bn(run: _Run) -> int | None:
    """Re-estimate the batch-norm statistics for this epoch's evaluation (precise_bn.py); the images used,
    or None where the run keeps the running averages."""
    from .precise_bn import training_batches

    images = _bn_images(run)
    if not images or not run.engine.reestimate_bn(training_batches(run.tensors[0], images, run.cfg.batch_size,
                                                                   run.cfg.seed)):
        return None
    return images


def _bn_images(run: _Run) -> int:
    """How many training images precise batch norm averages over in this run (0: off)."""
    cfg, n = run.cfg, len(run.tensors[0])
    images = min(DEFAULT_BN_IMAGES if cfg.bn_images is None else cfg.bn_images, n)
    return images if images >= 2 else 0


def _record_epoch(run: _Run, row: dict, selected: bool) -> None:
    """Add the epoch to the history; best.pt when it is the selected one, last.pt and the logs every time."""
    run.history.append(row)
    if selected:
        run.best = selection_score(row)
    if not run.main:
        return
    if selected:
        save_best(run.out, run.net, run.cfg, run.data_info, row, len(run.tensors[2]), int(len(run.tensors[4])))
    save_last(run.out, run.net, run.cfg, run.data_info, run.history, run.opts, run.logit_scale,
              run.steps_per_epoch, run.total_steps)
    write_logs(run.out, run.history, run.title)


def _print_epoch(console, cfg: TrainConfig, row: dict, improved: bool, seconds: float) -> None:
    """One line per epoch (the tqdm bar on stderr is transient)."""
    val_text = f"  val {row['val_top1']:6.1%}" if row["val_top1"] is not None else ""
    test_text = f"  test {row['test_top1']:6.1%}" if row["test_top1"] is not None else ""
    console.print(f"epoch {row['epoch']:3d}/{cfg.epochs}  loss {row['train_loss']:.3f}  train {row['train_top1']:6.1%}"
                  f"{val_text}{test_text}{' (best.pt)' if improved else ''}  "
                  f"{row['images_per_s']:.0f} img/s  {seconds:.0f} s")


def _model_words(cfg: TrainConfig) -> str:
    """The network as 'bnnflow build' names it."""
    import json

    from bnnflow.cli_args import network_words
    from bnnflow.model_ref import input_affine

    if not cfg.is_user_model:
        return network_words(cfg.model, cfg.variant)
    step, mean, std = input_affine(cfg.input_scale)
    return network_words(cfg.model, cfg.variant, model_args=json.dumps(cfg.model_args) if cfg.model_args else None,
                         input_scale="unit" if step != 1.0 else None,
                         input_mean=",".join(map(repr, mean)) if mean is not None else None,
                         input_std=",".join(map(repr, std)) if std is not None else None)


def _finish(run: _Run, console) -> dict:
    """run.json's final status, the line that says what to do next, and the summary."""
    cfg, out, history = run.cfg, run.out, run.history
    done = len(history) >= cfg.epochs
    best_row = selected_row(history)
    if run.main:
        write_run_json(out, run.run_info, history, done)
    if done:
        console.print(f"Finished: best.pt is epoch {best_row['epoch']} (selected on "
                      f"{'validation' if best_row.get('val_top1') is not None else 'the last epoch'}), test top-1 "
                      f"{best_row['test_top1']:.2%}; use it with 'bnnflow build {_model_words(cfg)} "
                      f"--checkpoint {out / 'best.pt'}'.")
        gain = late_gain(history)
        if gain is not None:
            console.print(f"Over the last 15 % of its epochs the best validation top-1 rose {gain:.2f} points: "
                          + ("the curve has flattened." if gain < 0.3 else
                             "not flattened yet, so a longer schedule (--epochs) would likely gain more."))
    else:
        console.print(f"Stopped after epoch {len(history)} of {cfg.epochs}: continue with "
                      f"'bnnflow train --resume --out {out}'.")
    return {"out": out, "history": history, "best_top1": best_row["test_top1"], "best_epoch": best_row["epoch"],
            "stopped": not done}
