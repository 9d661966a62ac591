"""`bnnflow sweep`: the sweep file parser (property-based), the batch job scripts, the engine's failure
reporting on a 2-worker LocalCluster, and a real sweep of tiny designs: 2 workers (one killed mid-sweep)
give the sequential run's table, and a re-run is served from the cache."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnflow.errors import BnnflowError

from conftest import one_sentence

pytestmark = pytest.mark.beside_image  # `make test`: in the Docker image's session (Makefile)

ESTIMATES = "generate_estimate_reports"
STEPS = ("streamline", "specialize_layers", ESTIMATES, "hw_codegen")  # a few real step names (see flow.STEP_NAMES)


def _parse(data, suffix=".yaml", tmp=Path("/tmp")):
    from bnnflow.build_flows.sweep_spec import parse_sweep

    text = json.dumps(data) if suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    return parse_sweep(text, tmp / f"sweep{suffix}", STEPS)


# ------------------------------------------------------------------ the sweep file


GRID_VALUES = {
    "model": ["cnv", "resnete", "densenet"],
    "variant": ["small", "default"],  # variants every model has
    "board": ["pynq-z2", "pynq-z1", "ultra96", "zcu104"],
    "folding": ["committed", "auto", "fps:1000", "fps:250"],
    "stop_after": list(STEPS),
    "weights": ["committed", "random"],
    "seed": [0, 1, 7],
    "lut_max": [None, 0.5, 0.85, 1.0],
    "bram_max": [None, 0.25, 0.95],
}


def _grid_of(draw, table: dict, max_keys: int, **unique) -> dict:
    """For some keys of `table` (its first, model, always) a non-empty list of distinct values, or one bare value."""
    keys = ["model"] + draw(st.lists(st.sampled_from(list(table)[1:]), unique=True, max_size=max_keys))
    grid = {}
    for k in keys:
        values = draw(st.lists(st.sampled_from(table[k]), min_size=1, max_size=3, **unique))
        grid[k] = values[0] if len(values) == 1 and draw(st.booleans()) else values
    return grid


@st.composite
def grids(draw):
    """A design grid."""
    return _grid_of(draw, GRID_VALUES, 5, unique=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=grids(), suffix=st.sampled_from([".yaml", ".json"]))
def test_grid_is_every_combination(grid, suffix):
    from bnnflow.build_flows.sweep_spec import DesignPoint

    points = _parse({"grid": grid}, suffix)
    axes = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    want = [DesignPoint(**dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]
    assert points == want  # every combination once, in the grid's order, defaults for the rest
    assert len(points) == len(set(points))


@settings(max_examples=40, deadline=None)
@given(grid=grids(), extra=st.lists(st.sampled_from(GRID_VALUES["model"]), max_size=3))
def test_points_follow_grid_and_repeat_once(grid, extra):
    """`points` come after the grid; a point the grid already has is listed once."""
    from bnnflow.build_flows.sweep_spec import DesignPoint

    only_grid = _parse({"grid": grid})
    both = _parse({"grid": grid, "points": [{"model": m} for m in extra] + [dict(only_grid[0].as_dict())]})
    assert both[:len(only_grid)] == only_grid
    new = [p for p in dict.fromkeys(DesignPoint(model=m) for m in extra) if p not in only_grid]
    assert both[len(only_grid):] == new


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                   max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(data=JSONISH | st.dictionaries(st.sampled_from(["grid", "points"]), JSONISH, min_size=1)
       | st.fixed_dictionaries({"grid": st.dictionaries(st.sampled_from(list(GRID_VALUES) + ["folds"]), JSONISH,
                                                        min_size=1)}))
def test_any_file_gives_points_or_one_sentence(data):
    """Whatever the file holds: valid points, or a BnnflowError of one line, one sentence; nothing else."""
    try:
        points = _parse(data, ".json")
    except BnnflowError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.endswith(".") and msg.startswith("Sweep file "), msg
        return
    assert points and all(p.model in GRID_VALUES["model"] for p in points)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_any_text_gives_points_or_one_sentence(text):
    from bnnflow.build_flows.sweep_spec import parse_sweep

    for suffix in (".yaml", ".json"):
        try:
            parse_sweep(text, Path(f"/tmp/s{suffix}"), STEPS)
        except BnnflowError as exc:
            assert "\n" not in str(exc) and str(exc).endswith("."), str(exc)


@pytest.mark.parametrize("data, words", [
    ({"grid": {"model": "alexnet"}}, ["unknown model 'alexnet'", "cnv"]),
    ({"grid": {"model": "cnv", "variant": "huge"}}, ["unknown variant 'huge' of cnv", "tiny"]),
    ({"grid": {"model": "cnv", "board": "zedboard"}}, ["unknown board 'zedboard'", "pynq-z2"]),
    ({"grid": {"model": "cnv", "folds": "auto"}}, ["unknown key 'folds'", "folding"]),
    ({"points": [{"model": "cnv"}, {"variant": "tiny"}]}, ["point 2 names no model"]),
    ({"grid": {"model": "cnv", "stop_after": "bitstream"}}, ["unknown stop_after step 'bitstream'", "bnnflow steps"]),
    ({"grid": {"model": "cnv", "folding": "fps:0"}}, ["fps:0"]),
    ({"grid": {"model": "cnv", "folding": "nothere.json"}}, ["folding 'nothere.json' is neither a file"]),
    ({"grid": {"model": "cnv", "lut_max": 1.5}}, ["lut_max must be a share of the device in (0, 1]"]),
    ({"grid": {"model": []}}, ["'model' is an empty list"]),
    ({"models": ["cnv"]}, ["unknown top-level key 'models'"]),
    ([1, 2], ["must be a mapping"]),
    ({"train": {"grid": {"model": "cnv", "lr_max": 1}}}, ["training grid has unknown key 'lr_max'", "epochs"]),
    ({"train": {"points": [{"model": "cnv", "optimizer": "rmsprop"}]}}, ["training point 1", "unknown optimizer"]),
    ({"train": {"grid": {"model": "cnv", "epochs": 0}}}, ["--epochs must be at least 1, got 0"]),
    ({"train": {"grid": {"model": "cnv", "batch_size": 1}}}, ["--batch-size must be at least 2"]),
    ({"train": {"grid": {"model": "cnv", "seed": "one"}}}, ["seed must be a whole number"]),
    ({"train": {"grid": {"model": "cnv", "recu": "yes"}}}, ["recu must be true or false"]),
    ({"train": {"grid": {"model": "cnv", "variant": "huge"}}}, ["unknown variant 'huge' of cnv"]),
    ({"train": {"grid": {"model": "cnv", "data": "nothere"}}}, ["data 'nothere' is neither"]),
    ({"train": {"grid": {"model": "cnv"}}, "grid": {"model": "cnv"}}, ["both design points and a 'train'"]),
    ({"train": [1]}, ["'train' must be a mapping with 'grid' and/or 'points'"]),
    ({"train": {"points": [{"epochs": 3}]}}, ["training point 1 names no model"]),
])
def test_bad_file_names_the_problem(data, words):  # design points and training points
    with pytest.raises(BnnflowError) as err:
        _parse(data)
    msg = one_sentence(err.value)
    assert all(w in msg for w in words), msg


def test_files_relative_to_sweep_file(tmp_path):
    from bnnflow.build_flows.sweep_spec import load_sweep

    (tmp_path / "f.json").write_text("{}")
    (tmp_path / "s.yaml").write_text("points:\n  - {model: cnv, folding: f.json}\n")
    (point,) = load_sweep(tmp_path / "s.yaml", STEPS)
    assert point.folding == str(tmp_path / "f.json")
    with pytest.raises(BnnflowError, match=r"is not valid YAML \(line 2, column 1\): expected"):
        load_sweep(_write(tmp_path / "bad.yaml", "grid: {model: [cnv\n"), STEPS)
    with pytest.raises(BnnflowError, match="does not exist"):
        load_sweep(tmp_path / "none.yaml", STEPS)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cli_bad_sweep_file_one_sentence(tmp_path, capsys):
    from bnnflow.cli import main

    bad = _write(tmp_path / "s.yaml", "grid:\n  model: [cnv, vgg]\n")
    assert main(["sweep", str(bad), "--build", str(tmp_path / "b")]) == 2 and not (tmp_path / "b").exists()
    assert "unknown model 'vgg'" in one_sentence(capsys.readouterr().err)
    assert main(["sweep", str(bad), "--scheduler", "tcp://h:1", "--cluster", "slurm"]) == 2
    assert "not both" in one_sentence(capsys.readouterr().err)
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml does not exist" in one_sentence(capsys.readouterr().err)


# ------------------------------------------------------------------ batch jobs (dask-jobqueue)


def test_slurm_job_script(monkeypatch, tmp_path):
    from bnnflow.build_flows.sweep_cluster import ClusterSpec, job_script

    monkeypatch.setenv("BNNFLOW_DATA", "/shared/cifar 10")
    monkeypatch.chdir(tmp_path)
    script = job_script(ClusterSpec(cluster="slurm", cores=8, processes=4, memory="32GB", walltime="03:30:00",
                                    queue="fpga", account="proj7", jobs=3))
    lines = script.splitlines()
    assert lines[0].startswith("#!") and "#SBATCH -J bnnflow-sweep" in lines
    for directive in ("#SBATCH -p fpga", "#SBATCH -A proj7", "#SBATCH -n 1", "#SBATCH --cpus-per-task=8",
                      "#SBATCH --mem=30G", "#SBATCH -t 03:30:00"):
        assert directive in lines, (directive, script)
    # the workers run where the sweep started, with the same Python and the data path; one thread per point
    assert f"cd {tmp_path}" in lines and "export BNNFLOW_DATA='/shared/cifar 10'" in lines
    (worker,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    assert worker.startswith(sys.executable) and "--nthreads 1" in worker and "--nworkers 4" in worker
    assert "--memory-limit 7.45GiB" in worker and "tcp://" in worker


def test_lsf_and_pbs_job_scripts():
    from bnnflow.build_flows.sweep_cluster import ClusterSpec, job_script

    lsf = job_script(ClusterSpec(cluster="lsf", cores=2, memory="8GB", walltime="01:00", account="p1"))
    assert "#BSUB -n 2" in lsf and "#BSUB -W 01:00" in lsf and '#BSUB -P "p1"' in lsf and "--nworkers 2" in lsf
    pbs = job_script(ClusterSpec(cluster="pbs", cores=4, processes=1, memory="8GB", walltime="00:30:00"))
    assert "#PBS -l select=1:ncpus=4:mem=" in pbs and "#PBS -l walltime=00:30:00" in pbs
    assert "--nthreads 1" in pbs and "--nworkers" not in pbs  # one process: dask-worker's own default


def test_cli_prints_job_script(capsys):
    from bnnflow.cli import main

    assert main(["sweep", "unused.yaml", "--cluster", "slurm", "--cores", "2", "--job-script"]) == 0
    assert "#SBATCH --cpus-per-task=2" in capsys.readouterr().out
    assert main(["benchmark", "--job-script"]) == 2 and "--cluster" in one_sentence(capsys.readouterr().err)


# ------------------------------------------------------------------ the engine's failure modes (stand-in tasks)


def _raising_task(point, folder, key, force):
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / "attempts", "a") as f:
        f.write("x")
    if point["model"] == "resnete":
        raise RuntimeError("a bug in the flow")
    return {"model": point["model"], "title": point["model"], "variant": point["variant"], "status": "done",
            "error": None, "seconds": 0.0, "cached": False}


def _dying_task(point, folder, key, force):
    if point["model"] == "resnete":
        os._exit(1)  # the worker process dies, as under the OOM killer
    return _raising_task(point, folder, key, force)


@pytest.fixture
def stand_in_tasks():
    """The stand-in tasks travel to the workers by value (this test module is not importable there)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("task, status, attempts", [(_raising_task, "failed", 2), (_dying_task, "lost", None)])
