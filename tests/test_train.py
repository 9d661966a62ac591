"""`bnnflow train` / `evaluate`, ReCU and the PSI optimizer, on real CIFAR-10 images.

Runs are tiny (the tiny variants, a few dozen images) so the file stays fast; the one test
that builds the FINN graph is marked slow (and build).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnflow.cli import main
from bnnflow.models import psi, recu
from bnnflow.models.checkpoint import load_checkpoint, read_checkpoint
from bnnflow.models.train import TrainConfig, evaluate_tensors, make_optimizers, prepare_model

from conftest import one_sentence


RUN = ["--variant", "tiny", "--subset", "64", "--val-size", "64", "--test-subset", "100", "--batch-size", "32",
       "--threads", "2", "--no-progress", "--no-compile"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tensors_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not tensors_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y) or not all(tensors_equal({0: u}, {0: v}) for u, v in zip(x, y)):
                return False
        elif x != y:
            return False
    return True


# ------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("model, optimizer, use_recu", [
    ("cnv", "adam", False), ("cnv", "psi", False), ("cnv", "adam", True), ("cnv", "psi", True)])
def test_a_few_steps_reduce_the_loss(cifar_train, model, optimizer, use_recu):
    torch.set_num_threads(2)
    x, y = cifar_train
    xb = torch.from_numpy(x[:32]).permute(0, 3, 1, 2).float()
    yb = torch.from_numpy(y[:32])
    cfg = TrainConfig(model=model, variant="tiny", optimizer=optimizer, recu=use_recu, lr=5e-3, psi_lr=30.0)
    net, scale = prepare_model(cfg, torch.device("cpu"))
    opts = make_optimizers(cfg, net, scale, torch.device("cpu"))

    def loss():
        return torch.nn.functional.cross_entropy(net(xb) * scale.exp(), yb)

    net.train()
    first = float(loss().detach())
    for _ in range(8):
        lo = loss()
        for o in opts:
            o.zero_grad()
        lo.backward()
        for o in opts:
            o.step()
    assert float(loss().detach()) < 0.85 * first


# ------------------------------------------------------------------------ resume, checkpoints


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_train):
    """resnete/tiny with ReCU and PSI: 2 epochs straight, and 1 epoch + --resume for 1 more."""
    root = tmp_path_factory.mktemp("runs")
    common = ["train", "resnete", *RUN, "--epochs", "2", "--recu", "--optimizer", "psi", "--seed", "3"]
    assert main(common + ["--out", str(root / "straight")]) == 0
    assert main(common + ["--out", str(root / "split"), "--stop-after-epoch", "1"]) == 0
    first = read_checkpoint(root / "split" / "last.pt")
    assert main(["train", "--resume", "--out", str(root / "split"), "--no-progress"]) == 0
    return root, first


def test_resume_continues_identically(runs):
    root, first = runs
    assert first["train_state"]["epoch"] == 1
    a = read_checkpoint(root / "straight" / "last.pt")
    b = read_checkpoint(root / "split" / "last.pt")
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] == 2
    assert tensors_equal(a["state_dict"], b["state_dict"])
    assert tensors_equal({"o": a["train_state"]["optimizers"]}, {"o": b["train_state"]["optimizers"]})
    assert a["train_state"]["quant_stats"].keys() and tensors_equal(a["train_state"]["quant_stats"],
                                                                     b["train_state"]["quant_stats"])
    # the stream quantiser was still collecting statistics (it counts calls: 300 are ~20 steps here)
    # when the run was split, and went on collecting after --resume
    assert all(0 < s["counter"] < 300 for s in first["train_state"]["quant_stats"].values())
    assert all(s["counter"] == 2 * f["counter"] for s, f in zip(b["train_state"]["quant_stats"].values(),
                                                                first["train_state"]["quant_stats"].values()))
    ha, hb = a["train_state"]["history"], b["train_state"]["history"]
    assert [r["test_top1"] for r in ha] == [r["test_top1"] for r in hb]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    for name in ("best.pt",):
        assert tensors_equal(read_checkpoint(root / "straight" / name)["state_dict"],
                             read_checkpoint(root / "split" / name)["state_dict"])
    for name in ("log.csv", "log.json", "curve.png", "run.json"):
        assert (root / "split" / name).stat().st_size > 0


def test_best_checkpoint_is_small_and_reproduces_its_accuracy(runs, cifar_test):
    root, _ = runs
    path = root / "straight" / "best.pt"
    payload = read_checkpoint(path)
    assert "train_state" not in payload and not any("parametrizations" in k for k in payload["state_dict"])
    meta = payload["meta"]
    assert meta["recipe"]["recu"] and meta["recipe"]["optimizer"] == "psi" and meta["seed"] == 3
    assert meta["dataset"]["train_sha256"] and meta["dataset"]["test_sha256"] and meta["epochs"] == 2
    assert path.stat().st_size < 0.6 * (root / "straight" / "last.pt").stat().st_size
    net, _ = load_checkpoint(path, "resnete", "tiny")  # plain model, strict load
    x, y = cifar_test
    xt = torch.from_numpy(x[:meta["test_images"]]).permute(0, 3, 1, 2).contiguous()
    _, top1, _ = evaluate_tensors(net, xt, torch.from_numpy(y[:meta["test_images"]]))
    assert top1 == meta["test_top1"]


def test_evaluate_cli_brevitas_only(runs, cifar_test, tmp_path, capsys):
    root, _ = runs
    x, y = cifar_test
    small = tmp_path / "cifar10_test.npz"
    np.savez(small, x=x[:100], y=y[:100])
    report = tmp_path / "eval.json"
    code, out, _ = cli(capsys, "evaluate", root / "straight" / "best.pt", "--hw-images", "0", "--data", small,
                       "--out", report)
    assert code == 0 and "Brevitas top-1" in out
    meta = read_checkpoint(root / "straight" / "best.pt")["meta"]
    import json

    assert json.loads(report.read_text())["brevitas_top1"] == meta["test_top1"]


def test_existing_run_folder_is_kept(runs, capsys):
    root, _ = runs
    before = (root / "straight" / "last.pt").read_bytes()
    code, _, err = cli(capsys, "train", "resnete", *RUN, "--out", root / "straight")
    assert code != 0 and "already exists" in one_sentence(err)
    assert (root / "straight" / "last.pt").read_bytes() == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_file_or_foreign_folder_is_never_taken_as_a_run_folder(capsys, tmp_path, force):
    notes, mine = tmp_path / "notes.md", tmp_path / "mine"
    notes.write_text("keep")
    mine.mkdir()
    (mine / "data.csv").write_text("keep")
    for out, needle in ((notes, "is a file, not a run folder"), (mine, "is not a bnnflow run folder")):
        code, _, err = cli(capsys, "train", "cnv", "--variant", "tiny", "--epochs", "1", "--out", out, *force)
        assert code != 0 and needle in one_sentence(err)
    assert notes.read_text() == (mine / "data.csv").read_text() == "keep"


@pytest.mark.parametrize("argv, needle", [
    (["train", "cnv", "--resume", "--out", "/nonexistent/run"], "no run to resume"),
    (["train", "--epochs", "3"], "Name the model"),
    (["train", "cnv", "--variant", "huge"], "Unknown variant"),
    (["train", "cnv", "--epochs", "0"], "--epochs"),
    (["train", "cnv", "--batch-size", "1"], "--batch-size must be at least 2"),
    (["train", "cnv", "--val-size", "-1"], "--val-size"),
    (["train", "cnv", "--val-size", "50000", "--out", "/tmp/bnnflow-never"], "leaves none"),
    (["train", "cnv", "--benchmark-steps", "3"], "even number"),
    (["train", "cnv", "--label-smoothing", "1"], "--label-smoothing"),
    (["train", "cnv", "--epochs", "5", "--warmup-epochs", "5"], "--warmup-epochs"),
    (["train", "cnv", "--epochs", "5", "--real-weights-epochs", "5"], "--real-weights-epochs"),
    (["train", "cnv", "--engine", "brevitas", "--real-weights-epochs", "1"], "needs the fast engine"),
    (["train", "cnv", "--recu", "--tau-start", "0.99", "--tau-end", "0.9"], "tau"),
    (["train", "cnv", "--data", "/nonexistent/cifar", "--out", "/tmp/bnnflow-never"], "/nonexistent/cifar"),
    (["evaluate", "/nonexistent/best.pt"], "does not exist"),
])
def test_user_errors(capsys, argv, needle):
    code, _, err = cli(capsys, *argv)
    assert code != 0 and needle in one_sentence(err)


def test_warmup_then_cosine_schedule():
    from bnnflow.models.train import cosine

    f = [cosine(s, 100, 10) for s in range(100)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[10] == 1.0 and all(a > b for a, b in zip(f[10:], f[11:])) and f[-1] < 1e-3
    assert [cosine(s, 100) for s in range(100)] == [cosine(s, 100, 0) for s in range(100)]


def test_resume_refuses_to_shorten_silently(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs[0] / "split", run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", "1")
    assert code != 0 and "--shorten" in one_sentence(err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # asked for explicitly: the run already has 2 epochs, so there is nothing left to shorten
    code, _, err = cli(capsys, "train", "--resume", "--out", run, "--epochs", "1", "--shorten")
    assert code != 0 and "nothing to shorten" in one_sentence(err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_corrupt_or_mismatched_checkpoints(runs, tmp_path, capsys):
    root, _ = runs
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "last.pt").write_bytes(b"\x00not a checkpoint" * 50)
    code, _, err = cli(capsys, "train", "--resume", "--out", bad)
    assert code != 0 and "corrupt" in one_sentence(err)
    (bad / "best.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    code, _, err = cli(capsys, "evaluate", bad / "best.pt", "--hw-images", "0")
    assert code != 0 and "corrupt" in one_sentence(err)
    # a run of resnete resumed as cnv, or with another recipe
    code, _, err = cli(capsys, "train", "cnv", "--resume", "--out", root / "straight")
    assert code != 0 and "was trained with the model resnete" in one_sentence(err)
    code, _, err = cli(capsys, "train", "--resume", "--out", root / "straight", "--lr", "0.5")
    assert code != 0 and "--lr" in one_sentence(err)
    code, _, err = cli(capsys, "evaluate", root / "straight" / "last.pt", "--hw-images", "0")
    assert code != 0 and "use the best.pt" in one_sentence(err)
    # best.pt (no training state) put where last.pt belongs
    other = tmp_path / "other"
    other.mkdir()
    (other / "last.pt").write_bytes((root / "straight" / "best.pt").read_bytes())
    code, _, err = cli(capsys, "train", "--resume", "--out", other)
    assert code != 0 and "no training state" in one_sentence(err)


# ------------------------------------------------------------------------------------ ReCU


def laplace_weights(out_ch=64, fan_in=576, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(out_ch, 1, generator=g) * 0.5 + 0.05  # a different scale per channel
    shift = torch.randn(out_ch, 1, generator=g) * 0.1  # and a different mean
    u = torch.rand(out_ch, fan_in, generator=g) - 0.5
    w = shift - b * torch.sign(u) * torch.log1p(-2 * u.abs())
    return w.view(out_ch, fan_in // 9, 3, 3)


@pytest.mark.parametrize("tau", [0.85, 0.9, 0.99])
def test_recu_clamps_each_channel_to_its_quantiles(tau):
    w = laplace_weights()
    out = recu.ReCU(tau)(w)
    z = recu.standardize(w).flatten(1)
    q = -z.abs().mean(1, keepdim=True) * math.log(2 - 2 * tau)  # Laplace Q(tau) per channel
    flat = out.flatten(1)
    # clamped to [Q(1-tau), Q(tau)] of each channel, reached on both sides
    assert torch.allclose(flat.max(1).values, q.squeeze(1)) and torch.allclose(flat.min(1).values, -q.squeeze(1))
    clamped = (flat.abs() >= q - 1e-6).float().mean()
    assert abs(float(clamped) - 2 * (1 - tau)) < 0.35 * 2 * (1 - tau) + 0.01
    # standardisation: balanced signs per channel (maximal information entropy), same signs as w - mean
    centred = w.flatten(1) - w.flatten(1).mean(1, keepdim=True)
    assert torch.equal(torch.sign(flat), torch.sign(centred))
    assert float((torch.sign(flat).mean(1)).abs().max()) < 0.15
    # dead weights revived: the outliers move back to the edge of the bulk (Q(tau)), where a smaller
    # change flips them, and the quantisation error of the standardised weights drops (Theorem 1)
    before = recu.relative_quantisation_error(recu.standardize(w))
    assert bool((recu.relative_quantisation_error(out) < before).all())


def test_recu_tau_schedule_is_the_papers_exponential():
    taus = [recu.tau_schedule(t / 10) for t in range(11)]
    assert taus[0] == pytest.approx(0.85) and taus[-1] == pytest.approx(0.99)
    steps = np.diff(taus)
    assert (steps > 0).all() and (np.diff(steps) > 0).all()  # increasing, ever faster
    a = (0.99 - 0.85) / (math.e - 1)
    assert taus[5] == pytest.approx(a * math.exp(0.5) + 0.85 - a)


def test_recu_in_training_run(runs):
    """The run's tau followed the schedule and the baked binary weights of best.pt are the clamped ones."""
    root, _ = runs
    hist = read_checkpoint(root / "straight" / "last.pt")["train_state"]["history"]
    assert [r["tau"] for r in hist] == pytest.approx([recu.tau_schedule(0.0), recu.tau_schedule(0.5)])
    sd = read_checkpoint(root / "straight" / "best.pt")["state_dict"]
    w = sd["blocks.0.conv.weight"].flatten(1)
    # each row clamped symmetrically to +-Q(tau) of its standardised weights, the bound reached
    assert torch.allclose(w.max(1).values, -w.min(1).values)
    assert float(w.abs().max()) < 3.5  # Q(tau) <= -ln(2 - 2 * 0.99) / sqrt(2) ~ 2.8 std
    assert float((w.abs() >= w.abs().max(1, keepdim=True).values - 1e-6).float().mean()) > 0.05


