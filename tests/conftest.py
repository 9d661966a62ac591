"""Shared fixtures: the real CIFAR-10 copy from ../shared and one tiny build per model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_MODELS = ("resnete", "densenet", "cnv")


def shared_npz(split: str) -> Path:
    return Path(os.environ.get("BNNFLOW_DATA", SHARED_DATA)) / f"cifar10_{split}.npz"


@pytest.fixture(scope="session")
def cifar_test():
    path = shared_npz("test")
    if not path.exists():
        pytest.skip(f"real CIFAR-10 not found at {path} (set BNNFLOW_DATA)")
    d = np.load(path)
    return d["x"], d["y"]


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory, cifar_test):
    """Each model's tiny variant built as far as the tools allow (no Vivado: stops at hw_ipgen)."""
    from rich.console import Console

    from bnnflow.build_flows.build import BuildRequest, run_build

    root = tmp_path_factory.mktemp("builds")
    results = {}
    for model in TINY_MODELS:
        req = BuildRequest(model=model, variant="tiny", out=root / model)
        results[model] = run_build(req, Console(quiet=True))
    return results
