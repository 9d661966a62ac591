"""Bad input tried as a new user would: one sentence on stderr, a non-zero exit, nothing destroyed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bnnflow.cli import main

from conftest import one_sentence

RESNETE_CHECKPOINT = str(Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "resnete-default.pt")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_instant_and_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "bnnflow", "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("build", "estimate", "verify", "export", "models", "boards"):
        assert word in out


@pytest.mark.parametrize("argv, needle", [
    (["build", "resnet50"], "Unknown model 'resnet50'"),
    (["build", "resnete", "--variant", "huge"], "Unknown variant 'huge'"),
    (["build", "resnete", "--board", "zedboard"], "Unknown board 'zedboard'"),
    (["estimate", "cnv", "--from-step", "nonsense_step", "--build", "/nonexistent/x"], "Unknown build step"),
    (["build", "cnv", "--checkpoint", "/nonexistent/model.pt"], "does not exist"),
    (["build", "cnv", "--checkpoint", RESNETE_CHECKPOINT, "--build", "/nonexistent/b"],
     "holds resnete/default, not cnv/default: name its model and variant ('resnete --variant default')"),
    (["build", "cnv", "--folding", "/nonexistent/fold.json"], "Folding config"),
    (["build", "cnv", "--resume", "--build", "/nonexistent/build"], "no build to resume"),
    (["verify", "cnv", "--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["verify", "cnv", "--images", "0"], "--images"),
])
def test_user_errors(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code != 0
    assert needle in one_sentence(err)


def test_unknown_board_is_refused_before_any_weights_are_taken(capsys):
    code, out, err = run_cli(capsys, "build", "resnete", "--board", "zedboard")
    assert code != 0 and "Unknown board" in one_sentence(err) and "checkpoint" not in out


def test_corrupt_checkpoint(capsys, tmp_path):
    bad = tmp_path / "m.pt"
    bad.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "build", "cnv", "--variant", "tiny", "--checkpoint", str(bad),
                           "--build", str(tmp_path / "b"))
    assert code != 0 and "corrupt" in one_sentence(err)


def test_bad_input_with_force_keeps_the_existing_build(capsys, tmp_path):
    """--force replaces a build only once every input checked out."""
    out = tmp_path / "b"
    out.mkdir()
    precious = out / "summary.json"
    precious.write_text("{}")
    bad = tmp_path / "m.pt"
    bad.write_text("not a checkpoint")
    for extra in (["--checkpoint", str(bad)], ["--folding", str(tmp_path / "missing.json")]):
        code, _, err = run_cli(capsys, "build", "cnv", "--variant", "tiny", "--build", str(out), "--force", *extra)
        assert code != 0 and precious.read_text() == "{}", one_sentence(err)


@pytest.mark.parametrize("argv", [["build", "cnv", "--variant", "tiny", "--force"],
                                  ["build", "cnv", "--variant", "tiny", "--from-step", "tidy_up"],
                                  ["fold", "cnv", "--variant", "tiny", "--force"],
                                  ["verify", "cnv", "--variant", "tiny"]])
def test_a_users_folder_or_file_is_never_a_build_folder_even_with_force(capsys, tmp_path, argv):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    code, _, err = run_cli(capsys, *argv, "--build", str(mine))
    assert code != 0 and "is not a bnnflow build folder" in one_sentence(err)
    code, _, err = run_cli(capsys, *argv, "--build", str(mine / "thesis.tex"))
    assert code != 0 and "is a file, not a build folder" in one_sentence(err)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "keep me"


def test_a_build_that_fails_before_any_step_leaves_nothing_to_force(capsys, tmp_path):
    """A network whose factory is misspelt: the same command, corrected, runs without --force."""
    net = tmp_path / "net.py"
    net.write_text("def net():\n    return None\n")
    given = tmp_path / "given"
    given.mkdir()
    for out in (tmp_path / "new", given):
        code, _, err = run_cli(capsys, "build", f"{net}:nte", "--build", str(out))
        assert code != 0 and "has no attribute 'nte'" in one_sentence(err)
    assert not (tmp_path / "new").exists() and list(given.iterdir()) == []


def test_existing_build_folder_is_kept_without_force(capsys, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "build_state.json").write_text('{"done": []}')  # a build folder (whose export never finished)
    precious = out / "my_notes.txt"
    precious.write_text("keep me")
    code, _, err = run_cli(capsys, "build", "cnv", "--variant", "tiny", "--build", str(out))
    assert code != 0 and "already exists" in one_sentence(err)
    assert precious.read_text() == "keep me"


def test_export_refuses_to_overwrite(capsys, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_text("mine")
    code, _, err = run_cli(capsys, "export", "cnv", "--variant", "tiny", "--out", str(target))
    assert code != 0 and "already exists" in one_sentence(err)
    assert target.read_text() == "mine"


def test_listings(capsys):
    for cmd, word in (("models", "ResNetE"), ("boards", "xc7z020clg400-1"), ("steps", "hw_ipgen")):
        code, out, _ = run_cli(capsys, cmd)
        assert code == 0 and word in out


def test_committed_checkpoint_is_the_default(tmp_path, monkeypatch, capsys):
    import bnnflow.models.checkpoint as ckpt
    from bnnflow.cli import _default_checkpoint, parser
    from bnnflow.models.zoo import build_model

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(ckpt, "COMMITTED_DIR", tmp_path / "models" / "checkpoints")
    path = ckpt.save_checkpoint(ckpt.COMMITTED_DIR / "cnv-tiny.pt", build_model("cnv", "tiny"), "cnv", "tiny",
                                meta={"test_top1": 0.5})
    args = parser().parse_args(["build", "cnv", "--variant", "tiny"])
    _default_checkpoint(args)
    assert args.checkpoint == path and "top-1 50.0 %" in capsys.readouterr().out
    for argv in (["build", "cnv", "--variant", "tiny", "--random-weights"],  # asked for random weights
                 ["build", "cnv"]):  # no committed default variant
        args = parser().parse_args(argv)
        _default_checkpoint(args)
        assert args.checkpoint is None, argv
    from bnnflow.cli_args import request_from_args

    for argv in (["verify", "cnv", "--variant", "tiny", "--build", str(tmp_path)],  # an existing build's own weights
                 ["build", "cnv", "--variant", "tiny", "--resume"]):
        args = parser().parse_args(argv)
        _default_checkpoint(args)  # the default only for a new build there
        req = request_from_args(args)
        assert req.any_weights and req.checkpoint == path, argv
    args = parser().parse_args(["verify", "cnv", "--variant", "tiny", "--build", str(tmp_path), "--random-weights"])
    _default_checkpoint(args)
    assert not request_from_args(args).any_weights
    args = parser().parse_args(["build", "cnv", "--variant", "tiny", "--checkpoint", str(tmp_path / "x.pt")])
    _default_checkpoint(args)
    assert args.checkpoint == tmp_path / "x.pt"


# ----------------------------------------------------------------------- one vocabulary


BUILD_FOLDER_COMMANDS = ("build", "estimate", "verify", "fold", "deploy")
BUDGET_COMMANDS = ("build", "estimate", "verify", "fold", "deploy", "benchmark")


def _options(command: str) -> dict:
    from bnnflow.cli import parser

    sub = next(a for a in parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return {o: a for a in sub.choices[command]._actions for o in a.option_strings}


def test_the_same_flag_means_the_same_thing_everywhere():
    """--build is a build folder (dest build), --out the command's product (dest out), the budget flags are
    wherever fit is judged, and no command has a visible --dir, --report, --output or --plot."""
    import argparse

    for cmd in BUILD_FOLDER_COMMANDS + ("evaluate",):
        assert _options(cmd)["--build"].dest == "build", cmd
    for cmd in ("fold", "deploy", "export", "evaluate", "benchmark", "train", "runs"):
        assert _options(cmd)["--out"].dest == "out", cmd
    for cmd in BUDGET_COMMANDS:
        opts = _options(cmd)
        assert {"--lut-max", "--bram-max"} <= set(opts), cmd
        assert opts["--lut-max"].help == _options("build")["--lut-max"].help, cmd
    for cmd in ("build", "estimate", "verify", "fold", "deploy", "export", "evaluate", "benchmark", "train"):
        visible = {o for o, a in _options(cmd).items() if a.help != argparse.SUPPRESS}
        assert not visible & {"--dir", "--report", "--output", "--plot"}, cmd
    # --stop-after is a build step; training stops after an epoch
    assert _options("build")["--stop-after"].metavar == "STEP" and _options("train")["--stop-after"].help == argparse.SUPPRESS
    assert _options("train")["--stop-after-epoch"].metavar == "EPOCH"


@pytest.mark.parametrize("old, new", [
    (["build", "cnv", "--out", "X"], ["build", "cnv", "--build", "X"]),
    (["verify", "cnv", "--out", "X"], ["verify", "cnv", "--build", "X"]),
    (["export", "cnv", "--output", "X"], ["export", "cnv", "--out", "X"]),
    (["benchmark", "--dir", "X", "--plot", "Y"], ["benchmark", "--build", "X", "--out", "Y"]),
    (["evaluate", "c.pt", "--report", "X"], ["evaluate", "c.pt", "--out", "X"]),
    (["train", "cnv", "--stop-after", "3"], ["train", "cnv", "--stop-after-epoch", "3"]),
])
def test_old_spellings_still_parse_to_the_new_flags(old, new):
    from bnnflow.cli import parser

    assert vars(parser().parse_args(old)) == vars(parser().parse_args(new))


def test_model_names_are_one_list():
    from bnnflow.catalog import MODEL_NAMES, MODEL_TITLES
    from bnnflow.models.train_config import MODELS as TRAIN_MODELS
    from bnnflow.models.zoo import MODELS

    assert tuple(MODELS) == MODEL_NAMES == tuple(MODEL_TITLES) == TRAIN_MODELS


def test_every_command_that_takes_data_can_download_it():
    """CIFAR-10 errors end in 'or --download': no command may take --data without it."""
    import argparse

    from bnnflow.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    takes = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    with_data = sorted(name for name, opts in takes.items() if "--data" in opts)
    assert {"train", "evaluate", "recalibrate", "verify", "deploy"} <= set(with_data)
    assert [name for name in with_data if "--download" not in takes[name]] == []