def test_failed_and_lost_points_are_reported(stand_in_tasks, tmp_path, task, status, attempts):
    import dask

    from bnnflow.build_flows.sweep import run_sweep
    from bnnflow.build_flows.sweep_cluster import ClusterSpec
    from bnnflow.build_flows.sweep_spec import DesignPoint

    points = [DesignPoint("cnv", "tiny"), DesignPoint("resnete", "small"), DesignPoint("cnv", "small")]
    counts = []
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        result = run_sweep(points, tmp_path, ClusterSpec(jobs=2), retries=1, task=task, on_counts=counts.append)
    rows = result["rows"]
    assert [r["status"] for r in rows] == ["done", status, "done"]
    assert rows[1]["model"] == "resnete" and rows[1]["error"]
    if attempts:  # retried once, then reported
        assert "a bug in the flow" in rows[1]["error"]
        assert len((Path(rows[1]["out"]) / "attempts").read_text()) == attempts
    else:
        assert "KilledWorker" in rows[1]["error"]
    assert counts[-1] == {"total": 3, "done": 2, "cached": 0, "failed": 1, "running": 0, "queued": 0}
    with pytest.raises(BnnflowError, match="1 of 3 design points failed or were lost .resnete/small."):
        from bnnflow.commands.sweep import check_failures

        check_failures(rows)