# ------------------------------------------------------------------------------------- PSI


def test_psi_keeps_rescaled_weights_one_point():
    """Equivalent weights (w and c w) follow the same path on the PSI manifold: the update is equivariant."""
    torch.manual_seed(0)
    target = torch.randn(4, 12)

    def loss_fn(w):  # scale invariant per row, like a weight that feeds a batch norm
        return ((w / w.norm(dim=1, keepdim=True) - target / target.norm(dim=1, keepdim=True)) ** 2).sum()

    w0 = torch.randn(4, 12)
    c = torch.tensor([[0.1], [1.0], [7.0], [30.0]])
    a = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(w0 * c)
    opt_a = psi.PSI([a], lr=0.3, momentum=0.9, rows=True)
    opt_b = psi.PSI([b], lr=0.3, momentum=0.9, rows=True)
    start = float(loss_fn(a).detach())
    for _ in range(20):
        for p, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            loss_fn(p).backward()
            o.step()
    assert torch.allclose(b, a * c, rtol=1e-4, atol=1e-6)
    assert float(loss_fn(a).detach()) < 0.2 * start
    # plain SGD breaks the equivalence: the steps depend on the scale
    a2, b2 = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0 * c)
    for p in (a2, b2):
        o = torch.optim.SGD([p], lr=0.3, momentum=0.9)
        for _ in range(20):
            o.zero_grad()
            loss_fn(p).backward()
            o.step()
    assert not torch.allclose(b2, a2 * c, rtol=1e-2)


