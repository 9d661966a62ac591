"""Folding a build folder: the search on its specialised graph, the config and report written beside it."""

from __future__ import annotations

from pathlib import Path

from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError
from bnnflow.hw.boards import Board

from . import flow
from .folding import FoldResult, fold, fold_report, write_config

AUTO_FOLDING_FILE = "auto_folding.json"  # what --folding auto applies, in the build folder
FOLD_REPORT_FILE = "fold_report.json"


def specialised_model(out_dir: Path):
    from qonnx.core.modelwrapper import ModelWrapper

    path = flow.intermediate_path(Path(out_dir), flow.SPECIALISED_STEP)
    if not path.exists():
        raise BnnflowError(f"{path} is missing: build the model up to the {flow.SPECIALISED_STEP} step first.")
    return ModelWrapper(str(path))


def fold_build(out_dir: Path, board: Board, path: Path | None = None, lut_max: float | None = None,
               bram_max: float | None = None, name: str = "The model", log=None) -> tuple[FoldResult, Path]:
    """Search the folding of a build folder's specialised graph and write the JSON (default in the build)."""
    out_dir = Path(out_dir)
    result = fold(specialised_model(out_dir), board, lut_max, bram_max, name=name, log=log)
    path = Path(path) if path else out_dir / AUTO_FOLDING_FILE
    write_config(result.config, path)
    write_json(out_dir / FOLD_REPORT_FILE, {**fold_report(result), "config": str(path)})
    return result, path