# ------------------------------------------------------------------ a real sweep of tiny designs


# the third point differs by board only (another folder and key, the same part): three CNV builds cost ~35
# CPU-s less, sequential and spread runs together, than two and a ResNetE, which other tests build
TINY_POINTS = [("cnv", "fps:1000", "pynq-z2"), ("cnv", "fps:4000", "pynq-z2"), ("cnv", "fps:1000", "pynq-z1")]
FIGURES = ("fits", "fps", "latency_ms", "sim_fps", "sim_latency_ms", "LUT", "BRAM_18K", "DSP", "binary_macs")


def _tiny_points():
    from bnnflow.build_flows.sweep_spec import DesignPoint

    return [DesignPoint(m, "tiny", folding=f, board=b, weights="random") for m, f, b in TINY_POINTS]


def _table(rows):
    from bnnflow.build_flows.benchmark import markdown_table

    return markdown_table({"heading": "tiny", "clock_mhz": 100.0, "rows": rows})


def _kill_one_busy_worker(address: str, killed: list, stop: threading.Event) -> None:
    """SIGKILL the first worker that has been building a point for 3 s (its nanny starts a new one)."""
    from distributed import Client

    with Client(address) as client:
        seen = {}
        while not stop.is_set() and not killed:
            for worker, keys in client.processing().items():
                if keys:
                    seen.setdefault(worker, time.time())
                    if time.time() - seen[worker] > 3:
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed.append(keys[0])
                        return
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.build
def test_sweep_on_two_workers_equals_sequential_survives_a_killed_worker_and_caches(tmp_path, cifar_train, capsys):
    from distributed import LocalCluster

    from bnnflow.build_flows.sweep import RESULT_FILE, run_sweep
    from bnnflow.cli import main
    from bnnflow.build_flows.sweep_cluster import ClusterSpec

    points = _tiny_points()
    sequential = run_sweep(points, tmp_path / "seq", ClusterSpec(jobs=1))["rows"]
    assert [r["status"] for r in sequential] == ["done"] * 3 and all(r["fps"] > 0 for r in sequential)
    assert sequential[0]["fps"] < sequential[1]["fps"]  # the two foldings are two designs

    killed: list = []
    stop = threading.Event()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        killer = threading.Thread(target=_kill_one_busy_worker, args=(cluster.scheduler_address, killed, stop))
        killer.start()
        try:
            spread = run_sweep(points, tmp_path / "dist", ClusterSpec(scheduler=cluster.scheduler_address))["rows"]
        finally:
            stop.set()
            killer.join()
    assert killed, "no worker was killed mid-sweep"
    assert [r["status"] for r in spread] == ["done"] * 3
    assert _table(spread) == _table(sequential)
    assert [{k: r[k] for k in FIGURES} for r in spread] == [{k: r[k] for k in FIGURES} for r in sequential]
    assert len({r["out"] for r in spread}) == 3 and all((Path(r["out"]) / RESULT_FILE).is_file() for r in spread)

    # a re-submitted sweep reads every finished point and starts no cluster at all
    t0 = time.time()
    again = run_sweep(points, tmp_path / "dist", ClusterSpec(jobs=2))["rows"]
    assert all(r["cached"] for r in again) and time.time() - t0 < 20
    assert _table(again) == _table(sequential)
    # a point whose result file is gone is built again (its build folder is reused), the others stay cached
    (Path(spread[2]["out"]) / RESULT_FILE).unlink()
    third = run_sweep(points, tmp_path / "dist", ClusterSpec(jobs=1))["rows"]
    assert [r["cached"] for r in third] == [True, True, False] and _table(third) == _table(sequential)

    # the command on the same points: all cached, the table, the plot, exit 0
    sweep_file = _write(tmp_path / "points.yaml", "grid: {model: cnv, variant: tiny, weights: random, folding: "
                                                  "[fps:1000, fps:4000]}\npoints:\n  - {model: cnv, variant: tiny, "
                                                  "weights: random, folding: fps:1000, board: pynq-z1}\n")
    assert main(["sweep", str(sweep_file), "--build", str(tmp_path / "dist"), "--dry-run"]) == 0
    assert " ".join(capsys.readouterr().out.split()).count(": cached (") == 3
    assert main(["sweep", str(sweep_file), "--build", str(tmp_path / "dist")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in _table(sequential).splitlines() if line.startswith("| CNV")]
    assert len(rows) == 3 and len(set(rows)) == 3  # the board column tells the two fps:1000 points apart
    assert all(row in out for row in rows) and "3 done (3 cached), 0 running, 0 failed" in " ".join(out.split())
    assert (tmp_path / "dist" / "sweep.png").stat().st_size > 10_000
    assert all(row in (tmp_path / "dist" / "sweep.md").read_text() for row in rows)
    assert main(["sweep", str(sweep_file), "--build", str(tmp_path / "dist")]) == 0  # replaces its own reports


def test_in_process_sweep_retries_and_reports(tmp_path):
    """--jobs 1 (no Dask) treats a raising task as a worker would: retried, then a failed row."""
    from bnnflow.build_flows.sweep import run_sweep
    from bnnflow.build_flows.sweep_cluster import ClusterSpec
    from bnnflow.build_flows.sweep_spec import DesignPoint

    points = [DesignPoint("resnete", "small"), DesignPoint("cnv", "tiny")]
    rows = run_sweep(points, tmp_path, ClusterSpec(jobs=1), retries=2, task=_raising_task)["rows"]
    assert [r["status"] for r in rows] == ["failed", "done"] and "a bug in the flow" in rows[0]["error"]
    assert len((Path(rows[0]["out"]) / "attempts").read_text()) == 3


# ------------------------------------------------------------------ an unreachable scheduler


def test_unreachable_scheduler_one_sentence_quickly(tmp_path, capsys):
    import socket

    from bnnflow.cli import main

    with socket.socket() as s:  # a port that was just free: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sweep_file = _write(tmp_path / "s.yaml", "train: {points: [{model: cnv, variant: tiny}]}\n")
    t0 = time.time()
    assert main(["sweep", str(sweep_file), "--build", str(tmp_path / "b"), "--scheduler",
                 f"tcp://127.0.0.1:{port}"]) == 2
    assert time.time() - t0 < 20
    msg = one_sentence(capsys.readouterr().err)
    assert f"Cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in msg and "dask scheduler" in msg
    assert not list((tmp_path / "b").glob(".bnnflow-probe-*"))  # the probe file is cleaned up


# ------------------------------------------------------------------ training points in a sweep file


TRAIN_VALUES = {
    "model": ["cnv", "resnete", "densenet"],
    "variant": ["small", "default"],
    "optimizer": ["adam", "sgd", "psi"],
    "lr": [None, 0.002, 0.1, 1],
    "seed": [0, 1, 5],
    "epochs": [1, 3, 150],
    "batch_size": [2, 32, 128],
    "recu": [False, True],
    "engine": ["fast", "brevitas"],
    "bf16": [None, True, False],
    "compile": [True, False],
    "label_smoothing": [0.0, 0.1],
    "weight_decay": [0, 1e-5],
    "subset": [None, 64],
    "val_size": [0, 64, 5000],
}


@st.composite
def train_grids(draw):
    """A training grid."""
    return _grid_of(draw, TRAIN_VALUES, 6, unique_by=repr)


def _train_point(**values):
    """The point a file's mapping names: floats as floats, lr spelt out as the optimizer's default."""
    from bnnflow.build_flows.sweep_train_spec import FLOATS, TrainPoint
    from bnnflow.models.train_config import DEFAULT_LR

    values = {k: float(v) if k in FLOATS and v is not None else v for k, v in values.items()}
    p = TrainPoint(**values)
    return TrainPoint(**{**p.as_dict(), "lr": p.lr if p.lr is not None else DEFAULT_LR[p.optimizer]})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=train_grids(), suffix=st.sampled_from([".yaml", ".json"]))