def test_psi_covers_sign_and_batch_norm_weights():
    cfg = TrainConfig(model="resnete", variant="tiny", optimizer="psi", lr=1e-3)
    net, scale = prepare_model(cfg, torch.device("cpu"))
    opts = make_optimizers(cfg, net, scale, torch.device("cpu"))
    adam, manifold = opts
    rows = {id(p) for p in manifold.param_groups[0]["params"]}
    tensors = {id(p) for p in manifold.param_groups[1]["params"]}
    binary = {id(psi.latent_weight(m)) for _, m in recu.binary_layers(net)}
    assert rows == binary and len(binary) == 6
    edge = {id(net.stem[0].weight)} | {id(b.shortcut[1].weight) for b in net.blocks if b.shortcut is not None}
    assert tensors == edge
    others = {id(p) for g in adam.param_groups for p in g["params"]}
    assert not others & (rows | tensors) and id(net.classifier.weight) in others and id(scale) in others
    assert len(others | rows | tensors) == len(list(net.parameters())) + 1


# ----------------------------------------------------------------------- hardware agreement


@pytest.mark.slow
@pytest.mark.build
def test_evaluate_hardware_graph_agrees(runs, tmp_path, capsys):
    root, _ = runs
    code, out, _ = cli(capsys, "evaluate", root / "straight" / "best.pt", "--hw-images", "20",
                       "--build", tmp_path / "build", "--out", tmp_path / "eval.json")
    import json

    hw = json.loads((tmp_path / "eval.json").read_text())["hardware"]
    assert code == 0 and hw["same_top1"] == 20 and hw["identical_integer_logits"] == 20, out
    assert hw["same_top1_as_checkpoint_float32"] >= 19, out  # float32 may break one exact tie the other way


