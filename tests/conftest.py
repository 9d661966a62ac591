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


@pytest.fixture(scope="session")
def package(tmp_path_factory, cifar_test):
    """One tiny cnv build and its deployment package, shared by the driver/deploy/notebook tests
    (a build of their own: the flow tests re-run steps on `tiny_builds`)."""
    import json

    from rich.console import Console

    from bnnflow.build_flows.build import BuildRequest, run_build
    from bnnflow.build_flows.deploy import make_package

    root = tmp_path_factory.getbasetemp() / "deploy_cnv_tiny"
    build, pkg = root / "build", root / "deploy" / "cnv-tiny-pynq-z2"
    if not (pkg / "manifest.json").is_file():
        state = build / "build_state.json"
        if not state.is_file() or "hw_codegen" not in json.loads(state.read_text()).get("done", []):
            run_build(BuildRequest("cnv", "tiny", out=build, force=True), Console(quiet=True))
        make_package(build, pkg, images=100, console=Console(quiet=True))
    return build, pkg
