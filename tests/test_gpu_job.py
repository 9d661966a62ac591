"""The prepared GPU job in miniature on the CPU: split, stash, assemble, parallel runs, collect."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnnflow.models import gpu_job

from conftest import shared_npz

pytestmark = pytest.mark.beside_image  # `make test`: in the Docker image's session (Makefile)


def test_gpu_job_in_miniature(tmp_path, cifar_test):
    import pytest

    train = shared_npz("train")
    if not train.exists():
        pytest.skip(f"real CIFAR-10 not found at {train}")
    data = tmp_path / "data"
    data.mkdir()
    with np.load(train) as d:
        np.savez(data / "cifar10_train.npz", x=d["x"][:600], y=d["y"][:600])
    np.savez(data / "cifar10_test.npz", x=cifar_test[0][:100], y=cifar_test[1][:100])

    gpu_job.split_data(tmp_path / ".gpu", data)
    store = tmp_path / "store"
    for k in range(1, gpu_job.PARTS + 1):
        gpu_job.stash(tmp_path / ".gpu" / f"part{k}", store)
    assembled = gpu_job.assemble(store)
    with np.load(assembled / "cifar10_train.npz") as d, np.load(data / "cifar10_train.npz") as o:
        assert np.array_equal(d["x"], o["x"]) and np.array_equal(d["y"], o["y"])

    out = tmp_path / "out"
    code = gpu_job.main(["run", "--data", str(assembled), "--out", str(out), "--work", str(tmp_path / "work"),
                         "--models", "resnete,cnv", "--variant", "tiny", "--device", "cpu", "--batch", "32",
                         "--epochs", "1", "--extra", "--val-size 64 --test-subset 64 --threads 1 --no-compile"])
    assert code == 0
    report = json.loads((out / "gpu_job.json").read_text())
    assert report["exit_codes"] == {"resnete": 0, "cnv": 0} and report["epochs"] == 1
    folders = gpu_job.collect(out, tmp_path / "runs")
    assert sorted(f.name for f in folders) == ["cnv-tiny-gpu", "resnete-tiny-gpu"]
    for f in folders:
        assert (f / "best.pt").is_file() and (f / "last.pt").is_file() and (f / "train.log").is_file()
        run = json.loads((f / "run.json").read_text())
        # the batch's learning rate scaled by sqrt(32 / 128) from Adam's 2e-3
        assert run["config"]["batch_size"] == 32 and abs(run["config"]["lr"] - 1e-3) < 1e-9