def test_train_grid_is_every_combination(grid, suffix):
    points = _parse({"train": {"grid": grid}}, suffix)
    axes = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    want = list(dict.fromkeys(_train_point(**dict(zip(axes, combo))) for combo in itertools.product(*axes.values())))
    assert points == want  # every combination once, in order; lr unset or spelt out is one point


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=train_grids())
def test_train_point_is_the_command_line_it_runs(grid):
    """A point's `bnnflow train` arguments parse back to the point's recipe, every option explicit."""
    from dataclasses import asdict, fields

    from bnnflow.cli import parser
    from bnnflow.models.train_config import config_from_args

    for point in _parse({"train": {"grid": grid}}):
        cfg = config_from_args(parser().parse_args(["train", *point.train_args()]))
        assert {f.name: getattr(cfg, f.name) for f in fields(point)} == asdict(point)


def test_a_later_recipe_key_keeps_older_points_hashes():
    """Finished runs of an older sweep file are found again: a key added later counts only when set."""
    from bnnflow.build_flows.sweep_train import train_key
    from bnnflow.build_flows.sweep_train_spec import LATER_KEYS

    plain, two_stage = _parse({"train": {"points": [{"model": "cnv", "epochs": 10},
                                                    {"model": "cnv", "epochs": 10, "real_weights_epochs": 3}]}})
    assert not set(LATER_KEYS) & set(plain.as_dict())
    assert two_stage.as_dict()["real_weights_epochs"] == 3 and train_key(plain) != train_key(two_stage)
    # the hash this point had before real_weights_epochs existed (models/recipe_study/cnv-screen)
    assert train_key(plain).startswith("eba3dfc6a08d")


