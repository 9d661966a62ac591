"""What a build is: the request a command makes, and the identity a build folder saves.

Every command that builds or reuses a build folder (build, estimate, verify, fold, deploy,
evaluate, benchmark) describes it with one `BuildRequest` and goes through
`build.ensure_build`. The folder's `build_state.json` keeps the `BuildIdentity` it was built
for, so "is this folder the build I asked for?" has one answer, and a mismatch is one sentence
naming what differs. Light on purpose (no FINN, no torch): the CLI imports it for --help.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from bnnflow.digest import file_sha256
from bnnflow.hw.boards import Board
from bnnflow.model_ref import (check_input_scale, is_onnx_model, is_user_model, parse_model_args, parse_model_ref,
                               short_source, user_source)

AUTO_FOLDING = "auto"  # --folding auto: bnnflow's folding search after specialize_layers
FOLDING_DIR = Path(__file__).resolve().parent.parent / "hw" / "folding"


@dataclass
class BuildRequest:
    """One build as a command asks for it.

    model, variant: the network (see `bnnflow models`); board: the target (see `bnnflow boards`).
    checkpoint: trained weights (.pt), or None for random weights calibrated with `seed`.
    any_weights: take whatever weights an existing build folder holds (commands given --build
        without --checkpoint / --random-weights); a new build then uses `checkpoint` / `seed`.
    model may also be a user's network (`file.py:factory`, `package.module:factory`, see
        bnnflow.model_ref), built with `model_args` and fed pixels scaled as `input_scale`.
    out: the build folder (default build/MODEL-VARIANT-BOARD).
    resume / from_step / stop_after / force: where to start and stop, and whether to replace.
    folding: a folding-config JSON, "auto" (the folding search), or None for the board's
        committed config (hw/folding/BOARD/MODEL-VARIANT.json), else FINN's target_fps.
    target_fps: FINN's folding target when no folding config applies.
    lut_max, bram_max: the budget (share of the device) the design must fit; None = the board's.
    """

    model: str
    variant: str = "default"
    board: str = "pynq-z2"
    checkpoint: Path | None = None
    out: Path | None = None
    resume: bool = False
    from_step: str | None = None
    stop_after: str | None = None
    force: bool = False
    target_fps: int | None = None
    folding: Path | None = None
    seed: int = 0
    lut_max: float | None = None
    bram_max: float | None = None
    any_weights: bool = False
    model_args: dict | None = None
    input_scale: str | None = None

    @property
    def auto_folding(self) -> bool:
        return self.folding is not None and str(self.folding) == AUTO_FOLDING


def default_build_dir(model: str, variant: str, board: str) -> Path:
    if is_user_model(model):  # a path and a ':' do not make a folder name
        ref = parse_model_ref(model)
        return Path("build") / f"{ref.short_name}-{board}"
    return Path("build") / f"{model}-{variant}-{board}"


def committed_folding(model: str, variant: str, board: str) -> Path | None:
    if is_user_model(model):
        return None
    path = FOLDING_DIR / board / f"{model}-{variant}.json"
    return path if path.is_file() else None


# models/tie_guard.py's version, part of every build's identity: a build whose weights an older guard
# adjusted (2: boundaries go to the side PyTorch puts a tie on; 1: the nearer side) is rebuilt, never reused
TIE_GUARD_VERSION = 2
EXPORT = f"tie_guard={TIE_GUARD_VERSION}"
FIRST_EXPORT = "tie_guard=1"


@dataclass(frozen=True)
class BuildIdentity:
    """What a build folder holds. Saved in build_state.json under "identity".

    source: where the network comes from ("zoo:MODEL" for bnnflow's own models).
    weights: "sha256:<hex>" of the checkpoint, or "random:seed=N;calibration=V".
    folding: "sha256:<hex>" of the folding config, "auto", or "target_fps:N".
    budget: "lut=<share>,bram=<share>" the fit is judged against.
    export: "tie_guard=<version>" of models/tie_guard.py that adjusted the exported weights.
    """

    source: str
    variant: str
    board: str
    weights: str
    folding: str
    budget: str
    export: str = EXPORT

    # what every step depends on, and what only the folding step and later ones depend on
    BEFORE_FOLDING = ("source", "variant", "board", "weights", "export")
    FOLDING_FIELDS = ("folding", "budget")
    TITLES = {"source": "network", "variant": "variant", "board": "board", "weights": "weights",
              "folding": "folding", "budget": "resource budget", "export": "export"}

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BuildIdentity:
        data = {"export": FIRST_EXPORT, **data}  # saved before the field existed
        return cls(**{k: str(data.get(k)) for k in cls.__dataclass_fields__})

    def differences(self, other: BuildIdentity, fields: tuple[str, ...] | None = None) -> list[str]:
        """Fields (of `fields`, default all) where the two differ, in declaration order."""
        fields = fields or tuple(self.__dataclass_fields__)
        return [f for f in fields if getattr(self, f) != getattr(other, f)]

    def matches(self, other: BuildIdentity, through_folding: bool = True) -> bool:
        fields = self.BEFORE_FOLDING + (self.FOLDING_FIELDS if through_folding else ())
        return not self.differences(other, fields)

    def describe_difference(self, wanted: BuildIdentity, fields: list[str]) -> str:
        """'board pynq-z2, not zcu104; weights random:seed=0, not sha256:1234abcd…'"""
        def short(v: str) -> str:
            if v.startswith(("zoo:", "file:", "module:", "onnx:")):  # networks go by their names
                return short_source(v)
            return v[:19] + "…" if v.startswith("sha256:") else v
        return "; ".join(f"{self.TITLES[f]} {short(getattr(self, f))}, not {short(getattr(wanted, f))}"
                         for f in fields)


# models.checkpoint.calibrate's version, part of a random-weight build's identity: builds calibrated by an
# older version (BN statistics from the default momentum) are rebuilt, never reused
CALIBRATION_VERSION = 2


def weights_id(checkpoint: Path | None, seed: int) -> str:
    if checkpoint is None:
        return f"random:seed={seed};calibration={CALIBRATION_VERSION}"
    return f"sha256:{file_sha256(checkpoint)}" if Path(checkpoint).is_file() else f"missing:{Path(checkpoint).name}"


def folding_id(folding: Path | None, target_fps: int | None) -> str:
    if folding is not None and str(folding) == AUTO_FOLDING:
        return AUTO_FOLDING
    if folding is not None and Path(folding).is_file():
        return f"sha256:{file_sha256(folding)}"
    if folding is not None:
        return f"missing:{Path(folding).name}"
    return f"target_fps:{target_fps}"


def budget_id(board: Board, lut_max: float | None, bram_max: float | None) -> str:
    lut = board.lut_max if lut_max is None else lut_max
    bram = board.bram_max if bram_max is None else bram_max
    return f"lut={lut:g},bram={bram:g}"


def request_identity(req: BuildRequest, board: Board, folding: Path | None) -> BuildIdentity:
    """The identity a build of `req` has; `folding` is the resolved config file (or "auto", or None)."""
    target = None if folding is not None else (req.target_fps or board.default_target_fps)
    weights = weights_id(req.checkpoint, req.seed)
    if is_onnx_model(req.model):  # a QONNX file holds its weights
        weights = weights_id(Path(req.model), 0)
    return BuildIdentity(source=request_source(req), variant=req.variant, board=board.name,
                         weights=weights, folding=folding_id(folding, target),
                         budget=budget_id(board, req.lut_max, req.bram_max))


def request_source(req: BuildRequest) -> str:
    """'zoo:MODEL' for bnnflow's own networks; a user's file (with its sha256) or module otherwise."""
    ref = parse_model_ref(req.model)
    if ref is None:
        check_input_scale(req.input_scale, zoo=True)
        return f"zoo:{req.model}"
    args = req.model_args if isinstance(req.model_args, dict) else parse_model_args(req.model_args)
    return user_source(ref, args, check_input_scale(req.input_scale, zoo=False))


def saved_identity(state: dict) -> BuildIdentity | None:
    """The identity a build_state.json records; builds from before it existed are read from their fields."""
    if not state or state.get("model") is None:
        return None
    if isinstance(state.get("identity"), dict):
        return BuildIdentity.from_dict(state["identity"])
    sha = state.get("checkpoint_sha256")
    folding = state.get("folding")
    board = state.get("board")
    from bnnflow.hw.boards import BOARDS

    b = BOARDS.get(board)
    return BuildIdentity(source=f"zoo:{state['model']}", variant=str(state.get("variant")), board=str(board),
                         weights=f"sha256:{sha}" if sha else f"random:seed={state.get('seed', 0)}",
                         folding=folding_id(Path(folding) if folding else None, state.get("target_fps")),
                         budget=budget_id(b, None, None) if b else "unknown", export=FIRST_EXPORT)