# ------------------------------------------------------------------- damaged run folders (fuzzed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999), flips=st.lists(st.tuples(st.floats(0, 0.999), st.integers(1, 255)), max_size=3),
       truncate=st.booleans())
def test_damaged_last_checkpoint_is_one_sentence_and_nothing_changes(runs, tmp_path_factory, cut, flips, truncate):
    """A truncated or bit-flipped last.pt either still resumes or ends in one sentence, and the
    run folder is byte-identical after a refusal."""
    import contextlib
    import io
    import shutil

    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(runs[0] / "straight", run)
    data = bytearray((run / "last.pt").read_bytes())
    for pos, xor in flips:
        data[int(pos * len(data))] ^= xor
    if truncate:
        data = data[:int(cut * len(data))]
    (run / "last.pt").write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--resume", "--out", str(run), "--no-progress"])
    if code != 0:
        one_sentence(err.getvalue())
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_test_set_is_evaluated_only_for_the_selected_epochs(tmp_path, cifar_train):
    """--test-eval selected (the default) evaluates the test set only on the epochs that become best.pt, with
    the same figures as --test-eval every, and the training itself is untouched by it."""
    common = ["train", "cnv", *RUN, "--epochs", "4", "--seed", "2", "--lr", "0.02"]
    assert main(common + ["--out", str(tmp_path / "selected")]) == 0
    assert main(common + ["--out", str(tmp_path / "every"), "--test-eval", "every"]) == 0
    a, b = (read_checkpoint(tmp_path / r / "last.pt") for r in ("selected", "every"))
    assert tensors_equal(a["state_dict"], b["state_dict"])
    ha, hb = a["train_state"]["history"], b["train_state"]["history"]
    best = -1.0
    for ra, rb in zip(ha, hb, strict=True):
        assert ra["val_top1"] == rb["val_top1"] and rb["test_top1"] is not None
        improved = ra["val_top1"] > best
        best = max(best, ra["val_top1"])
        assert (ra["test_top1"], ra["test_loss"]) == ((rb["test_top1"], rb["test_loss"]) if improved else (None, None))
    assert any(r["test_top1"] is None for r in ha), [r["val_top1"] for r in ha]  # a run where some epoch did not improve
    assert all(r["eval_seconds"] > 0 for r in ha + hb)  # log.csv shows what the test passes cost
    # the training steps' CPU time: some, and no more than their wall time on every thread the process has
    assert all(0 < r["cpu_seconds"] <= r["seconds"] * os.cpu_count() * 1.05 + 0.5 for r in ha + hb), ha + hb
    assert read_checkpoint(tmp_path / "selected" / "best.pt")["meta"]["test_top1"] == \
        read_checkpoint(tmp_path / "every" / "best.pt")["meta"]["test_top1"]