def test_train_table_names_points_that_differ_only_in_a_later_key():
    """The plain point's stored identity has no real_weights_epochs; its row still says 0 beside the 3."""
    from bnnflow.build_flows.sweep_train import describe, train_table

    points = _parse({"train": {"points": [{"model": "cnv", "epochs": 10},
                                          {"model": "cnv", "epochs": 10, "real_weights_epochs": 3}]}})
    rows = [{**describe(p), "status": "done", "epochs_done": 10} for p in points]
    labels = [line.split(" | ")[0] for line in train_table(rows).splitlines()[2:]]
    assert labels == ["| cnv/default (real_weights_epochs 0)", "| cnv/default (real_weights_epochs 3)"]


def test_train_point_defaults_are_trains():
    from dataclasses import fields

    from bnnflow.build_flows.sweep_train_spec import TrainPoint
    from bnnflow.models.train_config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    assert all(f.default == defaults[f.name] for f in fields(TrainPoint))


@settings(max_examples=150, deadline=None)
@given(section=JSONISH | st.dictionaries(st.sampled_from(["grid", "points"]), JSONISH, min_size=1)
       | st.fixed_dictionaries({"grid": st.dictionaries(st.sampled_from(list(TRAIN_VALUES) + ["lr_max"]), JSONISH,
                                                        min_size=1)}))
