"""Shared fixtures: the real CIFAR-10 copy from ../shared, one tiny build per model (once per session,
read-only) and what is derived from it, and helpers shared by the test files (`from conftest import ...`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


# CPU seconds per test (its own process and the children it waited for, fixtures it set up included), for
# finding what makes CI slow on a shared machine where wall-clock durations mostly measure the neighbours:
# BNNFLOW_TEST_CPU=DIR writes DIR/cpu-PID.tsv per pytest session ("seconds<TAB>test id", most expensive first).
_CPU_SECONDS: dict[str, float] = {}


def _cpu_now() -> float:
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = _cpu_now()
    yield
    _CPU_SECONDS[item.nodeid] = _cpu_now() - start


def pytest_sessionfinish(session):
    report = os.environ.get("BNNFLOW_TEST_CPU")
    if report and _CPU_SECONDS:
        lines = [f"{sec:.1f}\t{test}" for test, sec in sorted(_CPU_SECONDS.items(), key=lambda kv: -kv[1])]
        Path(report, f"cpu-{os.getpid()}.tsv").write_text("\n".join(lines) + "\n")


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


# ------------------------------------------------------------------ shared helpers


def one_sentence(err: str | BaseException, prefix: str = "bnnflow: error: ") -> str:
    """The one-sentence error rule, shared by every test file.

    A command's stderr: exactly one non-empty line, `prefix` then a sentence ending in '.', no traceback.
    An exception (the driver's errors): its message is one line, one sentence ending in '.'."""
    if isinstance(err, BaseException):
        msg = str(err)
        assert msg.endswith(".") and "\n" not in msg and ". " not in msg.rstrip("."), msg
        return msg
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix) and lines[0].rstrip().endswith("."), lines[0]
    assert "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, str | None]:
    """Every file and folder under `folder` with its content hash (folders: None)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def copy_build(src: Path, dst: Path) -> Path:
    """A private copy of a shared build folder (file times kept), for a test that changes it."""
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ FINN builds, once per session
#
# Every fixture below runs the FINN flow (or sits on one that does); tests using them are marked
# `build` and `shared_builds` automatically (pytest_collection_modifyitems): `make test-fast`
# (-m "not slow and not build") leaves them out, `make test` runs them in one session (built once). The folders are shared and read-only: a test that changes one takes a copy_build first
# (a session-end check names any file changed in place).

BUILD_FIXTURES = frozenset({"tiny_build", "tiny_cnv", "tiny_cnv_build", "tiny_specialised", "tiny_fold",
                            "package", "cnv_estimates"})
# The default models' builds: shared with `verify --sim` (tests/test_sim_defaults.py), so their tests run
# in that session (marker simdefaults) and each model is exported, streamlined and converted once per run.
DEFAULT_BUILD_FIXTURES = frozenset({"default_build", "default_fold"})


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if BUILD_FIXTURES & used:
            item.add_marker(pytest.mark.build)
            item.add_marker(pytest.mark.shared_builds)
        if DEFAULT_BUILD_FIXTURES & used:
            item.add_marker(pytest.mark.build)
            item.add_marker(pytest.mark.simdefaults)


def _fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and "finn_tmp" not in p.relative_to(folder).parts}


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, cifar_test):
    """model -> run_build's result ({"out", "summary", "board", "stopped"}) for its tiny variant, built once
    per session as far as the tools allow (no Vivado: stops at hw_ipgen after hw_codegen). Read-only."""
    from rich.console import Console

    from bnnflow.build_flows.build import BuildRequest, run_build

    root = tmp_path_factory.mktemp("tiny")
    built, prints = {}, {}

    def get(model: str) -> dict:
        if model not in built:
            assert model in TINY_MODELS, model
            built[model] = run_build(BuildRequest(model=model, variant="tiny", out=root / model), Console(quiet=True))
            prints[model] = _fingerprint(built[model]["out"])
        return built[model]

    yield get
    changed = {}
    for model, result in built.items():
        now = _fingerprint(result["out"])
        files = sorted(k for k in prints[model].keys() | now.keys() if prints[model].get(k) != now.get(k))
        if files:
            changed[model] = files
    assert not changed, f"tests changed the shared tiny builds in place (take a copy_build): {changed}"


@pytest.fixture(scope="session")
def tiny_cnv(tiny_build):
    """The tiny CNV build (tiny_build("cnv")): the one shared by the deploy, driver, folding, input and fuzz tests."""
    return tiny_build("cnv")


@pytest.fixture(scope="session")
def tiny_cnv_build(tiny_cnv) -> Path:
    """The tiny CNV build's folder (tests/test_identity.py copies it); read-only."""
    return tiny_cnv["out"]


SPECIALISED_STEP = "specialize_layers"  # the graph the folding search works on


