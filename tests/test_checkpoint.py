"""Checkpoints are written atomically and bad ones end in one clear sentence."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.errors import BnnflowError
from bnnflow.models.checkpoint import load_checkpoint, save_checkpoint
from bnnflow.models.packing import load_packed, save_packed
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


# a run's last.pt is written packed (models/packing.py): lossless, and damage is still one sentence
_FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


class _Pair(NamedTuple):
    tensor: torch.Tensor
    count: int


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(_FLOATS), shape=st.lists(st.integers(0, 40), min_size=0, max_size=4),
       seed=st.integers(0, 2**31 - 1), specials=st.booleans())
def test_packed_tensors_read_back_bit_for_bit(tmp_path_factory, dtype, shape, seed, specials):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * 10 ** torch.randint(-6, 6, shape, generator=g)).to(dtype)
    if specials and t.numel():
        t.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, -float("inf")], dtype=dtype)[:t.numel()]
    obj = {"w": t, "nested": [t.clone(), (1, "x", None)], "ints": torch.arange(300), "step": 7,
           "named": _Pair(t, 3)}
    path = tmp_path_factory.mktemp("p") / "last.pt"
    save_packed(obj, path)
    back = load_packed(path)
    for a, b in ((t, back["w"]), (t, back["nested"][0]), (obj["ints"], back["ints"])):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))
    assert back["nested"][1] == (1, "x", None) and back["step"] == 7
    assert isinstance(back["named"], _Pair) and torch.equal(_bits(back["named"].tensor), _bits(t))


def test_packed_keeps_channels_last(tmp_path):
    t = torch.randn(8, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    save_packed({"w": t}, tmp_path / "p.pt")
    back = load_packed(tmp_path / "p.pt")["w"]
    assert back.stride() == t.stride() and torch.equal(back, t)


def test_packed_checkpoint_is_smaller_and_loads(tmp_path):
    # latent weights as training leaves them: clipped to [-1, 1], like Adam's moments small floats
    net, g = build_model("cnv", "tiny").eval(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1, generator=g)
    plain = save_checkpoint(tmp_path / "plain.pt", net, "cnv", "tiny")
    packed = save_checkpoint(tmp_path / "packed.pt", net, "cnv", "tiny", packed=True)
    assert packed.stat().st_size < 0.93 * plain.stat().st_size
    a, _ = load_checkpoint(plain, "cnv", "tiny")
    b, _ = load_checkpoint(packed, "cnv", "tiny")
    assert all(torch.equal(_bits(x), _bits(y)) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed.pt", "plain.pt"]
    # the state_dict stays an OrderedDict with its module versions, as torch.save keeps it
    from bnnflow.models.checkpoint import read_checkpoint

    a, b = (read_checkpoint(p)["state_dict"] for p in (plain, packed))
    assert type(b) is type(a) and b._metadata == a._metadata and list(b) == list(a)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_packed_checkpoint_is_one_sentence(tmp_path, damage):
    path = save_checkpoint(tmp_path / "last.pt", build_model("cnv", "tiny"), "cnv", "tiny", packed=True)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BnnflowError, match=r"corrupt.*re-create it with 'bnnflow train'\.$"):
        load_checkpoint(path)
