"""Training points of a sweep file: its `train:` section, each point one `bnnflow train` run.

    train:
      grid:                     # every combination, as for design points
        model: cnv
        variant: [tiny, small]
        optimizer: [adam, sgd]
        seed: [0, 1]
      points:
        - {model: resnete, epochs: 30, lr: 0.001}

A training point's keys are `bnnflow train`'s recipe options (model, variant, epochs, batch_size, lr,
optimizer, psi_lr, momentum, weight_decay, seed, recu, tau_start, tau_end, label_smoothing,
warmup_epochs, real_weights_epochs, teacher, teacher_weight, teacher_temperature, subset, test_subset,
val_size), how its steps run (engine, bf16, compile) and data
(a CIFAR-10 copy, relative to the sweep file; default: each worker's $BNNFLOW_DATA or ../shared/data).
Defaults are train's; lr defaults to the optimizer's, so a point that spells it out is the same point.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, field, fields, make_dataclass
from pathlib import Path

from bnnflow.errors import BnnflowError


# a training point: train's recipe options, how its steps run and its data, with TrainConfig's defaults
# (one place for them); not where the run is kept or how it is driven (out, resume, threads, ...)
POINT_KEYS = ("model", "variant", "epochs", "batch_size", "lr", "optimizer", "psi_lr", "momentum", "weight_decay",
              "seed", "recu", "tau_start", "tau_end", "label_smoothing", "warmup_epochs", "real_weights_epochs",
              "teacher", "teacher_weight", "teacher_temperature", "subset", "test_subset", "val_size", "engine", "bf16",
              "compile", "data")
# keys added after the first sweeps: left out of a point's identity at their default, so the runs of
# older sweep files keep their hash (and are found finished)
LATER_KEYS = ("real_weights_epochs", "teacher", "teacher_weight", "teacher_temperature")


class _Point:
    """One training run of a sweep, as the file names it (lr resolved, data path made absolute)."""

    def as_dict(self) -> dict:
        d = asdict(self)
        for f in fields(self):
            if f.name in LATER_KEYS and d[f.name] == f.default:
                del d[f.name]
        return d

    @property
    def label(self) -> str:
        """'cnv/tiny (optimizer sgd, seed 1)': the keys that differ from the defaults."""
        extra = [f"{f.name} {getattr(self, f.name)}" for f in fields(self)[2:]
                 if getattr(self, f.name) != f.default and f.name != "lr"]
        return f"{self.model}/{self.variant}" + (f" ({', '.join(extra)})" if extra else "")

    def train_args(self) -> list[str]:
        """`bnnflow train`'s arguments for this point (without --out, --threads, --resume)."""
        args = [self.model]
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            elif value is not None:
                args += [flag, str(value)]
        return args


def _point_class():
    from bnnflow.models.train_config import TrainConfig

    train = {f.name: f for f in fields(TrainConfig)}
    spec = [(k, train[k].type) if train[k].default is MISSING else (k, train[k].type, field(default=train[k].default))
            for k in POINT_KEYS]
    cls = make_dataclass("TrainPoint", spec, bases=(_Point,), frozen=True)
    cls.__module__ = __name__  # pickled by name into the Dask workers
    return cls


TrainPoint = _point_class()
KEYS = tuple(f.name for f in fields(TrainPoint))
INTS = ("epochs", "batch_size", "seed", "warmup_epochs", "real_weights_epochs", "subset", "test_subset", "val_size")
FLOATS = ("lr", "psi_lr", "momentum", "weight_decay", "tau_start", "tau_end", "label_smoothing", "teacher_weight",
          "teacher_temperature")
BOOLS = ("recu", "bf16", "compile")
NAMES = ("model", "variant", "optimizer", "engine", "data", "teacher")
assert set(INTS + FLOATS + BOOLS + NAMES) == set(KEYS)


def train_point(p, where: str, base: Path) -> TrainPoint:
    """The TrainPoint of one mapping of a sweep file's `train:` section; one sentence for any problem."""
    from bnnflow.models.train_config import DEFAULT_LR, ENGINES, OPTIMIZERS, TrainConfig, check_config

    from .sweep_spec import _check_network, _kind

    if not isinstance(p, dict):
        raise BnnflowError(f"{where} must be a mapping of {', '.join(KEYS)}, not {_kind(p)}.")
    unknown = [str(k) for k in p if k not in KEYS]
    if unknown:
        raise BnnflowError(f"{where} has unknown key {unknown[0]!r}: the keys of a training point are "
                           f"{', '.join(KEYS)}.")
    if "model" not in p:
        raise BnnflowError(f"{where} names no model: give 'model' (see 'bnnflow models').")
    for key, value in p.items():
        _check_type(key, value, where)
    for key, allowed in (("optimizer", OPTIMIZERS), ("engine", ENGINES)):
        if key in p and p[key] not in allowed:
            raise BnnflowError(f"{where}: unknown {key} {p[key]!r}: choose one of {', '.join(allowed)}.")
    _check_network(p["model"], p.get("variant", "default"), where)
    values = {k: float(v) if k in FLOATS and v is not None else v for k, v in p.items()}
    for key in ("data", "teacher"):  # paths relative to the sweep file
        if values.get(key) is not None:
            values[key] = _path(key, values[key], where, base)
    point = TrainPoint(**values)
    if point.lr is None:  # train's default, spelt out: a point with and one without it are one run
        point = TrainPoint(**{**point.as_dict(), "lr": DEFAULT_LR[point.optimizer]})
    cfg = TrainConfig(**{k: v for k, v in point.as_dict().items() if k != "data"})
    try:
        check_config(cfg)
    except BnnflowError as exc:
        msg = str(exc)
        raise BnnflowError(f"{where}: {msg[:1].lower() + msg[1:]}") from None
    return point


def _check_type(key: str, value, where: str) -> None:
    from .sweep_spec import _kind

    if value is None and key in ("lr", "subset", "test_subset", "bf16", "data", "teacher"):
        return  # the default
    if key in INTS:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif key in FLOATS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
    elif key in BOOLS:
        ok, what = isinstance(value, bool), "true or false"
    else:
        ok, what = isinstance(value, str) and bool(value), "a name"
    if not ok:
        raise BnnflowError(f"{where}: {key} must be {what}, not {_kind(value)}.")


def _path(key: str, value: str, where: str, base: Path) -> str:
    path = (base / value).expanduser().resolve()
    if key == "data" and not path.exists():
        raise BnnflowError(f"{where}: data {value!r} is neither a CIFAR-10 folder nor a file.")
    if key == "teacher" and not path.is_file():
        raise BnnflowError(f"{where}: teacher {value!r} is not a checkpoint file.")
    return str(path)