# texts with the characters a shell treats specially: the words must survive copy and paste
_JSON_VALUES = st.one_of(st.integers(), st.booleans(), st.text(alphabet="ab '\"\\$;", max_size=8),
                         st.lists(st.integers(), max_size=3))
_CHANNELS = st.lists(st.floats(0.01, 300, allow_nan=False), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(args=st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True), _JSON_VALUES, max_size=3),
       unit=st.booleans(), norm=st.one_of(st.none(), st.tuples(_CHANNELS, _CHANNELS)))
def test_finished_line_names_a_user_network_as_build_reads_it(args, unit, norm):
    """The 'use it with bnnflow build ...' words of a user's run parse back to the same network and inputs."""
    import json
    import shlex

    from bnnflow.cli import parser
    from bnnflow.model_ref import input_description, parse_model_args
    from bnnflow.models.train import _model_words

    join = lambda vs: ",".join(map(repr, vs))  # noqa: E731
    mean, std = (join(norm[0]), join(norm[1])) if norm else (None, None)
    scale = input_description("unit" if unit else None, mean, std)
    cfg = TrainConfig(model="my nets/net.py:build", model_args=args or None, input_scale=scale)
    parsed = parser().parse_args(["build", *shlex.split(_model_words(cfg))])
    assert parsed.model == cfg.model
    assert (parse_model_args(parsed.model_args) if parsed.model_args else {}) == json.loads(json.dumps(args))
    assert input_description(parsed.input_scale, parsed.input_mean, parsed.input_std) == scale


