"""`bnnflow train` under torchrun: 2 CPU processes (gloo) give the single-process run's weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bnnflow.cli import main
from bnnflow.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.beside_image  # `make test`: in the Docker image's session (Makefile)

# a few steps of the tiny CNV (4 steps of a global batch of 32); SGD, because Adam's first steps move
# every weight by +-lr whatever the gradient's size, so a float-rounding difference in a near-zero
# gradient would flip a whole step, where SGD's step stays proportional to it
RUN = ["train", "cnv", "--variant", "tiny", "--subset", "64", "--val-size", "64", "--test-subset", "100",
       "--batch-size", "32", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--seed", "1", "--no-compile",
       "--no-bf16", "--no-progress", "--threads", "1"]


def _state(run) -> dict:
    ckpt = read_checkpoint(run / "last.pt")
    return {**ckpt["state_dict"], "logit_scale": ckpt["train_state"]["logit_scale"]}, ckpt["train_state"]["history"]


def test_torchrun_two_processes_equal_one(tmp_path, cifar_train):
    assert main([*RUN, "--out", str(tmp_path / "single")]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # --compile asked for (the default): torchrun's processes do not compile, and run.json must say so
    ddp_run = [a for a in RUN if a != "--no-compile"]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "bnnflow", *ddp_run, "--out", str(tmp_path / "ddp")], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("Training cnv/tiny") == 1  # rank 0 speaks, rank 1 is quiet
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["processes"] == 2 and run["status"] == "finished", run
    assert run["engine"]["compile"] is False, run["engine"]
    assert ", compiled" not in res.stdout

    single, single_log = _state(tmp_path / "single")
    ddp, ddp_log = _state(tmp_path / "ddp")
    assert single.keys() == ddp.keys()
    for name, value in single.items():
        if torch.is_floating_point(value):
            # batch-norm running variances of the raw-pixel input layer are ~1e5: relative tolerance
            torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(ddp[name], value), name
    # and training did move them: the seed's initial weights are far from both
    from bnnflow.models.train import TrainConfig, prepare_model

    initial = prepare_model(TrainConfig(model="cnv", variant="tiny", seed=1), torch.device("cpu"))[0].state_dict()
    floats = [k for k in initial if torch.is_floating_point(initial[k])]
    assert max(float((initial[k] - single[k]).abs().max()) for k in floats) > 1e-3
    for a, b in zip(single_log, ddp_log, strict=True):  # the global batch's loss and top-1, epoch by epoch
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert (b["train_top1"], b["val_top1"], b["test_top1"]) == (a["train_top1"], a["val_top1"], a["test_top1"])


def test_run_json_records_the_engine_as_it_ran(tmp_path):
    """run.json says how the steps ran, taken from the engine itself: Brevitas' forward neither uses bf16
    nor compiles, whatever --bf16/--compile asked for (under torchrun: see the test above)."""
    argv = [a for a in RUN if a not in ("--no-compile", "--no-bf16")]
    argv[argv.index("--epochs") + 1] = "1"
    assert main([*argv, "--engine", "brevitas", "--bf16", "--compile", "--out", str(tmp_path / "run")]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["engine"] == {"engine": "brevitas", "bf16": False, "compile": False}, run["engine"]
