"""Distillation (`bnnflow train --teacher CKPT`): the calibration, the loss, and a run on real CIFAR-10
images with the committed ResNetE as the teacher."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.cli import main
from bnnflow.models.checkpoint import committed_checkpoint, read_checkpoint
from bnnflow.models.distill import calibrated_scale, distillation_loss

from conftest import one_sentence

pytestmark = pytest.mark.beside_image  # `make test`: in the Docker image's session (Makefile)

RUN = ["train", "cnv", "--variant", "tiny", "--subset", "64", "--val-size", "64", "--test-subset", "64",
       "--batch-size", "32", "--threads", "2", "--no-progress", "--no-compile", "--epochs", "2", "--seed", "4"]


@settings(max_examples=20, deadline=None)
@given(true_scale=st.floats(0.05, 5.0), seed=st.integers(0, 2**16))
def test_calibration_finds_the_scale_the_labels_were_drawn_at(true_scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(20000, 10, generator=g) * 3
    y = torch.multinomial(F.softmax(logits * true_scale, 1), 1, generator=g).squeeze(1)
    assert calibrated_scale(logits, y) == pytest.approx(true_scale, rel=0.1)


def test_loss_is_cross_entropy_at_weight_zero_and_kl_at_weight_one():
    g = torch.Generator().manual_seed(0)
    scaled, y = torch.randn(16, 10, generator=g), torch.randint(0, 10, (16,), generator=g)
    teacher = F.softmax(torch.randn(16, 10, generator=g), 1)
    assert torch.allclose(distillation_loss(scaled, y, teacher, 0.0, 4.0), F.cross_entropy(scaled, y))
    own = F.softmax(scaled / 4.0, 1)  # a teacher that agrees with the student: nothing to learn
    assert float(distillation_loss(scaled, y, own, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(scaled, y, teacher, 1.0, 4.0)) > 0.01


def test_teacher_logits_are_kept_and_read_back_only_for_the_same_teacher_and_images(tmp_path, monkeypatch):
    from bnnflow.models import distill

    calls = []

    def fake_teacher(path, x):  # a deterministic "teacher", counted
        calls.append(path)
        return x.float().flatten(1)[:, :10] / 255.0 + len(calls)

    monkeypatch.setattr(distill, "teacher_logits", fake_teacher)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    keep = tmp_path / "run" / "teacher_logits.pt"
    first, reused = distill.kept_teacher_logits("t.pt", "aa", x, keep)
    assert not reused and keep.is_file() and len(calls) == 1
    again, reused = distill.kept_teacher_logits("t.pt", "aa", x, keep)
    assert reused and torch.equal(again, first) and len(calls) == 1
    _, reused = distill.kept_teacher_logits("t.pt", "bb", x, keep)  # another teacher file
    assert not reused and len(calls) == 2
    y = x.clone()
    y[0, 0, 0, 0] ^= 1  # one pixel of other images
    _, reused = distill.kept_teacher_logits("t.pt", "bb", y, keep)
    assert not reused and len(calls) == 3
    keep.write_bytes(keep.read_bytes()[:100])  # a damaged cache is labelled again, not an error
    _, reused = distill.kept_teacher_logits("t.pt", "bb", y, keep)
    assert not reused and len(calls) == 4 and distill.kept_teacher_logits("t.pt", "bb", y, keep)[1]


def test_run_with_the_committed_resnete_as_teacher(tmp_path, capsys):
    teacher = committed_checkpoint("resnete", "default")
    if teacher is None:
        pytest.skip("no committed ResNetE checkpoint")
    mine = tmp_path / "teacher.pt"
    shutil.copy(teacher, mine)
    out = tmp_path / "run"
    assert main(RUN + ["--teacher", str(mine), "--out", str(out), "--stop-after-epoch", "1"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["teacher"] == str(mine) and info["config"]["teacher_weight"] == 0.5
    t = info["teacher"]
    assert t["train_top1"] > 0.8 and t["logit_scale"] > 0  # a trained teacher on images it has seen
    assert "Distilling from" in capsys.readouterr().out
    plain = tmp_path / "plain"
    assert main(RUN + ["--out", str(plain), "--stop-after-epoch", "1"]) == 0
    a, b = (read_checkpoint(d / "last.pt")["train_state"]["history"][0] for d in (out, plain))
    assert a["train_loss"] != b["train_loss"]  # the teacher's term is in the loss
    # a teacher file that changed under a run is refused on --resume, and nothing is written
    before = (out / "last.pt").read_bytes()
    mine.write_bytes(read_bytes_of_other_checkpoint())
    code = main(["train", "--resume", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "has changed since the run" in one_sentence(err)
    assert (out / "last.pt").read_bytes() == before
    shutil.copy(teacher, mine)  # the same teacher again: the run goes on
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert "its labels read back from teacher_logits.pt" in " ".join(capsys.readouterr().out.split())
    assert len(read_checkpoint(out / "last.pt")["train_state"]["history"]) == 2
    again = json.loads((out / "run.json").read_text())["teacher"]
    assert again["seconds_all_starts"] == pytest.approx(t["seconds_all_starts"] + again["seconds"], abs=0.11)
    assert not t["logits_reused"] and again["logits_reused"]  # the resume read the kept logits back
    assert again["train_top1"] == t["train_top1"] and again["logit_scale"] == t["logit_scale"]


def read_bytes_of_other_checkpoint() -> bytes:
    other = committed_checkpoint("cnv", "default")
    if other is None:
        pytest.skip("no committed CNV checkpoint")
    return other.read_bytes()


@pytest.mark.parametrize("extra, needle", [
    (["--teacher", "/nonexistent/best.pt"], "does not exist"),
    (["--teacher-weight", "1.5"], "--teacher-weight"),
    (["--teacher-temperature", "0"], "--teacher-temperature"),
])
def test_teacher_user_errors(capsys, extra, needle):
    code = main(RUN + extra + ["--out", "/tmp/bnnflow-never"])
    assert code != 0 and needle in one_sentence(capsys.readouterr().err)
