"""Sweep files: a small YAML or JSON file in, the list of design points it names out.

    grid:                       # every combination of the values (a scalar or a list each)
      model: [cnv, resnete]
      variant: tiny
      folding: [committed, auto]
    points:                     # and/or single points, each with its own keys
      - {model: densenet, variant: small, board: zcu104}

A file with a `train:` section (its own grid and/or points) is a training sweep instead: see
sweep_train_spec.py.

A point's keys (all but `model` optional):
  model, variant           a zoo network and its variant (`bnnflow models`); default variant "default"
  board                    a board (`bnnflow boards`); default pynq-z2
  folding                  "committed" (the board's committed config, else FINN's target_fps heuristic),
                           "auto" (bnnflow's folding search), "fps:N" (FINN's target_fps = N) or a
                           folding-config JSON (relative to the sweep file); default "committed"
  stop_after               the last build step (`bnnflow steps`); default generate_estimate_reports
  weights                  "committed" (models/checkpoints/MODEL-VARIANT.pt where one exists, else random),
                           "random", or a checkpoint file (relative to the sweep file); default "committed"
  seed                     seed of random weights; default 0
  lut_max, bram_max        the budget as a share of the device; default the board's

Every problem ends in one sentence naming the file and the point; nothing here runs FINN.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bnnflow.errors import BnnflowError

TOP_KEYS = ("grid", "points", "train")
ESTIMATE_STEP = "generate_estimate_reports"  # = flow.ESTIMATE_STEP (flow imports FINN; this module must not)
FOLDING_WORDS = ("committed", "auto")
WEIGHT_WORDS = ("committed", "random")


@dataclass(frozen=True)
class DesignPoint:
    """One design of a sweep, as the file names it (paths made absolute)."""

    model: str
    variant: str = "default"
    board: str = "pynq-z2"
    folding: str = "committed"
    stop_after: str = ESTIMATE_STEP
    weights: str = "committed"
    seed: int = 0
    lut_max: float | None = None
    bram_max: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """'cnv/tiny on pynq-z2, folding auto' with only what differs from the defaults after the board."""
        extra = [f"{f.name} {getattr(self, f.name)}" for f in fields(self)[3:]
                 if getattr(self, f.name) != f.default]
        return f"{self.model}/{self.variant} on {self.board}" + (f" ({', '.join(extra)})" if extra else "")


KEYS = tuple(f.name for f in fields(DesignPoint))


def load_sweep(path: str | Path, check_steps: tuple[str, ...] | None = None) -> list:
    """The points of a sweep file, in file order (grid first), each once: DesignPoints, or TrainPoints
    (sweep_train_spec.py) for a file with a 'train' section.

    check_steps: the build's step names (flow.STEP_NAMES) that `stop_after` must be one of."""
    path = Path(path)
    if not path.is_file():
        raise BnnflowError(f"Sweep file {path} does not exist: pass a YAML or JSON file with 'grid' and/or 'points'.")
    return parse_sweep(path.read_text(errors="replace"), path, check_steps)


def parse_sweep(text: str, path: Path, check_steps: tuple[str, ...] | None = None) -> list:
    data = _load(text, path)
    where = f"Sweep file {path}"
    if not isinstance(data, dict) or not data:
        raise BnnflowError(f"{where} must be a mapping with 'grid' and/or 'points', not {_kind(data)}.")
    unknown = [str(k) for k in data if k not in TOP_KEYS]
    if unknown:
        raise BnnflowError(f"{where} has unknown top-level key {unknown[0]!r}: use 'grid' and/or 'points' "
                           "(design points), or 'train' (training points).")
    if "train" in data:
        return _train_points(data, where, path.parent)
    out: list[DesignPoint] = []
    for what, p in _raw_points(data, where, ""):
        point = _point(p, f"{where}, {what}", path.parent, check_steps)
        if point not in out:
            out.append(point)
    return out


def _train_points(data: dict, where: str, base: Path) -> list:
    from .sweep_train_spec import train_point

    if len(data) > 1:
        raise BnnflowError(f"{where} has both design points and a 'train' section: put the training points in a "
                           "file of their own.")
    section = data["train"]
    if not isinstance(section, dict) or not section or any(k not in ("grid", "points") for k in section):
        raise BnnflowError(f"{where}: 'train' must be a mapping with 'grid' and/or 'points', not {_kind(section)}.")
    out: list = []
    for what, p in _raw_points(section, where, "training "):
        point = train_point(p, f"{where}, {what}", base)
        if point not in out:
            out.append(point)
    return out


