"""Distillation from a trained checkpoint: its soft labels for the training images, and the loss.

The teacher (any checkpoint `bnnflow evaluate` reads, e.g. the committed ResNetE for a CNV student)
labels each training image once, un-augmented, so a step costs no teacher forward pass. The logits
are kept in the run folder (run_folder.TEACHER_LOGITS, 1.8 MB for 45,000 images), and a resume with
the same teacher on the same images reads them back. They are a binary network's integer sums: one
scale, fitted by maximum likelihood on those images, calibrates them before the temperature softens them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bnnflow.atomic import atomic_path
from bnnflow.digest import bytes_sha256, file_sha256
from bnnflow.errors import BnnflowError

from .checkpoint import load_checkpoint
from .run_folder import TEACHER_LOGITS

CALIBRATION_STEPS = 50  # LBFGS iterations fitting the one logit scale (converges in a handful)


def teacher_logits(path: str | Path, x_uint8: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The teacher's fp32 eval logits on uint8 NCHW images (through the fast twin for bnnflow's models)."""
    from . import fast

    net, _ = load_checkpoint(path)
    net.to(x_uint8.device)
    try:
        forward = fast.make_twin(net).eval()
    except TypeError:  # a user's network: Brevitas' own forward
        forward = net
    net.eval()
    fast.clamp_binary_weights(fast.binary_latent_weights(net))
    with torch.no_grad():
        out = [forward(x_uint8[i:i + batch].float()) for i in range(0, len(x_uint8), batch)]
    logits = torch.cat(out).float().cpu()
    if logits.ndim != 2 or logits.shape[1] != 10:
        raise BnnflowError(f"The teacher {path} gives logits of shape {tuple(logits.shape)}, not N x 10 CIFAR-10 "
                           "classes: pass a CIFAR-10 checkpoint as --teacher.")
    return logits


def kept_teacher_logits(path: str | Path, sha256: str, x_uint8: torch.Tensor, keep: Path
                        ) -> tuple[torch.Tensor, bool]:
    """(the teacher's logits on the images, whether they were read from `keep`): read back when `keep` holds
    this teacher's (by sha256) on these very images, else computed and written there atomically. A file that
    does not load or holds another key is recomputed: it is a cache, nothing of the user's."""
    key = {"teacher_sha256": sha256, "images_sha256": bytes_sha256(x_uint8.cpu().contiguous().numpy())}
    if keep.is_file():
        try:
            kept = torch.load(keep, map_location="cpu", weights_only=True)
            if kept.get("key") == key and kept["logits"].shape == (len(x_uint8), 10):
                return kept["logits"], True
        except Exception:  # damaged or from another version: label again
            pass
    logits = teacher_logits(path, x_uint8)
    with atomic_path(keep) as tmp:
        torch.save({"key": key, "logits": logits}, tmp)
    return logits, False


def calibrated_scale(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The scale s minimising cross-entropy(s * logits, y): temperature scaling (Guo et al. 2017)."""
    log_s = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_s], max_iter=CALIBRATION_STEPS, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits * log_s.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_s.detach().exp())


def soft_targets(path: str | Path, sha256: str, x_uint8: torch.Tensor, y: torch.Tensor, temperature: float,
                 keep: Path) -> tuple[torch.Tensor, dict]:
    """(the teacher's softened class probabilities for the images, what the run logs about the teacher);
    the logits come from `keep` where kept_teacher_logits finds them there."""
    t0 = time.time()
    logits, reused = kept_teacher_logits(path, sha256, x_uint8, keep)
    y = y.cpu()
    scale = calibrated_scale(logits, y)
    probs = F.softmax(logits * scale / temperature, dim=1)
    info = {"path": str(path), "train_top1": round(float((logits.argmax(1) == y).float().mean()), 4),
            "logit_scale": round(scale, 6), "seconds": round(time.time() - t0, 1), "logits_reused": reused}
    return probs.to(x_uint8.device), info


def distillation_loss(scaled: torch.Tensor, yb: torch.Tensor, soft: torch.Tensor, weight: float,
                      temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - weight) x cross-entropy on the labels + weight x T^2 x KL(teacher || student at temperature T)
    (Hinton et al. 2015); `scaled` are the student's logits times its learnt logit scale."""
    ce = F.cross_entropy(scaled, yb, label_smoothing=label_smoothing)
    kd = F.kl_div(F.log_softmax(scaled.float() / temperature, dim=1), soft, reduction="batchmean")
    return (1.0 - weight) * ce + weight * temperature ** 2 * kd


def attach_teacher(cfg, out: Path, tensors: tuple, engine, run_info: dict, resumed: bool):
    """The teacher's soft labels of the run's training images (tensors[0]), its settings on the engine and its
    record in run.json; a resumed run refuses a teacher file that has changed since it started."""
    sha = file_sha256(cfg.teacher)
    before = out / "run.json"
    was = json.loads(before.read_text()).get("teacher", {}) if resumed and before.is_file() else {}
    if was.get("sha256") not in (None, sha):  # checked before the minutes of labelling
        raise BnnflowError(f"The teacher {cfg.teacher} has changed since the run in {out} started (another "
                           "sha256): restore that file to resume, or start a new run.")
    soft, info = soft_targets(cfg.teacher, sha, tensors[0], tensors[1], cfg.teacher_temperature, out / TEACHER_LOGITS)
    info["sha256"] = sha
    # every start's labelling (or reading back): `bnnflow runs` counts all of it in the run's CPU-hours
    info["seconds_all_starts"] = round(was.get("seconds_all_starts", 0.0) + info["seconds"], 1)
    engine.teacher_weight, engine.teacher_temperature = cfg.teacher_weight, cfg.teacher_temperature
    run_info["teacher"] = info
    return soft
