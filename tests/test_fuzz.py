"""Property-based (hypothesis): generated folding configs, flag values and damaged files.

Every outcome is either success or one sentence on stderr with a non-zero exit, and the build folder a
command was aimed at is byte-identical afterwards unless the command succeeded. A folding config the
check accepts must also go through FINN's own folding and estimate steps.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bnnflow.cli import main
from bnnflow.errors import BnnflowError

from conftest import one_sentence, snapshot

# derandomized: CI reruns the same examples (and no .hypothesis database is written)
SLOW = settings(deadline=None, max_examples=12, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FAST = settings(SLOW, max_examples=80)
ATTRS = ["PE", "SIMD", "ram_style", "mem_mode", "resType", "parallel_window", "inFIFODepths", "NoSuchAttr"]
VALUES = st.one_of(
    st.sampled_from([1, 2, 4, 8, 16]),  # often legal
    st.integers(-3, 200), st.integers(-2**40, 2**40),
    st.sampled_from(["auto", "block", "distributed", "ultra", "lut", "dsp", "internal_decoupled", ""]),
    st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(-2, 64), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def folding_configs(draw, base: dict):
    """FINN's own valid config with a few entries changed, added, dropped or replaced by another JSON type."""
    config = copy.deepcopy(base)
    layers = sorted(k for k in config if k != "Defaults")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["attr", "attr", "attr", "unknown_layer", "drop", "entry_type"]))
        name = draw(st.sampled_from(layers))
        if kind == "attr" and isinstance(config.get(name), dict):
            config[name][draw(st.sampled_from(ATTRS))] = draw(VALUES)
        elif kind == "unknown_layer":
            config[draw(st.sampled_from(["NoSuchLayer_7", "MVAU_hls_99", "mvau_hls_0", "", "two\nlines"]))] = {"PE": 1}
        elif kind == "drop":
            config.pop(name, None)
        elif kind == "entry_type":
            config[name] = draw(st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)))
    return config


def folding_bytes(base: dict):
    """The text of a folding config: generated, truncated, not JSON, not an object, not UTF-8."""
    text = json.dumps(base, indent=2).encode()
    return st.one_of(
        st.just(text),  # so that success, and with --force the replacement, is reached too
        folding_configs(base).map(lambda c: json.dumps(c).encode()),
        st.integers(0, len(text) - 1).map(lambda n: text[:n]),
        st.sampled_from([b"", b"null", b"[1, 2]", b'"PE"', b"3", b"\xff\xfe{}", b'{"Defaults": 3}']),
        st.binary(max_size=40),
    )


def copy_of(folder: Path) -> Path:
    dst = Path(tempfile.mkdtemp(prefix="fuzz-")) / "b"
    shutil.copytree(folder, dst)
    return dst


def outcome(capsys, argv: list, folder: Path | None, before: dict | None) -> int:
    """Run the CLI; a failure must be one sentence and leave `folder` as it was."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    event(f"exit {code}")
    if code != 0:
        one_sentence(err)
        if folder is not None:
            assert snapshot(folder) == before, f"{argv} failed but changed {folder}"
    return code


# ------------------------------------------------------------------ folding configs


@pytest.fixture(scope="module")
def folding_graph(cnv_estimates):
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows import flow

    return ModelWrapper(str(flow.intermediate_path(cnv_estimates[0], "target_fps_parallelization")))


def test_accepted_folding_configs_go_through_finn(cnv_estimates, folding_graph, tmp_path_factory):
    """In memory, many configs: the check refuses in one sentence, or FINN folds and estimates without error."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.folding_check import check_folding
    from bnnflow.hw.boards import get_board

    board = get_board("pynq-z2")
    seen = {"accepted": 0, "refused": 0}

    @FAST
    @given(config=folding_configs(cnv_estimates[1]))
    def prop(config):
        try:
            check_folding(folding_graph, config, "Folding config fold.json", uram=board.uram)
        except BnnflowError as exc:
            msg = str(exc)
            assert "\n" not in msg and msg.endswith(".") and msg.startswith("Folding config fold.json"), msg
            seen["refused"] += 1
            return
        seen["accepted"] += 1
        out = tmp_path_factory.mktemp("finn")
        (out / "fold.json").write_text(json.dumps(config))
        cfg = flow.make_config(out, board, out / "fold.json", None)
        model = ModelWrapper(copy.deepcopy(folding_graph.model))
        with flow.quiet(out / "build.log"):
            for step in flow.STEPS[flow.step_index("apply_folding_config"):flow.step_index(flow.ESTIMATE_STEP) + 1]:
                model = step.run(model, cfg)

    prop()
    assert seen["accepted"] and seen["refused"], seen  # the generator reaches both sides