def test_default_threads_follow_the_cores_the_process_may_use():
    """A run pinned to one core (taskset, a cpuset) takes one torch thread, not one per machine core."""
    import os
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores to tell one from all")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import torch; "
            "from bnnflow.models.train import TrainConfig, _set_up_device; "
            "_set_up_device(TrainConfig(model='cnv', variant='tiny', device='cpu')); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "1"


def test_runs_table_counts_each_epochs_threads_and_the_teachers_labelling(tmp_path):
    """CPU-hours are an epoch's logged CPU time; older rows count wall seconds x threads, which follow --threads
    changed on --resume (older still: run.json's threads); a teacher's labelling at every start is included."""
    import json

    from bnnflow.models.runs_table import run_row

    rows = [{"epoch": 1, "seconds": 3600.0, "val_top1": 0.5, "test_top1": 0.5, "engine": "fast"},  # before the column
            {"epoch": 2, "seconds": 1800.0, "val_top1": 0.6, "test_top1": 0.6, "engine": "fast", "threads": 1},
            # a slowed epoch: its wall time on both threads would count 4000 s, its CPU time is what it used
            {"epoch": 3, "seconds": 2000.0, "val_top1": 0.6, "test_top1": None, "engine": "fast", "threads": 2,
             "cpu_seconds": 2700.0}]
    (tmp_path / "log.json").write_text(json.dumps(rows))
    teacher = Path.cwd() / "models" / "checkpoints" / "resnete-default.pt"  # as a sweep stores it: absolute
    run = {"config": {"model": "cnv", "variant": "default", "epochs": 4, "teacher": str(teacher)}, "threads": 2,
           "teacher": {"seconds_all_starts": 900.0}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    row = run_row(tmp_path)
    assert row["cpu_hours"] == pytest.approx((3600 * 2 + 1800 * 1 + 2700 + 900 * 2) / 3600)
    assert row["recipe"] == f"teacher={Path('models') / 'checkpoints' / 'resnete-default.pt'}"


def test_runs_table_late_gain_is_the_best_validation_rise_over_the_last_15_percent():
    """Issue 9's flattening test: 20 epochs -> the last 3; no split or too few epochs -> no figure."""
    from bnnflow.models.run_folder import late_gain
    from bnnflow.models.runs_table import table

    vals = [0.5 + 0.01 * e for e in range(17)] + [0.60, 0.672, 0.655]  # best before the last 3: 0.66
    history = [{"epoch": e + 1, "val_top1": v, "test_top1": v} for e, v in enumerate(vals)]
    assert late_gain(history) == pytest.approx(1.2)
    assert late_gain(history[:17] + [dict(history[17], val_top1=0.3)] * 3) == 0.0  # a late drop is no gain
    assert late_gain([{"epoch": 1, "val_top1": 0.5}]) is None
    assert late_gain([dict(r, val_top1=None) for r in history]) is None
    row = {"run": "r", "model": "cnv/default", "recipe": "plain", "engine": "fast", "epochs": "20/20",
           "cpu_hours": 1.0, "best_epoch": 19, "val_top1": 0.672, "test_top1": 0.66, "late_gain": 1.2}
    assert table([row]).splitlines()[2].endswith("| 66.00 % | +1.20 points |")
    assert table([dict(row, late_gain=None)]).splitlines()[2].endswith("| 66.00 % | – |")


def test_a_finished_run_says_whether_its_curve_has_flattened(tmp_path):
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from bnnflow.models.train import TrainConfig, _finish

    def said(vals):
        history = [{"epoch": e + 1, "val_top1": v, "test_top1": 0.5} for e, v in enumerate(vals)]
        out = io.StringIO()
        run = SimpleNamespace(cfg=TrainConfig(model="cnv", variant="tiny", epochs=len(vals)), out=tmp_path,
                              history=history, main=False)
        _finish(run, Console(file=out, width=400))
        return out.getvalue()

    assert "rose 0.10 points: the curve has flattened." in said([0.5] * 5 + [0.7, 0.7, 0.701])  # 8 epochs: the last 2
    assert "rose 5.00 points: not flattened yet" in said([0.5] * 7 + [0.55])
    assert "rose" not in said([0.5, None])  # no validation top-1: nothing to judge
