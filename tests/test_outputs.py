"""--out FILE replaces only what the command itself writes; anything else is refused before any work."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bnnflow.build_flows.benchmark import markdown_table
from bnnflow.cli import main
from bnnflow.errors import BnnflowError
from bnnflow.models.checkpoint import FORMAT
from bnnflow.outputs import KINDS, PNG_SIGNATURE, check_out, check_reports

from conftest import one_sentence

OWN = {  # a file each kind's command wrote
    "folding": json.dumps({"Defaults": {}, "MVAU_hls_0": {"PE": 2, "SIMD": 4}}).encode(),
    "plot": PNG_SIGNATURE + b"\x00\x00\x00\rIHDR",
    "evaluation": json.dumps({"checkpoint": "x.pt", "model": "cnv", "variant": "tiny", "brevitas_top1": 0.5,
                              "hardware": None, "agree": True}).encode(),
    "runs": b"| run | model | recipe |\n|---|---|---|\n",
    "report-data": json.dumps({"board": "pynq-z2", "wall_seconds": 3.0, "rows": []}).encode(),
    "report-table": markdown_table({"board": "pynq-z2", "part": "xc7z020clg400-1", "clock_mhz": 100.0,
                                    "limits": {"LUT": 0.85, "BRAM": 0.95}, "rows": []}).encode(),
}
_checkpoint = io.BytesIO()
torch.save({"format": FORMAT, "model": "cnv", "variant": "tiny", "state_dict": {}, "meta": {}}, _checkpoint)
OWN["checkpoint"] = _checkpoint.getvalue()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_own_product_is_replaceable_and_a_readme_is_not(tmp_path, kind):
    own, readme = tmp_path / "own", tmp_path / "README.md"
    own.write_bytes(OWN[kind])
    readme.write_text("# my project\n")
    check_out(own, kind)
    check_out(tmp_path / "new", kind)
    check_out(None, kind)
    with pytest.raises(BnnflowError) as exc:
        check_out(readme, kind)
    assert "already exists and is not a" in one_sentence(exc.value)
    with pytest.raises(BnnflowError) as exc:
        check_out(tmp_path, kind)
    assert "is a folder" in one_sentence(exc.value)
    assert readme.read_text() == "# my project\n"


@settings(max_examples=60, deadline=None)
@given(content=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode),
                         st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                         max_size=3),
                                      max_leaves=8).map(lambda v: json.dumps(v).encode())),
       kind=st.sampled_from(sorted(KINDS)))
def test_any_existing_file_is_either_accepted_or_refused_in_one_sentence(content, kind):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "out"
        path.write_bytes(content)
        try:
            check_out(path, kind)
        except BnnflowError as exc:
            one_sentence(exc)
        assert path.read_bytes() == content


@pytest.mark.parametrize("argv", [
    ["fold", "cnv"],  # the default variant: its committed checkpoint is not even announced
    ["evaluate", "CHECKPOINT"],
    ["recalibrate", "CHECKPOINT"],
    ["runs"],
    ["benchmark", "--only", "cnv/tiny"],
])
def test_commands_refuse_a_foreign_out_before_any_work(capsys, tmp_path, argv):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    argv = [str(tmp_path / "missing.pt") if a == "CHECKPOINT" else a for a in argv]
    builds = argv[0] not in ("runs", "evaluate", "recalibrate")
    code = main([*argv, "--out", str(notes), *(["--build", str(tmp_path / "b")] if builds else [])])
    printed = capsys.readouterr()
    assert code != 0 and "already exists and is not a" in one_sentence(printed.err) and printed.out == ""
    assert notes.read_text() == "mine" and not (tmp_path / "b").exists()


DESIGN_SWEEP = "points:\n  - {model: cnv, variant: tiny, weights: random, folding: fps:1000}\n"
TRAIN_SWEEP = "train:\n  points:\n    - {model: cnv, variant: tiny, epochs: 1, subset: 64}\n"


@pytest.mark.parametrize("argv, report", [
    (["benchmark", "--only", "cnv/tiny"], "benchmark.md"),
    (["benchmark", "--only", "cnv/tiny"], "benchmark.png"),
    (["sweep", DESIGN_SWEEP], "sweep.json"),
    (["sweep", TRAIN_SWEEP], "train_sweep.md"),
])
def test_reports_never_replace_a_users_file_in_the_build_folder(capsys, tmp_path, argv, report):
    """benchmark and sweep write NAME.json/.md/.png into --build: a user's file of that name there is
    refused in one sentence before any work, and nothing is built beside it."""
    if argv[0] == "sweep":
        (tmp_path / "points.yaml").write_text(argv[1])
        argv = ["sweep", str(tmp_path / "points.yaml")]
    build = tmp_path / "b"
    build.mkdir()
    (build / report).write_text("mine")
    code = main([*argv, "--build", str(build)])
    err = one_sentence(capsys.readouterr().err)
    assert code != 0 and "already exists and is not a" in err and "choose another --build" in err
    assert (build / report).read_text() == "mine" and [p.name for p in build.iterdir()] == [report]


def test_reports_replace_their_own_earlier_copies(tmp_path):
    for name, suffix in (("benchmark", ".json"), ("sweep", ".md"), ("train_sweep", ".png")):
        (tmp_path / f"{name}{suffix}").write_bytes(OWN[{".json": "report-data", ".md": "report-table",
                                                        ".png": "plot"}[suffix]])
        check_reports(tmp_path, name, plot=True)
    (tmp_path / "sweep.png").mkdir()
    with pytest.raises(BnnflowError) as exc:
        check_reports(tmp_path, "sweep", plot=True)
    assert "is a folder where the PNG image goes: choose another --build" in one_sentence(exc.value)
    check_reports(tmp_path, "sweep", plot=False)
