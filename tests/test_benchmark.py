"""`bnnflow benchmark`: table, plot, compute bound, caching (tiny CNV only; the full run is manual)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from bnnflow.errors import BnnflowError

from conftest import copy_build


def _row(model, variant, fps, acc=None, **kw):
    from bnnflow.build_flows.benchmark import TITLES

    row = {"model": model, "title": TITLES[model], "variant": variant, "accuracy": acc, "fps": fps,
           "latency_ms": 1.0, "LUT_pct": 50.0, "BRAM_pct": 20.0, "compute_bound_pct": 30.0,
           "binary_macs": 5e7, "lut_per_lane": 6.9, "bound_macs_per_s": 6.5e11, "error": None, "seconds": 1.0}
    row.update(kw)
    return row


def _report(rows):
    return {"board": "pynq-z2", "part": "xc7z020clg400-1", "clock_mhz": 100.0, "limits": {"LUT": 0.85, "BRAM": 0.95},
            "wall_seconds": 1.0, "jobs": 2, "rows": rows}


def test_markdown_table_cnv_first_and_untrained():
    from bnnflow.build_flows.benchmark import markdown_table

    report = _report([_row("cnv", "tiny", 30000), _row("resnete", "small", 3000, acc=0.871),
                      _row("densenet", "wide", 0, error="does not fit: x")])
    md = markdown_table(report)
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | variant | accuracy | est. FPS | sim. FPS | latency | sim. latency | LUT % | "
                               "BRAM % | compute-bound %")
    assert lines[1].startswith("| CNV-W1A1 | tiny | untrained | 30,000 | – |")  # no stream-model figure in this row
    assert "| ResNetE | small | 87.1 % | 3,000 |" in md
    assert "| BinaryDenseNet | wide | untrained | does not fit |" in md
    assert "LUT per XNOR-popcount lane" in md


def test_plot_writes_png(tmp_path):
    from bnnflow.build_flows.benchmark import plot

    report = _report([_row("cnv", v, f) for v, f in (("tiny", 30000), ("small", 9000), ("default", 6000))]
                     + [_row("resnete", "default", 3000, acc=0.88)])
    png = plot(report, tmp_path / "b.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # what is drawn: each model's points in its colour, no others; two panels side by side
    img = _pixels(png)
    assert img.shape[1] > 2 * img.shape[0]
    blue, orange, green = _count(img, (31, 119, 180)), _count(img, (255, 127, 14)), _count(img, (44, 160, 44))
    assert blue > 200 and orange > 50 and green == 0, (blue, orange, green)
    more = plot(_report(report["rows"] + [_row("densenet", "small", 5000)]), tmp_path / "c.png")
    assert _count(_pixels(more), (44, 160, 44)) > 50
    # the x axis is FPS: moving a point moves its pixels
    moved = plot(_report([_row("cnv", "tiny", 300)] + report["rows"][1:]), tmp_path / "d.png")
    assert not np.array_equal(_pixels(moved), img)


def _pixels(png: Path):
    import matplotlib.image

    return (matplotlib.image.imread(str(png))[..., :3] * 255).round().astype(int)


def _count(img, rgb) -> int:
    return int(np.sum(np.all(np.abs(img - np.array(rgb)) <= 8, axis=-1)))


def test_lane_luts_from_finn_model():
    from bnnflow.build_flows.benchmark import compute_bound, lane_luts
    from bnnflow.hw.boards import get_board

    per_lane = lane_luts("xc7z020clg400-1")
    assert 5.0 < per_lane < 10.0
    board = get_board("pynq-z2")
    lut, bound = compute_bound(board, board.budget()["LUT"])
    assert lut == per_lane and bound == pytest.approx(int(0.85 * board.lut / per_lane) * 100e6)


def test_select_rejects_unknown():
    from bnnflow.build_flows.benchmark import DESIGNS, select_designs

    assert select_designs(None) == DESIGNS and select_designs(["cnv"]) == DESIGNS[:3]
    assert select_designs(["resnete/tiny"]) == [("resnete", "tiny")]
    with pytest.raises(BnnflowError):
        select_designs(["alexnet"])


def test_benchmark_tiny_cnv_and_cache(tiny_cnv, tmp_path):
    """One design end to end in-process (reusing a copy of the shared tiny build), then a cached re-run."""
    from bnnflow.build_flows.benchmark import run_benchmark

    bench = tmp_path / "bench"
    copy_build(tiny_cnv["out"], bench / "cnv-tiny-pynq-z2")  # the benchmark searches and builds in it
    report = run_benchmark("pynq-z2", bench, jobs=1, only=["cnv/tiny"])
    (row,) = report["rows"]
    assert row["error"] is None and row["fits"] and row["fps"] > 1000
    # the README's CNV-W1A1 tiny row: deterministic estimates of the searched folding (a change is a
    # deliberate update of both); reproduce with `.venv/bin/bnnflow benchmark --only cnv/tiny`
    shown = (f"{row['fps']:,.0f}", f"{row['sim_fps']:,.0f}", f"{row['latency_ms']:.2f}", f"{row['sim_latency_ms']:.2f}",
             f"{row['LUT_pct']:.1f}", f"{row['BRAM_pct']:.1f}", f"{row['compute_bound_pct']:.1f}")
    assert shown == ("31,888", "31,348", "0.41", "0.14", "46.4", "21.8", "17.6")
    line = next(x for x in (bench / "benchmark.md").read_text().splitlines() if x.startswith("| CNV-W1A1 | tiny |"))
    assert line.startswith("| CNV-W1A1 | tiny | untrained | 31,888 | 31,348 | 0.41 ms | 0.14 ms | 46.4 | 21.8 | 17.6 |")
    assert line in (Path(__file__).resolve().parents[1] / "README.md").read_text()  # the README's row, verbatim
    assert 0 < row["compute_bound_pct"] <= 100 and row["binary_macs"] > 1e6
    assert 0 < row["LUT_pct"] <= 85 and 0 < row["BRAM_pct"] <= 95
    # the row's resources are the search's own total (layers + FIFOs + converters), counted once
    searched = json.loads((Path(row["out"]) / "fold_report.json").read_text())["total"]
    assert row["LUT"] == pytest.approx(searched["LUT"]) and row["BRAM_18K"] == pytest.approx(searched["BRAM_18K"])
    assert row["accuracy"] is None  # no checkpoint for cnv/tiny
    assert (bench / "benchmark.md").exists() and (bench / "benchmark.json").exists()
    t0 = time.time()
    again = run_benchmark("pynq-z2", bench, jobs=1, only=["cnv/tiny"])
    assert again["rows"][0]["cached"] and again["rows"][0]["fps"] == row["fps"] and time.time() - t0 < 30


def test_benchmark_is_a_sweep(monkeypatch, tmp_path):
    """`bnnflow benchmark` submits its designs through the sweep engine: searched folding, committed weights,
    one plain-named folder each, on the cluster it is given (default: a LocalCluster of --jobs workers)."""
    from bnnflow.build_flows import benchmark, sweep
    from bnnflow.build_flows.sweep_cluster import ClusterSpec

    seen = {}

    def fake_sweep(points, root, spec, **kw):
        seen.update(points=points, root=root, spec=spec, **kw)
        return {"rows": [{"model": p.model, "title": benchmark.TITLES[p.model], "variant": p.variant,
                          "status": "lost", "error": "KilledWorker: x", "accuracy": None, "seconds": 0.0}
                         for p in points], "wall_seconds": 1.0}

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    report = benchmark.run_benchmark("pynq-z2", tmp_path, jobs=3, only=["cnv"], lut_max=0.7)
    assert [(p.model, p.variant, p.folding, p.weights, p.lut_max) for p in seen["points"]] == \
        [("cnv", v, "auto", "committed", 0.7) for v in ("tiny", "small", "default")]
    assert seen["spec"] == ClusterSpec(jobs=3) and seen["hashed"] is False and seen["priority"](seen["points"][2]) > \
        seen["priority"](seen["points"][0])  # the largest design is submitted first
    assert "| CNV-W1A1 | tiny | untrained | lost (worker died) |" in (tmp_path / "benchmark.md").read_text()
    assert "- CNV-W1A1 tiny: KilledWorker: x" in (tmp_path / "benchmark.md").read_text()  # never silently dropped
    assert report["cluster"].startswith("a local Dask cluster of 3 worker process(es)")