def test_any_train_section_gives_points_or_one_sentence(section):
    from bnnflow.build_flows.sweep_train_spec import TrainPoint

    try:
        points = _parse({"train": section}, ".json")
    except BnnflowError as exc:
        one_sentence(exc)
        assert str(exc).startswith("Sweep file ")
        return
    assert points and all(isinstance(p, TrainPoint) and p.model in TRAIN_VALUES["model"] for p in points)



# ------------------------------------------------------------------ folders returned as archives


def test_archive_round_trip_replaces_atomically_and_refuses_escapes(tmp_path):
    import io
    import tarfile

    from bnnflow.build_flows.sweep_archive import make_probe, pack, sees, unpack

    src = tmp_path / "work" / "pt-1"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("new")
    dest = tmp_path / "root" / "pt-1"
    (dest / "old").mkdir(parents=True)  # an earlier partial folder is replaced whole
    unpack(pack(src), dest)
    assert (dest / "sub" / "a.txt").read_text() == "new" and not (dest / "old").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["pt-1"]  # nothing left beside it

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BnnflowError) as err:
        unpack(buf.getvalue(), tmp_path / "root" / "pt-2")
    assert "Cannot unpack the archive" in one_sentence(err.value) and not (tmp_path / "evil.txt").exists()

    probe, token = make_probe(tmp_path)
    assert sees(str(probe), token) and not sees(str(probe), "other") and not sees(None, None)
    assert not sees(str(tmp_path / "elsewhere"), token)


