"""The bnnflow build: FINN build steps from QONNX to bitstream, resumable, with tool checks.

One step list for every model (ResNetE, BinaryDenseNet, CNV). Each step's output model is
saved atomically in `<build>/intermediate_models/<step>.onnx`, and `<build>/build_state.json`
records what finished, so `--resume` continues after the last finished step and
`--from-step` re-runs from a named one. Steps that need Vivado / Vitis HLS check for the
tool first and, without it, stop the build with one sentence; everything made so far stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bnnflow import compat
from bnnflow.atomic import atomic_path, write_json
from bnnflow.errors import BnnflowError, MissingToolError
from bnnflow.hw.boards import Board

compat.finn_ready()

from finn.builder.build_dataflow_config import DataflowBuildConfig  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

import finn.builder.build_dataflow_steps as finn_steps  # noqa: E402

from . import steps as bnn_steps  # noqa: E402

STATE_FILE = "build_state.json"
QONNX_FILE = "model.qonnx.onnx"
BREVITAS_FILE = "model.brevitas.pt"  # the exact Brevitas weights the build exported

VITIS_HLS = "Vitis HLS 2024.2 (XILINX_HLS / vitis_hls or vitis-run on PATH)"
VIVADO = "Vivado 2024.2 (XILINX_VIVADO / vivado on PATH)"


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable
    tool: str | None = None  # the vendor tool the step needs, None if it runs anywhere
    title: str = ""


STEPS: list[Step] = [
    Step("qonnx_to_finn", finn_steps.step_qonnx_to_finn, title="QONNX -> FINN-ONNX"),
    Step("tidy_up", finn_steps.step_tidy_up, title="tidy up"),
    Step("set_input_uint8", bnn_steps.step_set_input_uint8, title="8-bit pixel input"),
    Step("bnn_streamline", bnn_steps.step_bnn_streamline, title="streamline to integer thresholds"),
    Step("insert_topk", bnn_steps.step_insert_topk, title="top-1 in hardware"),
    Step("convert_to_hw", finn_steps.step_convert_to_hw, title="convert to HW layers"),
    Step("minimize_bit_width_initial", bnn_steps.step_minimize_bit_width_xnor_safe, title="minimise bit widths"),
    Step("create_dataflow_partition", finn_steps.step_create_dataflow_partition, title="dataflow partition"),
    Step("specialize_layers", finn_steps.step_specialize_layers, title="specialise to HLS/RTL"),
    Step("target_fps_parallelization", bnn_steps.step_target_fps_parallelization, title="target-FPS folding"),
    Step("apply_folding_config", finn_steps.step_apply_folding_config, title="apply folding config"),
    Step("minimize_bit_width", bnn_steps.step_minimize_bit_width_xnor_safe, title="minimise bit widths again"),
    Step("transpose_decomposition", finn_steps.step_transpose_decomposition, title="transpose decomposition"),
    Step("generate_estimate_reports", finn_steps.step_generate_estimate_reports, title="estimate reports"),
    Step("hw_codegen", finn_steps.step_hw_codegen, title="HLS/RTL code generation"),
    # -- vendor-tool boundary --
    Step("hw_ipgen", finn_steps.step_hw_ipgen, VITIS_HLS, "HLS IP synthesis"),
    Step("set_fifo_depths", finn_steps.step_set_fifo_depths, VIVADO, "FIFO sizing (rtlsim)"),
    Step("create_stitched_ip", finn_steps.step_create_stitched_ip, VIVADO, "stitched IP"),
    Step("measure_rtlsim_performance", finn_steps.step_measure_rtlsim_performance, VIVADO, "rtlsim performance"),
    Step("out_of_context_synthesis", finn_steps.step_out_of_context_synthesis, VIVADO, "out-of-context synthesis"),
    Step("synthesize_bitfile", finn_steps.step_synthesize_bitfile, VIVADO, "bitstream"),
    Step("make_driver", finn_steps.step_make_driver, VIVADO, "PYNQ driver"),
    Step("deployment_package", finn_steps.step_deployment_package, VIVADO, "deployment package"),
]
STEP_NAMES = [s.name for s in STEPS]

# Step roles, declared once: other modules ask flow for these instead of spelling step names.
EXPORT = "export"  # the pseudo-step before STEPS: Brevitas -> QONNX (model.qonnx.onnx)
STREAMLINED_STEP = "insert_topk"  # integer thresholds and top-1: the streamlined graph
STREAMLINE_STEP = "bnn_streamline"  # diagnose.py checks the graph it starts from
CONVERT_STEP = "convert_to_hw"  # after it every node should be a HW layer (diagnose.py names any that is not)
HW_STEP = "minimize_bit_width_initial"  # FINN HW layers, before specialisation
SPECIALISED_STEP = "specialize_layers"  # HLS/RTL variants chosen: what the folding search folds
FOLDING_STEP = "target_fps_parallelization"  # the first step whose result depends on the folding
APPLY_FOLDING_STEP = "apply_folding_config"
ESTIMATE_STEP = "generate_estimate_reports"  # folded graph + FINN's estimate reports
FOLDED_STEP = ESTIMATE_STEP  # the specialised, folded graph that verify executes
CODEGEN_STEP = "hw_codegen"  # HLS/RTL sources: the last step without vendor tools
LAST_TOOL_FREE_STEP = CODEGEN_STEP


def tool_available(tool: str | None) -> bool:
    if tool is None:
        return True
    if tool == VITIS_HLS:
        return bool(os.environ.get("XILINX_HLS")) and bool(shutil.which("vitis_hls") or shutil.which("vitis-run"))
    if tool == VIVADO:
        return compat.vivado_root() is not None and bool(shutil.which("vivado"))
    return False


def step_index(name: str) -> int:
    if name not in STEP_NAMES:
        raise BnnflowError(f"Unknown build step '{name}': choose one of {', '.join(STEP_NAMES)}.")
    return STEP_NAMES.index(name)


def make_config(out_dir: Path, board: Board, folding_file: Path | None, target_fps: int | None) -> DataflowBuildConfig:
    """FINN's DataflowBuildConfig for one bnnflow build (a per-model config = its folding file)."""
    outputs = ["estimate_reports"]
    if tool_available(VIVADO):
        outputs += ["stitched_ip", "rtlsim_performance", "out_of_context_synth", "bitfile",
                    "pynq_driver", "deployment_package"]
    return DataflowBuildConfig(
        output_dir=str(out_dir),
        synth_clk_period_ns=board.clock_ns,
        fpga_part=board.part,
        board=board.finn_board,
        shell_flow_type="vivado_zynq",
        folding_config_file=str(folding_file) if folding_file else None,
        target_fps=None if folding_file else (target_fps or board.default_target_fps),
        standalone_thresholds=True,
        generate_outputs=outputs,
        save_intermediate_models=True,
        auto_fifo_depths=True,
    )


