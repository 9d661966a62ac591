"""The fast training twin equals the Brevitas model it shares weights with (real CIFAR-10 images).

What is trained through the twin must be exactly what Brevitas exports: same eval logits, same
train-mode logits and gradients, and a twin-trained run that resumes exactly and builds to a
hardware graph that agrees with Brevitas (test_train's slow hardware test covers the latter).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bnnflow.cli import main
from bnnflow.models import fast
from bnnflow.models.checkpoint import load_checkpoint, read_checkpoint
from bnnflow.models.engine import Engine
from bnnflow.models.zoo import build_model


pytestmark = pytest.mark.beside_builds  # `make test`: in the shared builds' session (Makefile)

TINY = [("resnete", "tiny"), ("densenet", "tiny"), ("cnv", "tiny")]


@pytest.fixture(scope="module")
def images(cifar_train):
    x, y = cifar_train
    return torch.from_numpy(x[:96]).permute(0, 3, 1, 2).float(), torch.from_numpy(y[:96])


_TRAINED: dict = {}


def trained_a_little(model: str, variant: str, images, steps: int = 3):
    """A Brevitas model past its statistics phase and a few Adam steps, so nothing is at its init
    (built once per model; callers get a deep copy)."""
    if (model, variant) not in _TRAINED:
        torch.manual_seed(0)
        x, y = images
        net = build_model(model, variant).train()
        for m in net.modules():  # a short statistics phase: what follows it is what the twin covers
            if hasattr(m, "collect_stats_steps"):
                m.collect_stats_steps = 20
        with torch.no_grad():  # the statistics phase counts forward calls; small batches suffice
            while fast.stats_pending(net):
                net(x[:8])
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for i in range(steps):
            loss = F.cross_entropy(net(x[32 * i:32 * i + 32]) * 0.05, y[32 * i:32 * i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
        _TRAINED[model, variant] = net
    return copy.deepcopy(_TRAINED[model, variant])


@pytest.mark.parametrize("model, variant", TINY)
def test_eval_logits_identical(model, variant, images):
    net = trained_a_little(model, variant, images).eval()
    twin = fast.make_twin(net).eval()
    fast.clamp_binary_weights(fast.binary_latent_weights(net))
    with torch.no_grad():
        a, b = net(images[0]), twin(images[0])
    assert torch.equal(a, b)
    assert len(torch.unique(a.argmax(1))) > 1  # not a degenerate net


def test_committed_checkpoint_eval_logits_identical(cifar_test):
    from bnnflow.models.checkpoint import committed_checkpoint

    path = committed_checkpoint("resnete", "default")
    if path is None:
        pytest.skip("no committed resnete checkpoint")
    net, _ = load_checkpoint(path, "resnete", "default")
    x = torch.from_numpy(cifar_test[0][:200]).permute(0, 3, 1, 2).float()
    twin = fast.make_twin(net).eval()
    with torch.no_grad():
        a, b = net(x), twin(x)
    assert torch.equal(a, b)


def _evaluating_engine(net, compile_eval: bool) -> Engine:
    scale = torch.nn.Parameter(torch.tensor(0.0))
    eng = Engine(net, scale, [torch.optim.Adam(net.parameters())], torch.device("cpu"), "fast", compile=True)
    eng.compile_eval = compile_eval
    return eng


def test_compiled_evaluation_equals_brevitas_on_the_committed_cnv(cifar_test):
    """The long runs validate through the compiled fp32 twin: on real images it gives Brevitas' logits bit
    for bit (checked against the eager twin on the first batch, then used alone)."""
    from bnnflow.models.checkpoint import committed_checkpoint

    path = committed_checkpoint("cnv", "default")
    if path is None:
        pytest.skip("no committed cnv checkpoint")
    net, _ = load_checkpoint(path, "cnv", "default")
    net.eval()
    eng = _evaluating_engine(net, compile_eval=True)
    x = torch.from_numpy(cifar_test[0][:400]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        first, rest = eng.eval_forward(x[:200]), eng.eval_forward(x[200:])
        assert eng._eval_compiled_exact is True
        assert torch.equal(torch.cat([first, rest]), net(x))
    # `--benchmark-steps`' evaluation line: both paths on the same images, same logits
    from bnnflow.models.train_speed import evaluation_speed

    speed = evaluation_speed(eng, torch.from_numpy(cifar_test[0][:200]).permute(0, 3, 1, 2))
    assert speed["identical"] and speed["images"] == 200 and min(speed["images_per_s"].values()) > 0
    # and its precise batch-norm line: update_bn on the eager twin against the compiled pass
    from bnnflow.models.train_speed import bn_speed

    bn = bn_speed(eng, torch.from_numpy(cifar_test[0][:128]).permute(0, 3, 1, 2), 64, seed=0)
    assert bn["images"] == 128 and min(bn["images_per_s"].values()) > 0 and 0 <= bn["apart"] < 1e-3


def test_compiled_evaluation_that_differs_is_not_used(images):
    net = build_model("cnv", "tiny").eval()
    eng = _evaluating_engine(net, compile_eval=True)
    eng.twin()
    eng._compiled = lambda xb: eng._twin(xb) + 1e-6  # a compiled graph that rounds differently
    x = images[0][:16]
    with torch.no_grad():
        assert torch.equal(eng.eval_forward(x), net(x)) and eng._eval_compiled_exact is False
        assert torch.equal(eng.eval_forward(x), net(x))
    off = _evaluating_engine(net, compile_eval=False)  # the default: short runs do not compile it
    with torch.no_grad():
        assert torch.equal(off.eval_forward(x), net(x)) and off._eval_compiled_exact is None


@pytest.mark.parametrize("model, variant", TINY)
def test_train_logits_and_gradients_equal(model, variant, images):
    x, y = images
    net = trained_a_little(model, variant, images)
    state = copy.deepcopy(net.state_dict())

    def grads(forward_of):
        net.load_state_dict(state)  # same BN running stats before each pass
        fwd = forward_of(net)
        params = list(net.parameters())
        logits = fwd(x[:64])
        g = torch.autograd.grad(F.cross_entropy(logits * 0.05, y[:64]), params, allow_unused=True)
        return logits.detach(), g, params

    la, ga, params = grads(lambda n: n)
    lb, gb, _ = grads(fast.make_twin)  # built after the load (Brevitas rebuilds scales on load)
    assert torch.equal(la, lb)
    checked = 0
    for p, a, b in zip(params, ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            # equal up to float summation order (the pool's rounding of sums)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7 * float(a.abs().max())), p.shape
            checked += 1
    assert checked == len(params)


def test_stats_phase_runs_in_brevitas_then_the_twin(images):
    x, y = images
    net = build_model("resnete", "tiny").train()
    scale = torch.nn.Parameter(torch.tensor(0.0))
    opt = torch.optim.Adam(list(net.parameters()) + [scale], 1e-3)
    eng = Engine(net, scale, [opt], torch.device("cpu"), "fast", bf16=False, compile=False)
    steps = 0
    while not eng.uses_twin():
        eng.step(x[:8], y[:8])
        steps += 1
    assert 5 < steps < 100 and eng._twin is None
    eng.step(x[:8], y[:8])
    assert eng._twin is not None
    # the binary latent weights were clamped in place before the twin's forward, as Brevitas does
    assert all(float(w.detach().abs().max()) <= 1.0 + 1e-2 for w in fast.binary_latent_weights(net))
    # after bf16 twin steps, the Brevitas model (what export sees) computes what the twin computes
    eng.bf16 = True
    for i in range(3):
        eng.step(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), eng.eval_forward(x))


def test_real_weight_stage_trains_real_weights_and_evaluates_binary(images):
    """Two-stage training's first stage: training steps see the clamped latent weights, every evaluation
    (what selects best.pt and what exports) the binary network; then back to binary training."""
    x, y = images
    net = trained_a_little("cnv", "tiny", images)
    scale = torch.nn.Parameter(torch.tensor(0.0))
    opt = torch.optim.Adam(list(net.parameters()) + [scale], 1e-3)
    eng = Engine(net, scale, [opt], torch.device("cpu"), "fast", bf16=False, compile=False)
    state = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        binary_train = eng.forward(x[:32])
        eng.real_weights = True
        real_train = eng.forward(x[:32])
    assert not torch.equal(binary_train, real_train)
    eng.step(x[:32], y[:32])  # a real-weight step
    assert all(float(w.detach().abs().max()) <= 1.0 for w in fast.binary_latent_weights(net))
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), eng.eval_forward(x))  # binary, equal to Brevitas
    net.train()
    net.load_state_dict(state)
    eng = Engine(net, scale, [opt], torch.device("cpu"), "fast", bf16=False, compile=False)
    eng.real_weights = True
    with torch.no_grad():
        eng.forward(x[:32])
        eng.real_weights = False
        assert torch.equal(eng.forward(x[:32]), binary_train)


@pytest.mark.parametrize("recu", [False, True], ids=["plain", "recu"])
def test_training_twin_compiles_as_one_graph(images, recu):
    """What `bnnflow train` compiles (the tests above run eager): dynamo traces the twin's training forward
    without a graph break. A break (ReCU's tau read as a float did it) splits the forward into pieces
    that see several shapes, and inductor then failed on a dynamic-shape convolution backward."""
    from bnnflow.models import recu as recu_mod

    net = trained_a_little("cnv", "tiny", images).train()
    if recu:
        recu_mod.apply_recu(net)
    twin = fast.make_twin(net).train()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(twin)(images[0][:8].contiguous(memory_format=torch.channels_last))
    assert explained.graph_break_count == 0, explained.break_reasons


def test_unknown_brevitas_layer_is_refused():
    from brevitas.nn import QuantTanh

    net = torch.nn.Sequential(QuantTanh())
    with pytest.raises(TypeError, match="QuantTanh"):
        fast.make_twin(net)


# ------------------------------------------------------------------ runs through the engine

RUN = ["train", "resnete", "--variant", "tiny", "--subset", "256", "--val-size", "128", "--test-subset", "128",
       "--batch-size", "16", "--threads", "2", "--no-progress", "--no-compile", "--epochs", "2", "--seed", "1"]


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory, images):
    """16 steps an epoch: the statistics phase (~21 steps) ends inside epoch 2, the twin takes over."""
    root = tmp_path_factory.mktemp("fast_runs")
    assert main(RUN + ["--out", str(root / "straight")]) == 0
    assert main(RUN + ["--out", str(root / "split"), "--stop-after-epoch", "1"]) == 0
    assert main(["train", "--resume", "--out", str(root / "split"), "--no-progress"]) == 0
    return root


def test_fast_run_resumes_exactly(fast_runs):
    a = read_checkpoint(fast_runs / "straight" / "last.pt")
    b = read_checkpoint(fast_runs / "split" / "last.pt")
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    ha, hb = a["train_state"]["history"], b["train_state"]["history"]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert all(r["engine"].startswith("fast") for r in ha + hb)


def test_best_is_selected_on_validation_and_reproduces(fast_runs, cifar_test):
    payload = read_checkpoint(fast_runs / "straight" / "best.pt")
    meta = payload["meta"]
    hist = read_checkpoint(fast_runs / "straight" / "last.pt")["train_state"]["history"]
    best = max(hist, key=lambda r: r["val_top1"])
    assert meta["epoch"] == best["epoch"] and meta["val_top1"] == best["val_top1"]
    assert meta["selected_on"].startswith("val_top1")
    net, _ = load_checkpoint(fast_runs / "straight" / "best.pt", "resnete", "tiny")
    x = torch.from_numpy(cifar_test[0][:128]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        top1 = float((net(x).argmax(1) == torch.from_numpy(cifar_test[1][:128])).float().mean())
    assert top1 == pytest.approx(meta["test_top1"])


def test_engine_can_change_on_resume(fast_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fast_runs / "split", run)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3", "--engine", "brevitas",
                 "--no-progress"]) == 0
    hist = read_checkpoint(run / "last.pt")["train_state"]["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3] and hist[-1]["engine"] == "brevitas"


def test_benchmark_prints_both_paths(capsys):
    code = main(["train", "resnete", "--variant", "tiny", "--subset", "256", "--val-size", "0",
                 "--batch-size", "16", "--threads", "2", "--benchmark-steps", "4", "--no-compile"])
    out = capsys.readouterr().out
    assert code == 0 and "brevitas (Brevitas forward" in out and "speed-up:" in out
    assert "evaluation: not compared (--no-compile" in out
    ratio = float(out.split("speed-up:")[1].split("x")[0])
    assert ratio > 0


def test_runs_table_reports_the_validation_selected_epoch(fast_runs, capsys, tmp_path):
    import json

    out = tmp_path / "table.md"
    assert main(["runs", str(fast_runs / "straight"), str(fast_runs / "split"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| run | model | recipe |") and len(lines) == 4
    hist = json.loads((fast_runs / "straight" / "log.json").read_text())
    best = max(hist, key=lambda r: r["val_top1"])
    row = lines[2].split("|")
    assert row[1].strip() == "straight" and row[5].strip() == "2/2" and row[7].strip() == str(best["epoch"])
    assert row[8].strip() == f"{100 * best['val_top1']:.2f} %" and row[9].strip() == f"{100 * best['test_top1']:.2f} %"
    resumed = lines[3].split("|")
    assert [row[i] for i in (3, 4, 5, 7, 8, 9)] == [resumed[i] for i in (3, 4, 5, 7, 8, 9)]  # same recipe, result
    assert main(["runs", str(tmp_path)]) != 0
    assert "not a run folder" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "missing")]) != 0
    assert "does not exist" in capsys.readouterr().err