def _writing_task(point, folder, key, force):
    """A stand-in point: a folder with a few files, its result written last as run_point does."""
    from bnnflow.atomic import write_json
    from bnnflow.build_flows.sweep import RESULT_FILE

    out = Path(folder)
    (out / "sub").mkdir(parents=True, exist_ok=True)
    (out / "where.txt").write_text(str(out))
    (out / "sub" / "data.bin").write_bytes(os.urandom(50_000))
    row = {"model": point["model"], "title": point["model"], "variant": point["variant"], "status": "done",
           "error": None, "out": str(out), "key": key}
    write_json(out / RESULT_FILE, {"key": key, "row": row})
    return {**row, "cached": False, "seconds": 0.0}


def test_workers_without_the_folder_return_archives(stand_in_tasks, tmp_path):
    """Workers writing to a private scratch folder: each point's folder comes back packed and is unpacked
    into the sweep's folder; workers that do see the folder (the probe) write there directly."""
    from distributed import LocalCluster

    from bnnflow.build_flows.sweep import RESULT_FILE, run_sweep
    from bnnflow.build_flows.sweep_cluster import ClusterSpec
    from bnnflow.build_flows.sweep_spec import DesignPoint

    private = tmp_path / "private"
    private.mkdir()
    points = [DesignPoint("cnv", "tiny"), DesignPoint("resnete", "tiny"), DesignPoint("cnv", "small")]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"BNNFLOW_SWEEP_SCRATCH": str(private)}) as cluster:
        spec = ClusterSpec(scheduler=cluster.scheduler_address)
        rows = run_sweep(points, tmp_path / "root", spec, task=_writing_task, shared=False)["rows"]
        assert [r["status"] for r in rows] == ["done"] * 3
        for r in rows:
            out = Path(r["out"])
            assert out.parent == tmp_path / "root" and (out / "sub" / "data.bin").stat().st_size == 50_000
            assert (out / "where.txt").read_text() == str(private / out.name)  # built in the private folder
            assert json.loads((out / RESULT_FILE).read_text())["row"]["out"] == str(out)
        assert not [p for p in private.iterdir() if p.is_dir()]  # the workers' copies are gone
        assert sorted(p.name for p in (tmp_path / "root").iterdir()) == sorted(Path(r["out"]).name for r in rows)

        # the probe: these workers see the folder, so they write into it directly
        shared = run_sweep(points, tmp_path / "shared", spec, task=_writing_task)["rows"]
        assert all((Path(r["out"]) / "where.txt").read_text() == r["out"] for r in shared)
    again = run_sweep(points, tmp_path / "root", ClusterSpec(jobs=2), task=_writing_task, shared=False)["rows"]
    assert all(r["cached"] for r in again) and [r["out"] for r in again] == [r["out"] for r in rows]