class BuildState:
    """`build_state.json`: what the build is and which steps have finished."""

    def __init__(self, out_dir: Path, strict: bool = True):
        """strict=False: a damaged file reads as empty (for --force, which replaces it anyway)."""
        self.path = Path(out_dir) / STATE_FILE
        self.data = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                self.data = None
            ok = isinstance(self.data, dict) and isinstance(self.data.get("done", []), list) \
                and all(s in STEP_NAMES for s in self.data.get("done", []))
            if not ok and not strict:
                self.data = {}
            elif not ok:
                raise BnnflowError(f"{self.path} is damaged (not the JSON object bnnflow writes): rebuild with "
                                   "--force, or pass another --out.")

    @property
    def done(self) -> list[str]:
        return self.data.get("done", [])

    def save(self) -> None:
        write_json(self.path, self.data)

    def mark(self, step: str, seconds: float) -> None:
        done = [s for s in self.done if STEP_NAMES.index(s) < STEP_NAMES.index(step)]
        self.data["done"] = done + [step]
        self.data.setdefault("seconds", {})[step] = round(seconds, 2)
        self.save()


def intermediate_path(out_dir: Path, step: str) -> Path:
    return out_dir / "intermediate_models" / f"{step}.onnx"


def save_model(model: ModelWrapper, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(str(tmp))


@contextlib.contextmanager
def quiet(log_path: Path):
    """FINN prints a line per node; send it to the build log, not the console."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


@contextlib.contextmanager
def quiet_finn_logger():
    """FINN logs at WARNING what users cannot act on (SetFolding's per-node misses, every g++ warning of
    finn-hlslib); keep its errors only."""
    import logging

    logger = logging.getLogger("finn_logger")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_steps(out_dir: Path, cfg: DataflowBuildConfig, start: str, stop: str,
              on_step: Callable[[Step, str], None] | None = None) -> ModelWrapper:
    """Run STEPS[start..stop] on the model saved by the step before `start`."""
    i0, i1 = step_index(start), step_index(stop)
    state = BuildState(out_dir)
    prev = out_dir / QONNX_FILE if i0 == 0 else intermediate_path(out_dir, STEP_NAMES[i0 - 1])
    if not prev.exists():
        raise BnnflowError(f"Cannot start at step {start}: {prev} is missing, so run the build from an earlier step.")
    model = ModelWrapper(str(prev))
    compat.set_finn_build_dir(out_dir / "finn_tmp")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    for step in STEPS[i0:i1 + 1]:
        if not tool_available(step.tool):
            state.data["stopped_at"] = step.name
            state.save()
            raise MissingToolError(
                f"Step '{step.name}' ({step.title}) needs {step.tool}, which is not installed: everything up to "
                f"'{STEP_NAMES[STEP_NAMES.index(step.name) - 1]}' is in {out_dir}, and "
                f"'bnnflow build ... --resume' continues from here once the tool is set up.")
        if step.name == APPLY_FOLDING_STEP and cfg.folding_config_file:
            from .folding_check import check_folding_file

            check_folding_file(model, Path(cfg.folding_config_file), cfg.fpga_part)  # before FINN touches it
        if on_step:
            on_step(step, "start")
        t0 = time.time()
        try:
            with quiet(out_dir / "build.log"):
                print(f"=== step {step.name}", flush=True)
                model = step.run(model, cfg)
        except Exception as exc:
            # later steps' files may be from an earlier run: say so in the state, beside them
            state.data["failed"] = {"step": step.name, "error": f"{type(exc).__name__}: {exc}"[:500]}
            state.save()
            raise
        save_model(model, intermediate_path(out_dir, step.name))
        state.data.pop("stopped_at", None)
        state.data.pop("failed", None)
        state.mark(step.name, time.time() - t0)
        if on_step:
            on_step(step, "done")
    return model


def dataflow_parent(out_dir: Path) -> Path:
    return out_dir / "intermediate_models" / "dataflow_parent.onnx"


def read_report(out_dir: Path, name: str) -> dict:
    path = out_dir / "report" / name
    return json.loads(path.read_text()) if path.exists() else {}