@SLOW
@given(data=st.data())
def test_folding_files_never_damage_a_build(capsys, cnv_estimates, data):
    """Through the CLI on a copy of a finished build: --from-step at the folding step, or --force."""
    build, base = cnv_estimates
    raw = data.draw(folding_bytes(base), label="folding file")
    how = data.draw(st.sampled_from([["--from-step", "apply_folding_config"], ["--force"]]), label="how")
    folder = copy_of(build)
    try:
        fold = folder.parent / "fold.json"
        fold.write_bytes(raw)
        before = snapshot(folder)
        # a good config: --force rightly replaces the folder (a short build), --from-step re-runs the estimates
        stop = "qonnx_to_finn" if how == ["--force"] else "generate_estimate_reports"
        outcome(capsys, ["build", "cnv", "--variant", "tiny", "--build", folder, "--folding", fold, "--stop-after",
                         stop, *how], folder, before)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


# ------------------------------------------------------------------ flags


@SLOW
@given(fps=st.one_of(st.integers(-10**12, 0), st.integers(10**8 + 1, 10**15), st.integers(1, 10**8)))
def test_target_fps_values(capsys, cnv_estimates, fps):
    folder = copy_of(cnv_estimates[0])
    try:
        before = snapshot(folder)
        code = outcome(capsys, ["build", "cnv", "--variant", "tiny", "--build", folder, "--target-fps", fps,
                                "--from-step", flow_estimate(), "--stop-after", flow_estimate()], folder, before)
        assert (code == 0) == (1 <= fps <= 10**8)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def flow_estimate() -> str:
    from bnnflow.build_flows import flow

    return flow.ESTIMATE_STEP


@SLOW
@given(images=st.integers(-10**6, 0))
def test_deploy_image_counts_below_one(capsys, cnv_estimates, tmp_path_factory, images):
    build = cnv_estimates[0]
    before = snapshot(build)
    pkg = tmp_path_factory.mktemp("pkg") / "p"
    assert outcome(capsys, ["deploy", "cnv", "--variant", "tiny", "--build", build, "--out", pkg, "--images",
                            images], build, before) == 2
    assert not pkg.exists()


# ------------------------------------------------------------------ damaged files


@pytest.fixture(scope="module")
def checkpoints(cnv_estimates, tmp_path_factory):
    """A good cnv/tiny checkpoint (the build's own weights) and one of another model."""
    from bnnflow.models.checkpoint import save_checkpoint
    from bnnflow.models.zoo import build_model

    root = tmp_path_factory.mktemp("ckpt")
    other = save_checkpoint(root / "resnete-tiny.pt", build_model("resnete", "tiny"), "resnete", "tiny")
    return (cnv_estimates[0] / "model.brevitas.pt").read_bytes(), other.read_bytes()


def damaged(good: bytes, other: bytes):
    import io

    import torch

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    fmt = "bnnflow-checkpoint-1"
    return st.one_of(
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),  # truncated
        st.just(other),  # another model
        st.sampled_from([
            saved([1, 2]), saved({"format": fmt}), saved({"format": fmt, "model": 3, "variant": None}),
            saved({"format": fmt, "model": "cnv", "variant": "tiny", "state_dict": "x"}),
            saved({"format": fmt, "model": "cnv", "variant": "tiny", "state_dict": {}, "meta": [1]}),
            b"", b"PK\x03\x04",
        ]),
        st.binary(max_size=64),
    )


@SLOW
@given(data=st.data())
def test_damaged_checkpoints_never_replace_a_build(capsys, cnv_estimates, checkpoints, data):
    raw = data.draw(damaged(*checkpoints), label="checkpoint")
    folder = copy_of(cnv_estimates[0])
    try:
        ckpt = folder.parent / "m.pt"
        ckpt.write_bytes(raw)
        before = snapshot(folder)
        assert outcome(capsys, ["build", "cnv", "--variant", "tiny", "--build", folder, "--force", "--checkpoint", ckpt,
                                "--stop-after", "qonnx_to_finn"], folder, before) == 2
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@SLOW
@given(raw=st.one_of(st.binary(max_size=64), st.sampled_from([b"[]", b"null", b'{"done": "x"}',
                                                             b'{"done": ["no_such_step"]}', b'{"model": 1}'])))
def test_damaged_build_state_is_one_sentence(capsys, cnv_estimates, raw):
    folder = copy_of(cnv_estimates[0])
    try:
        (folder / "build_state.json").write_bytes(raw)
        before = snapshot(folder)
        outcome(capsys, ["build", "cnv", "--variant", "tiny", "--build", folder, "--resume"], folder, before)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
