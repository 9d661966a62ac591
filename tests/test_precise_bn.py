"""Precise batch norm (models/precise_bn.py): what it estimates, and that training never sees it."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.cli import main
from bnnflow.models.checkpoint import read_checkpoint, save_checkpoint
from bnnflow.models.engine import Engine
from bnnflow.models.precise_bn import training_batches
from bnnflow.models.runs_table import run_row
from bnnflow.models.train import TrainConfig, prepare_model
from bnnflow.models.zoo import build_model

from conftest import one_sentence
from test_train import RUN, tensors_equal

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _parameters(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if not k.endswith(BN_BUFFERS)}


def _buffers(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k.endswith(BN_BUFFERS[:2])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_train):
    """CNV-W1A1 tiny for 3 epochs: with the running averages (--bn-images 0), with precise batch norm (the
    default), and with precise batch norm split by --resume after epoch 1."""
    root = tmp_path_factory.mktemp("precise_bn")
    common = ["train", "cnv", *RUN, "--epochs", "3", "--seed", "1", "--lr", "0.02"]
    assert main(common + ["--out", str(root / "off"), "--bn-images", "0"]) == 0
    assert main(common + ["--out", str(root / "on")]) == 0
    assert main(common + ["--out", str(root / "split"), "--stop-after-epoch", "1"]) == 0
    assert main(["train", "--resume", "--out", str(root / "split"), "--no-progress"]) == 0
    return root


def test_training_steps_never_see_it(runs):
    """The same weights after every epoch with or without it: only what is evaluated and saved changes."""
    off, on = (read_checkpoint(runs / r / "last.pt") for r in ("off", "on"))
    assert tensors_equal(_parameters(off["state_dict"]), _parameters(on["state_dict"]))
    assert tensors_equal({"o": off["train_state"]["optimizers"]}, {"o": on["train_state"]["optimizers"]})
    ho, hn = off["train_state"]["history"], on["train_state"]["history"]
    assert [r["train_loss"] for r in ho] == [r["train_loss"] for r in hn]
    assert not tensors_equal(_buffers(off["state_dict"]), _buffers(on["state_dict"]))
    assert [r["bn_images"] for r in ho] == [None] * 3
    assert [r["bn_images"] for r in hn] == [64] * 3  # all 64 training images of the run, fewer than 10,000


def test_resume_continues_identically(runs):
    on, split = (read_checkpoint(runs / r / "last.pt") for r in ("on", "split"))
    assert tensors_equal(on["state_dict"], split["state_dict"])
    assert [r["val_top1"] for r in on["train_state"]["history"]] == \
        [r["val_top1"] for r in split["train_state"]["history"]]
    assert tensors_equal(read_checkpoint(runs / "on" / "best.pt")["state_dict"],
                         read_checkpoint(runs / "split" / "best.pt")["state_dict"])


def test_logs_and_runs_table_say_so(runs):
    header, *rows = (runs / "on" / "log.csv").read_text().splitlines()
    col = header.split(",").index("bn_images")
    assert rows and all(r.split(",")[col] == "64" for r in rows)
    on, off = run_row(runs / "on")["engine"], run_row(runs / "off")["engine"]
    assert on == off + "+preciseBN" and "preciseBN" not in off


def _engine(kind: str, net):
    return Engine(net, torch.zeros(()), [], torch.device("cpu"), kind, compile=False)


def test_statistics_are_the_average_over_the_sample_and_brevitas_agrees(cifar_train):
    """Through the fast twin as through Brevitas' own forward: the running mean of the first batch norm is
    the mean of what it saw, and the variance the mean of the batches' unbiased variances."""
    torch.set_num_threads(2)
    x = torch.from_numpy(cifar_train[0][:96]).permute(0, 3, 1, 2).contiguous()
    cfg = TrainConfig(model="cnv", variant="tiny", seed=4)
    net, _ = prepare_model(cfg, torch.device("cpu"))
    twin_net, brevitas_net = net.eval(), copy.deepcopy(net)
    first = next(m for m in twin_net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    seen = []
    first.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    assert _engine("fast", twin_net).reestimate_bn(training_batches(x, 80, 32, seed=4))
    assert _engine("brevitas", brevitas_net).reestimate_bn(training_batches(x, 80, 32, seed=4))
    assert [len(b) for b in seen] == [32, 32, 16]
    dims = [0, 2, 3]
    torch.testing.assert_close(first.running_mean, torch.stack([b.mean(dims) for b in seen]).mean(0))
    torch.testing.assert_close(first.running_var, torch.stack([b.var(dims) for b in seen]).mean(0))
    torch.testing.assert_close(_buffers(twin_net.state_dict()), _buffers(brevitas_net.state_dict()))
    assert first.momentum == 0.1 and not twin_net.training  # left as they were


@settings(max_examples=30, deadline=None)
@given(images=st.integers(0, 40), batch=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_sample_is_fixed_by_the_seed(images, batch, seed):
    x = torch.arange(30 * 3 * 4 * 4, dtype=torch.int64).reshape(30, 3, 4, 4).to(torch.uint8)
    a = list(training_batches(x, images, batch, seed))
    b = list(training_batches(x, images, batch, seed))
    assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))
    n = min(images, 30)
    sizes = [min(batch, n - i) for i in range(0, n, batch)]
    assert [len(u) for u in a] == [s for s in sizes if s > 1]  # a batch of one has no batch statistics


