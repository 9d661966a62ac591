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


def data_required() -> bool:
    """In CI (CI=true, as CI services set it; .ci/run sets BNNFLOW_REQUIRE_DATA=1) missing data fails the run."""
    flag = lambda name: os.environ.get(name, "").strip().lower() in ("1", "true", "yes")  # noqa: E731
    return flag("CI") or flag("BNNFLOW_REQUIRE_DATA")


def missing_data_message() -> str | None:
    missing = [str(p) for p in (shared_npz("train"), shared_npz("test")) if not p.is_file()]
    if not missing:
        return None
    return (f"Real CIFAR-10 is missing ({', '.join(missing)}), and in CI the tests that need it must not skip: "
            "set BNNFLOW_DATA to a folder with cifar10_train.npz and cifar10_test.npz.")


def pytest_sessionstart(session):
    msg = missing_data_message() if data_required() else None
    if msg:
        pytest.exit(msg, returncode=2)


@pytest.fixture(scope="session")
def cifar_train():
    """The first 512 real CIFAR-10 training images and labels (uint8 NHWC, int64)."""
    path = shared_npz("train")
    if not path.exists():
        pytest.skip(f"real CIFAR-10 not found at {path} (set BNNFLOW_DATA)")
    with np.load(path) as d:
        return d["x"][:512], d["y"][:512]


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


@pytest.fixture(scope="session")
def cnv_estimates(tmp_path_factory, cifar_test):
    """(folder, FINN's folding config of it): cnv/tiny built to the estimates, for tests that copy it and
    try to damage the copy (tests/test_inputs.py, tests/test_fuzz.py); never modify it in place."""
    import json

    from rich.console import Console

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import BuildRequest, run_build

    out = tmp_path_factory.mktemp("estimates") / "cnv"
    run_build(BuildRequest("cnv", "tiny", out=out, stop_after=flow.ESTIMATE_STEP), Console(quiet=True))
    return out, json.loads((out / "report" / "auto_folding_config.json").read_text())