# ------------------------------------------------------------------ a real training sweep


TRAIN_SWEEP = """\
train:
  grid:
    model: cnv
    variant: tiny
    optimizer: sgd
    epochs: 1
    batch_size: 32
    subset: 64
    val_size: 64
    test_subset: 100
    compile: false
    bf16: false
    seed: [0, 1]
  points:
    - {model: cnv, variant: tiny, epochs: 1, subset: 64, val_size: 64, test_subset: 100, data: empty}
"""


def test_training_sweep_on_two_workers_caches_and_reports(tmp_path, cifar_train, capsys):
    """2 tiny training points on a 2-worker LocalCluster, one point that cannot find its data: the table,
    run folders, the failure in one sentence; a re-run reads both finished runs from the cache, and a run
    whose result file is gone is resumed from its last.pt."""
    from bnnflow.build_flows.sweep import RESULT_FILE
    from bnnflow.cli import main

    (tmp_path / "empty").mkdir()
    sweep_file = _write(tmp_path / "train.yaml", TRAIN_SWEEP)
    build = tmp_path / "runs"
    assert main(["sweep", str(sweep_file), "--build", str(build), "--jobs", "2"]) == 2
    out, err = capsys.readouterr()
    assert "1 of 3 training points did not finish" in one_sentence(err)
    table = [line for line in out.splitlines() if line.startswith("| cnv/tiny")]
    assert len(table) == 3 and "seed 0" in table[0] and "seed 1" in table[1] and "| 1/1 | 1 |" in table[0]
    assert "| done |" in table[0] and "| done |" in table[1] and "No CIFAR-10 train split found" in table[2]
    rows = json.loads((build / "train_sweep.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["done", "done", "error"]
    for r in rows[:2]:
        run = Path(r["out"])
        assert {"best.pt", "last.pt", "run.json", "train.log", RESULT_FILE} <= {p.name for p in run.iterdir()}
        assert json.loads((run / "run.json").read_text())["status"] == "finished"
        assert 0 <= r["test_top1"] <= 1 and r["epochs_done"] == 1
    assert rows[0]["test_top1"] != rows[1]["test_top1"] or rows[0]["val_top1"] != rows[1]["val_top1"]

    # the two finished runs are cached; one whose result file is gone continues its last.pt (nothing left)
    _write(sweep_file, TRAIN_SWEEP.split("  points:")[0])
    (Path(rows[1]["out"]) / RESULT_FILE).unlink()
    assert main(["sweep", str(sweep_file), "--build", str(build), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "| cached |" in out and out.count("| done |") == 1
    again = json.loads((build / "train_sweep.json").read_text())["rows"]
    assert [r["cached"] for r in again] == [True, False] and again[1]["test_top1"] == rows[1]["test_top1"]
    assert "already has 1 epochs" in (Path(rows[1]["out"]) / "train.log").read_text() or \
        "Resuming" in (Path(rows[1]["out"]) / "train.log").read_text()
    assert main(["sweep", str(sweep_file), "--build", str(build), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": cached (") == 2