def test_recalibrate_reproduces_what_training_estimated(runs, tmp_path, capsys):
    """`bnnflow recalibrate` over all of a run's training images gives the statistics the run itself saved
    with precise batch norm, and changes nothing else of a run that kept its running averages."""
    out = tmp_path / "again.pt"
    assert main(["recalibrate", str(runs / "on" / "best.pt"), "--out", str(out), "--threads", "2"]) == 0
    best = read_checkpoint(runs / "on" / "best.pt")
    again = read_checkpoint(out)
    assert tensors_equal(again["state_dict"], best["state_dict"])
    assert (again["meta"]["val_top1"], again["meta"]["test_top1"]) == (best["meta"]["val_top1"],
                                                                       best["meta"]["test_top1"])
    assert "re-estimated over 64 training images" in capsys.readouterr().out

    # a last.pt (its resume state says what it was trained on): the statistics it was saved with
    assert main(["recalibrate", str(runs / "on" / "last.pt"), "--out", str(out)]) == 0
    last, again = read_checkpoint(runs / "on" / "last.pt"), read_checkpoint(out)
    assert tensors_equal(_buffers(again["state_dict"]), _buffers(last["state_dict"]))
    assert again["meta"]["epoch"] == 3 and again["meta"]["recipe"] == best["meta"]["recipe"]

    off = read_checkpoint(runs / "off" / "best.pt")
    assert main(["recalibrate", str(runs / "off" / "best.pt"), "--out", str(out), "--bn-images", "32"]) == 0
    new = read_checkpoint(out)
    assert tensors_equal(_parameters(new["state_dict"]), _parameters(off["state_dict"]))
    assert not tensors_equal(_buffers(new["state_dict"]), _buffers(off["state_dict"]))
    assert new["meta"]["bn_images"] == 32 and new["meta"]["recipe"] == off["meta"]["recipe"]
    was = new["meta"]["bn_recalibrated_from"]
    assert (was["val_top1"], was["test_top1"]) == (off["meta"]["val_top1"], off["meta"]["test_top1"])


def test_recalibrate_user_errors(runs, tmp_path, capsys):
    best = runs / "on" / "best.pt"
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, build_model("cnv", "tiny"), "cnv", "tiny")
    for argv, needle in (([best, "--out", best], "is the checkpoint being read"),
                         ([best, "--out", notes], "is not a bnnflow checkpoint"),
                         ([best, "--out", tmp_path / "x.pt", "--bn-images", "1"], "at least 2 images"),
                         ([bare, "--out", tmp_path / "x.pt"], "does not record the training run"),
                         ([tmp_path / "missing.pt", "--out", tmp_path / "x.pt"], "does not exist")):
        assert main(["recalibrate", *map(str, argv)]) != 0
        assert needle in one_sentence(capsys.readouterr().err)
    assert notes.read_text() == "mine" and not (tmp_path / "x.pt").exists()


def test_the_run_says_which_statistics_it_evaluates_with(tmp_path, capsys):
    """A run announces precise batch norm, and a resume that switches it says from which epoch."""
    common = ["train", "cnv", *RUN, "--epochs", "2", "--out", str(tmp_path / "r")]
    assert main([*common, "--bn-images", "0", "--stop-after-epoch", "1"]) == 0
    assert "the running averages of training (--bn-images 0)." in " ".join(capsys.readouterr().out.split())
    assert main(["train", "--resume", "--out", str(tmp_path / "r"), "--no-progress", "--bn-images", "32"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "re-estimated over the same 32 augmented training images" in out
    assert "from epoch 2 on (until now: the running averages)." in out
    history = read_checkpoint(tmp_path / "r" / "last.pt")["train_state"]["history"]
    assert [r["bn_images"] for r in history] == [None, 32]


def test_compiled_pass_equals_update_bn_and_compiles_once(cifar_train):
    """Where evaluation runs compiled, so does the re-estimate: on the committed CNV-W1A1 and real images
    it gives update_bn's statistics (within float32 rounding of a different reduction order) from one graph,
    which a second pass reuses (update_bn's momentum None splits the graph at every batch norm)."""
    from torch._dynamo.utils import counters

    from bnnflow.models.checkpoint import committed_checkpoint, load_checkpoint

    path = committed_checkpoint("cnv", "default")
    if path is None:
        pytest.skip("no committed cnv checkpoint")
    torch.set_num_threads(2)
    x = torch.from_numpy(cifar_train[0][:200]).permute(0, 3, 1, 2).contiguous()
    compiled_net, _ = load_checkpoint(path, "cnv", "default")
    eager_net = copy.deepcopy(compiled_net.eval())
    engine = Engine(compiled_net, torch.zeros(()), [], torch.device("cpu"), "fast", compile=True)
    engine.compile_eval = True
    before = counters["stats"]["unique_graphs"]
    assert engine.reestimate_bn(training_batches(x, 160, 64, seed=2))  # batches of 64, 64 and 32
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == before + 1
    assert engine.reestimate_bn(training_batches(x, 160, 64, seed=2))
    assert counters["stats"]["unique_graphs"] == graphs
    assert _engine("fast", eager_net).reestimate_bn(training_batches(x, 160, 64, seed=2))
    compiled, eager = compiled_net.state_dict(), eager_net.state_dict()
    for name in compiled:
        if name.endswith("running_var"):
            torch.testing.assert_close(compiled[name], eager[name], rtol=1e-3, atol=0)
        elif name.endswith("running_mean"):  # relative to the spread: means near zero have no relative error
            spread = eager[name.replace("running_mean", "running_var")].sqrt()
            assert ((compiled[name] - eager[name]).abs() / spread).max() < 1e-3, name
        elif name.endswith("num_batches_tracked"):
            assert compiled[name] == eager[name] == 3
    bns = [m for m in compiled_net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert {m.momentum for m in bns} == {0.1} and not compiled_net.training