def specialised_graph(out: Path):
    """A build folder's graph after specialize_layers, freshly loaded (the caller may change it)."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows import flow

    path = flow.intermediate_path(Path(out), SPECIALISED_STEP)
    assert path.is_file(), f"{out} has no {SPECIALISED_STEP} graph"
    return ModelWrapper(str(path))


@pytest.fixture(scope="session")
def tiny_specialised(tiny_build):
    """model -> (its tiny build's graph after specialize_layers, freshly loaded; the build folder, read-only)."""

    def get(model: str):
        out = tiny_build(model)["out"]
        return specialised_graph(out), out

    return get


@pytest.fixture(scope="session")
def tiny_fold(tiny_specialised):
    """model -> the folding search's result on its tiny variant, once per session."""
    from bnnflow.build_flows.folding import fold
    from bnnflow.hw.boards import get_board

    folds = {}

    def get(model: str):
        if model not in folds:
            m, _ = tiny_specialised(model)
            folds[model] = fold(m, get_board("pynq-z2"), name=f"{model}/tiny")
        return folds[model]

    return get


def _default_build_in(folder: Path, model: str) -> bool:
    """Does `folder` (`bnnflow benchmark`'s) hold model/default for the pynq-z2 with its default weights,
    built at least to specialize_layers? Read from its build_state.json, never changed."""
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.identity import EXPORT, BuildIdentity, weights_id
    from bnnflow.models.checkpoint import committed_checkpoint

    try:
        data = flow.BuildState(folder).data
        if SPECIALISED_STEP not in data.get("done", []) or \
                not flow.intermediate_path(folder, SPECIALISED_STEP).is_file():
            return False
        ident = BuildIdentity.from_dict(data["identity"])  # a build without one predates the current calibration
        return (ident.source, ident.variant, ident.board, ident.weights, ident.export) == \
            (f"zoo:{model}", "default", "pynq-z2", weights_id(committed_checkpoint(model, "default"), 0), EXPORT)
    except Exception:  # a damaged or foreign folder: build our own
        return False


@pytest.fixture(scope="session")
def default_build(tmp_path_factory):
    """model -> the folder of its default variant for the pynq-z2, built to specialize_layers with the
    weights commands use by default (the committed checkpoint, else random seed 0), once per session and
    read-only: `bnnflow benchmark`'s build when it holds that, else one built here. `verify --sim`
    continues copies of it."""
    from rich.console import Console

    from bnnflow.build_flows.build import BuildRequest, run_build
    from bnnflow.models.checkpoint import committed_checkpoint

    root = tmp_path_factory.mktemp("default")
    built = {}

    def get(model: str) -> Path:
        if model not in built:
            bench = Path(os.environ.get("BNNFLOW_BENCH_DIR", REPO / "build" / "benchmark")) / f"{model}-default-pynq-z2"
            if _default_build_in(bench, model):
                built[model] = bench
            else:
                req = BuildRequest(model, "default", checkpoint=committed_checkpoint(model, "default"),
                                   out=root / model, stop_after=SPECIALISED_STEP)
                built[model] = run_build(req, Console(quiet=True))["out"]
        return built[model]

    return get


@pytest.fixture(scope="session")
def default_fold(default_build):
    """model -> (specialised graph, fold result) of its default build (default_build), once per session."""
    from bnnflow.build_flows.folding import fold
    from bnnflow.hw.boards import get_board

    board = get_board("pynq-z2")
    folds = {}

    def get(model: str):
        if model not in folds:
            m = specialised_graph(default_build(model))
            folds[model] = (m, fold(m, board, name=f"{model}/default"))
        return folds[model]

    return get


@pytest.fixture(scope="session")
def package(tiny_cnv, tmp_path_factory):
    """(build, package): the tiny CNV build and its deployment package (100 images, zip archive), shared by
    the driver/deploy/notebook tests; both read-only."""
    from rich.console import Console

    from bnnflow.build_flows.deploy import make_package

    pkg = tmp_path_factory.mktemp("package") / "deploy" / "cnv-tiny-pynq-z2"
    make_package(tiny_cnv["out"], pkg, images=100, console=Console(quiet=True))
    return tiny_cnv["out"], pkg


@pytest.fixture(scope="session")
def cnv_estimates(tiny_cnv, tmp_path_factory):
    """(folder, FINN's folding config of it): cnv/tiny as a build that stopped after the estimates, for tests
    that copy it and try to damage the copy (tests/test_inputs.py, tests/test_fuzz.py); never modify it in
    place. Derived from the tiny CNV build: a copy without what its one later step (hw_codegen) added."""
    from bnnflow.build_flows import flow

    out = copy_build(tiny_cnv["out"], tmp_path_factory.mktemp("estimates") / "cnv")
    state = flow.BuildState(out)
    keep = flow.STEP_NAMES[:flow.step_index(flow.ESTIMATE_STEP) + 1]
    later = [s for s in state.done if s not in keep]  # without Vitis HLS: hw_codegen
    assert later and set(state.done) - set(later) == set(keep), state.done
    state.data["done"] = [s for s in state.done if s in keep]
    state.data["seconds"] = {k: v for k, v in state.data.get("seconds", {}).items() if k in keep}
    state.data.pop("stopped_at", None)
    state.save()
    for step in later:
        flow.intermediate_path(out, step).unlink(missing_ok=True)
    shutil.rmtree(out / "finn_tmp")  # hw_codegen's sources; a build stopped at the estimates has it empty
    (out / "finn_tmp").mkdir()
    return out, json.loads((out / "report" / "auto_folding_config.json").read_text())
