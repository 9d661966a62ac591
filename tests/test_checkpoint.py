"""Checkpoints are written atomically and bad ones end in one clear sentence."""

from __future__ import annotations

import pytest
import torch

from bnnflow.errors import BnnflowError
from bnnflow.models.checkpoint import load_checkpoint, save_checkpoint
from bnnflow.models.zoo import build_model


def test_round_trip(tmp_path):
    net = build_model("resnete", "tiny").eval()
    path = save_checkpoint(tmp_path / "c.pt", net, "resnete", "tiny", meta={"seed": 1})
    loaded, payload = load_checkpoint(path, "resnete", "tiny")
    x = torch.rand(2, 3, 32, 32) * 255
    assert torch.equal(net(x), loaded(x))
    assert payload["meta"]["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_missing(tmp_path):
    with pytest.raises(BnnflowError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(BnnflowError, match="corrupt"):
        load_checkpoint(path)


def test_truncated(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", build_model("cnv", "tiny"), "cnv", "tiny")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BnnflowError, match="corrupt"):
        load_checkpoint(path)


def test_not_a_bnnflow_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(BnnflowError, match="not a bnnflow checkpoint"):
        load_checkpoint(path)


def test_mismatched_model(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", build_model("cnv", "tiny"), "cnv", "tiny")
    with pytest.raises(BnnflowError, match="holds cnv/tiny"):
        load_checkpoint(path, "resnete", "tiny")


def test_wrong_shapes(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", build_model("cnv", "small"), "cnv", "tiny")
    with pytest.raises(BnnflowError, match="does not fit"):
        load_checkpoint(path)