def _raw_points(section: dict, where: str, kind: str) -> list[tuple[str, dict]]:
    """(where in the file, mapping) of a section's grid combinations, then its single points."""
    raw: list[tuple[str, dict]] = []
    if "grid" in section:
        raw += [(f"the {kind}grid", p) for p in _grid_points(section["grid"], where)]
    if "points" in section:
        points = section["points"]
        if not isinstance(points, list) or not points:
            raise BnnflowError(f"{where}: 'points' must be a non-empty list of mappings, not {_kind(points)}.")
        raw += [(f"{kind}point {i + 1}", p) for i, p in enumerate(points)]
    return raw


def _load(text: str, path: Path):
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BnnflowError(f"Sweep file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                               f"{exc.msg.rstrip('.')}.") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "cannot be parsed").split()).rstrip(".")
        raise BnnflowError(f"Sweep file {path} is not valid YAML{at}: {problem}.") from None


def _grid_points(grid, where: str) -> list[dict]:
    if not isinstance(grid, dict) or not grid:
        raise BnnflowError(f"{where}: 'grid' must be a mapping of keys to a value or a list of values, "
                           f"not {_kind(grid)}.")
    axes = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise BnnflowError(f"{where}: the grid's {key!r} is an empty list, so the grid has no points.")
        axes[key] = values
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _point(p, where: str, base: Path, check_steps: tuple[str, ...] | None) -> DesignPoint:
    if not isinstance(p, dict):
        raise BnnflowError(f"{where} must be a mapping of {', '.join(KEYS)}, not {_kind(p)}.")
    unknown = [str(k) for k in p if k not in KEYS]
    if unknown:
        raise BnnflowError(f"{where} has unknown key {unknown[0]!r}: the keys are {', '.join(KEYS)}.")
    if "model" not in p:
        raise BnnflowError(f"{where} names no model: give 'model' (see 'bnnflow models').")
    for key in ("model", "variant", "board", "folding", "stop_after", "weights"):
        if key in p and not isinstance(p[key], str):
            raise BnnflowError(f"{where}: {key} must be a name, not {_kind(p[key])}.")
    _check_network(p["model"], p.get("variant", "default"), where)
    _check_board(p.get("board", "pynq-z2"), where)
    stop = p.get("stop_after", ESTIMATE_STEP)
    if check_steps is not None and stop not in check_steps:
        raise BnnflowError(f"{where}: unknown stop_after step {stop!r}: see 'bnnflow steps' for the step names.")
    seed = p.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BnnflowError(f"{where}: seed must be a whole number from 0, not {seed!r}.")
    limits = {k: _share(p.get(k), k, where) for k in ("lut_max", "bram_max")}
    return DesignPoint(model=p["model"], variant=p.get("variant", "default"), board=p.get("board", "pynq-z2"),
                       folding=_folding(p.get("folding", "committed"), where, base), stop_after=stop,
                       weights=_weights(p.get("weights", "committed"), where, base), seed=seed, **limits)


def _check_network(model: str, variant: str, where: str) -> None:
    from bnnflow.catalog import MODEL_NAMES

    if model not in MODEL_NAMES:
        raise BnnflowError(f"{where}: unknown model {model!r}: choose one of {', '.join(MODEL_NAMES)}.")
    from bnnflow.models.zoo import MODELS

    if variant not in MODELS[model]:
        raise BnnflowError(f"{where}: unknown variant {variant!r} of {model}: choose one of "
                           f"{', '.join(MODELS[model])}.")


def _check_board(board: str, where: str) -> None:
    from bnnflow.hw.boards import BOARDS

    if board not in BOARDS:
        raise BnnflowError(f"{where}: unknown board {board!r}: choose one of {', '.join(BOARDS)}.")


def _share(value, key: str, where: str) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 < value <= 1.0:
        raise BnnflowError(f"{where}: {key} must be a share of the device in (0, 1], not {value!r}.")
    return float(value)


def _folding(value: str, where: str, base: Path) -> str:
    if value in FOLDING_WORDS:
        return value
    if value.startswith("fps:"):
        fps = value[4:]
        if not fps.isdigit() or int(fps) < 1:
            raise BnnflowError(f"{where}: folding {value!r} must name a frame rate such as fps:1000.")
        return f"fps:{int(fps)}"
    return _file(value, "folding", where, base, "committed, auto, fps:N or a folding-config JSON")


def _weights(value: str, where: str, base: Path) -> str:
    if value in WEIGHT_WORDS:
        return value
    return _file(value, "weights", where, base, "committed, random or a checkpoint file")


def _file(value: str, key: str, where: str, base: Path, allowed: str) -> str:
    path = (base / value).resolve() if value else base
    if not value or not path.is_file():
        raise BnnflowError(f"{where}: {key} {value!r} is neither a file nor one of {allowed}.")
    return str(path)


def _kind(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the text {str(value)[:40]!r}"}.get(
        type(value), f"{type(value).__name__} {str(value)[:40]}")
