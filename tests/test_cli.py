"""Bad input tried as a new user would: one sentence on stderr, a non-zero exit, nothing destroyed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bnnflow.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bnnflow: error: ") and lines[0].rstrip().endswith("."), lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_help_is_instant_and_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "bnnflow", "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("build", "estimate", "verify", "export", "models", "boards"):
        assert word in out


@pytest.mark.parametrize("argv, needle", [
    (["build", "resnet50"], "Unknown model 'resnet50'"),
    (["build", "resnete", "--variant", "huge"], "Unknown variant 'huge'"),
    (["build", "resnete", "--board", "zedboard"], "Unknown board 'zedboard'"),
    (["estimate", "cnv", "--from-step", "nonsense_step", "--out", "/nonexistent/x"], "Unknown build step"),
    (["build", "cnv", "--checkpoint", "/nonexistent/model.pt"], "does not exist"),
    (["build", "cnv", "--folding", "/nonexistent/fold.json"], "Folding config"),
    (["build", "cnv", "--resume", "--out", "/nonexistent/build"], "no build to resume"),
    (["verify", "cnv", "--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["verify", "cnv", "--images", "0"], "--images"),
])
def test_user_errors(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code != 0
    assert needle in one_sentence(err)


def test_corrupt_checkpoint(capsys, tmp_path):
    bad = tmp_path / "m.pt"
    bad.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "build", "cnv", "--variant", "tiny", "--checkpoint", str(bad),
                           "--out", str(tmp_path / "b"))
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
        code, _, err = run_cli(capsys, "build", "cnv", "--variant", "tiny", "--out", str(out), "--force", *extra)
        assert code != 0 and precious.read_text() == "{}", one_sentence(err)


def test_existing_build_folder_is_kept_without_force(capsys, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    precious = out / "my_notes.txt"
    precious.write_text("keep me")
    code, _, err = run_cli(capsys, "build", "cnv", "--variant", "tiny", "--out", str(out))
    assert code != 0 and "already exists" in one_sentence(err)
    assert precious.read_text() == "keep me"


def test_export_refuses_to_overwrite(capsys, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_text("mine")
    code, _, err = run_cli(capsys, "export", "cnv", "--variant", "tiny", "-o", str(target))
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
                 ["build", "cnv"],  # no committed default variant
                 ["verify", "cnv", "--variant", "tiny", "--build", str(tmp_path)]):  # the build's own weights
        args = parser().parse_args(argv)
        _default_checkpoint(args)
        assert args.checkpoint is None, argv
    args = parser().parse_args(["build", "cnv", "--variant", "tiny", "--checkpoint", str(tmp_path / "x.pt")])
    _default_checkpoint(args)
    assert args.checkpoint == tmp_path / "x.pt"
