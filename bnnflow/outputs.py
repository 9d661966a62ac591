"""`--out FILE`: an existing file there is replaced only when it holds what the command writes.

A mistyped --out must not destroy a user's README, notes or checkpoint, while re-running a
command over its own earlier product (a folding config searched again on new weights) stays one
command.  Checked before any work, so a refusal costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bnnflow.errors import BnnflowError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUNS_TABLE_HEAD = "| run | model |"  # models/runs_table.table's first line
EVALUATION_KEYS = {"checkpoint", "model", "variant", "brevitas_top1"}  # bnnflow evaluate's JSON
REPORT_KEYS = {"rows", "wall_seconds"}  # NAME.json of bnnflow benchmark and sweep
# the first words of their NAME.md: benchmark.markdown_table's heading, a design sweep's, a training sweep's
REPORT_HEADINGS = ("Estimates on the ", "Sweep ", "Training sweep ")


def _is_png(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


def _json_object(path: Path):
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _is_folding_config(path: Path) -> bool:
    # the shape build_flows.folding_check.check_structure demands first; that module imports FINN (seconds)
    config = _json_object(path)
    return config is not None and all(isinstance(v, dict) for v in config.values())


def _is_evaluation(path: Path) -> bool:
    result = _json_object(path)
    return result is not None and EVALUATION_KEYS <= result.keys()


def _is_report_data(path: Path) -> bool:
    result = _json_object(path)
    return result is not None and REPORT_KEYS <= result.keys()


def _is_report_table(path: Path) -> bool:
    with open(path, "rb") as f:
        start = f.read(max(map(len, REPORT_HEADINGS)))
    return any(start.startswith(h.encode()) for h in REPORT_HEADINGS)


def _is_runs_table(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(RUNS_TABLE_HEAD)) == RUNS_TABLE_HEAD.encode()


def _is_checkpoint(path: Path) -> bool:
    from bnnflow.models.checkpoint import read_checkpoint  # torch: only the command that writes one asks

    try:
        read_checkpoint(path)
    except BnnflowError:
        return False
    return True


# kind -> (what the command writes, in words; whether a file holds it)
KINDS = {
    "folding": ("folding config", _is_folding_config),
    "plot": ("PNG image", _is_png),
    "evaluation": ("result of 'bnnflow evaluate'", _is_evaluation),
    "runs": ("table of 'bnnflow runs'", _is_runs_table),
    "checkpoint": ("bnnflow checkpoint", _is_checkpoint),
    "report-data": ("report of 'bnnflow benchmark' or 'bnnflow sweep' (JSON)", _is_report_data),
    "report-table": ("report of 'bnnflow benchmark' or 'bnnflow sweep' (table)", _is_report_table),
}


def check_out(path: str | Path | None, kind: str, flag: str = "--out") -> None:
    """One sentence, before any work, if writing `path` would replace something that is not a `kind` file;
    `flag` is the option that chose the path."""
    if path is None:
        return
    path = Path(path)
    what, holds = KINDS[kind]
    if path.is_dir():
        raise BnnflowError(f"{flag} {path} is a folder: name a file to write the {what} to." if flag == "--out" else
                           f"{path} is a folder where the {what} goes: choose another {flag}.")
    if not path.exists():
        return
    try:
        ok = holds(path)
    except OSError as exc:
        raise BnnflowError(f"{flag} {path} exists and cannot be read ({exc.strerror or exc}): choose another "
                           f"{flag}.") from None
    if not ok:
        raise BnnflowError(f"{path} already exists and is not a {what}: choose another {flag} or delete it first.")


@dataclass(frozen=True)  # equal for equal kinds, so parsed arguments compare
class OutCheck:
    """A parser's check_outputs (cli.main runs it before anything is loaded or said): --out holds a `kind`."""
    kind: str

    def __call__(self, args) -> None:
        check_out(args.out, self.kind)


def check_reports(build: str | Path, name: str, plot: bool) -> None:
    """Before any work: NAME.json, NAME.md (and NAME.png with `plot`) that a benchmark or sweep writes into its
    --build folder replace only their own earlier copies, never a user's files of those names."""
    kinds = [(".json", "report-data"), (".md", "report-table")] + ([(".png", "plot")] if plot else [])
    for suffix, kind in kinds:
        check_out(Path(build) / f"{name}{suffix}", kind, flag="--build")
