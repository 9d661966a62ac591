"""`verify --sim N`: the first N images through the generated hardware sources, HLS layers in FINN's cppsim
(cppsim.py) and RTL layers in Verilator (verilator_sim.py), every tensor compared with the functional model,
and the table of what ran as what."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bnnflow.errors import BnnflowError

CPPSIM_STAGE = "HLS C++ (cppsim)"


def logits_tensor(model) -> str:
    """The tensor the hardware's top-1 reads: the logits every stage is compared on."""
    for op in ("TopK", "LabelSelect", "LabelSelect_hls"):
        nodes = model.get_nodes_by_op_type(op)
        if nodes:
            return nodes[0].input[0]
    raise BnnflowError("The graph has no TopK/LabelSelect node, so it cannot be verified against Brevitas.")


def run_cppsim_stage(out_dir: Path, child, x: np.ndarray, console: Console) -> tuple[dict | None, dict]:
    """FINN's cppsim of the folded graph on x (graph-input layout): its integer logits, seconds and note, and what ran as
    what, every tensor compared with the functional model; every RTL node also in Verilator, one node at a
    time on the same images (verilator_sim; one sentence without Verilator). (None, {"skipped": sentence})
    when the cppsim sources or the compiler are missing."""
    from . import cppsim, hls_sources, sim_ccache
    from .functional import execute_graph

    why = hls_sources.unavailable()
    if why is not None:
        return None, {"skipped": why}
    sources = hls_sources.find_sources()
    n = len(x)
    with console.status("Compiling every HLS layer for cppsim (FINN's PrepareCppSim + CompileCppSim)..."):
        try:
            prepared = cppsim.prepare(out_dir, child, sources)
        except Exception as e:  # a compile error is this stage's failure, reported as one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BnnflowError(f"The HLS C++ simulation could not be compiled ({first.rstrip('.')}); "
                               f"the generated code is in {Path(out_dir) / cppsim.CACHE_DIR}.") from None
    with console.status(f"Running {n} images through FINN's cppsim..."):
        try:
            tensors, seconds, ran = cppsim.run_images(prepared, x)
        except Exception as e:  # a crashing binary is this stage's failure, reported as one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BnnflowError(f"The HLS C++ simulation failed while running ({first.rstrip('.')}); "
                               f"the binaries are in {Path(out_dir) / cppsim.CACHE_DIR}.") from None
    model = prepared.model
    raw = tensors[logits_tensor(model)].reshape(n, -1)
    st = {"logits": np.rint(raw).astype(np.int64), "seconds": seconds,
          "note": "non-integer values in the hardware graph" if np.any(np.rint(raw) != raw) else ""}
    console.print(f"  {CPPSIM_STAGE:<28} {n / max(seconds, 1e-9):8.2f} images/s "
                  f"({'reused' if prepared.reused else 'compiled'} binaries: {prepared.seconds:.0f} s"
                  f"{'' if prepared.reused else '; ' + sim_ccache.describe(prepared.ccache)})")
    ref = execute_graph(model, x, tensors=list(tensors))
    differ = [t for t in tensors if not np.array_equal(tensors[t].reshape(ref[t].shape), ref[t])]
    rtl = _run_verilator(out_dir, child, {**ref, model.graph.input[0].name: x}, n, console)
    kinds = cppsim.node_kinds(model, sources)
    kinds.update({k: row["ran_as"] for k, row in rtl.get("nodes", {}).items()})
    hls = [nd.name for nd in cppsim._hls_nodes(model)]
    not_run = [k for k in hls if k not in ran]
    in_verilator = [k for k, row in rtl.get("nodes", {}).items() if "identical" in row]
    st["note"] = (st["note"] + "; " if st["note"] else "") + (
        f"{len(hls)} HLS nodes in C++, {len(in_verilator)} RTL nodes also in Verilator, "
        f"{len(kinds) - len(hls) - len(in_verilator)} in Python only; "
        f"{len(tensors) - len(differ)}/{len(tensors)} tensors = functional model")
    info = {
        "images": n,
        "sources": sources.describe(),
        "stand_ins": hls_sources.stand_ins(sources),
        "compile_seconds": prepared.seconds,
        "binaries_reused": prepared.reused,
        "ccache": prepared.ccache,
        "seconds_per_image": seconds / max(n, 1),
        "nodes": kinds,
        "node_types": node_types(model, kinds, rtl),
        "hls_nodes_not_run": not_run,
        "tensors_compared": len(tensors),
        "tensors_differing": differ,
        "shim_warnings": prepared.shim_warnings,
        "verilator": rtl,
        "all_tensors_identical": not differ and not not_run and rtl.get("all_identical", True),
    }
    if rtl.get("nodes"):  # Verilator's cycles against the stream model that sizes the FIFOs
        from .fifo_crosscheck import cross_check

        info["cycle_check"] = cross_check(child, rtl["nodes"], n)
    return st, info


def _run_verilator(out_dir: Path, child, ref: dict, n: int, console: Console) -> dict:
    """Every RTL node in Verilator on the same n images (verilator_sim.simulate), or {"skipped": sentence}."""
    from . import verilator_sim

    with console.status("Compiling (or reusing) and running every RTL layer in Verilator..."):
        rtl = verilator_sim.simulate(out_dir, child, ref, n)
    if "skipped" not in rtl:
        console.print(f"  {'RTL layers (Verilator)':<28} {rtl['nodes_run']} nodes, {rtl['run_seconds']:.1f} s "
                      f"({rtl['binaries_reused']} reused binaries, {rtl['binaries_kept_elsewhere']} of them from "
                      f"other build folders, {rtl['compile_seconds']:.0f} s to compile; "
                      f"{verilator_sim.sim_ccache.describe(rtl.get('ccache', {}))})")
    return rtl


def node_types(model, kinds: dict[str, str], rtl: dict) -> dict[str, dict]:
    """op type -> {nodes, ran_as (one kind, or 'kind xN; ...' when its nodes differ), identical (RTL nodes in
    Verilator), cycles per image (the slowest node of the type, Verilator)}."""
    rows: dict[str, dict] = {}
    for node in model.graph.node:
        row = rows.setdefault(node.op_type, {"nodes": 0, "kinds": {}})
        row["nodes"] += 1
        row["kinds"][kinds[node.name]] = row["kinds"].get(kinds[node.name], 0) + 1
        sim = rtl.get("nodes", {}).get(node.name, {})
        if "identical" in sim:
            row["verilator_identical"] = row.get("verilator_identical", 0) + int(sim["identical"])
            row["cycles_per_image"] = max(row.get("cycles_per_image", 0), sim["cycles_per_image"])
    for row in rows.values():
        ks = row.pop("kinds")
        row["ran_as"] = next(iter(ks)) if len(ks) == 1 else "; ".join(f"{k} x{c}" for k, c in ks.items())
    return rows


def print_cppsim(info: dict, console: Console) -> None:
    if "skipped" in info:
        console.print(info["skipped"])
        return
    table = Table(title=f"--sim {info['images']}: what ran as what (every tensor compared with the functional model)")
    rtl = any("verilator_identical" in r for r in info["node_types"].values())
    check = info.get("cycle_check", {}).get("types", {})
    cols = ("node type", "nodes", "ran as") + (("Verilator = functional", "cycles/image (Verilator)") if rtl else ()) \
        + (("Verilator / stream model", "Verilator / FINN estimate") if check else ())
    for col in cols:
        table.add_column(col, justify="left" if col in ("node type", "ran as") else "right")
    from .fifo_crosscheck import print_check, ratio_text

    for op, r in info["node_types"].items():
        same = f"{r['verilator_identical']}/{r['nodes']}" if "verilator_identical" in r else ""
        cycles = f"{r['cycles_per_image']:,.0f}" if "cycles_per_image" in r else ""
        ratios = (ratio_text(check[op]["model"]), ratio_text(check[op]["finn"])) if op in check else ("", "")
        table.add_row(op, str(r["nodes"]), r["ran_as"], *((same, cycles) if rtl else ()), *(ratios if check else ()))
    console.print(table)
    print_check(info.get("cycle_check", {}), console)
    console.print(f"cppsim sources: {info['sources']}; the project's stand-ins: {', '.join(info['stand_ins'])}.")
    _print_verilator(info.get("verilator", {}), console)
    if info.get("shim_warnings"):
        console.print(f"[red]cppsim: the hls::stream shim reported {len(info['shim_warnings'])} problem(s), "
                      f"e.g. {info['shim_warnings'][0]}[/]")
    if info["all_tensors_identical"]:
        console.print(f"[green]cppsim: all {info['tensors_compared']} tensors identical to the functional model "
                      f"on {info['images']} images.[/]")
    else:
        console.print(f"[red]cppsim: tensors differing from the functional model: {info['tensors_differing']}; "
                      f"HLS nodes whose binary did not run: {info['hls_nodes_not_run']}.[/]")


def _print_verilator(rtl: dict, console: Console) -> None:
    if "skipped" in rtl:
        console.print(rtl["skipped"])
        return
    if not rtl:
        return
    console.print(f"Verilator ({rtl['verilator']}) ran each RTL node on its own, on the functional model's "
                  f"activations (inside the cppsim graph RTL nodes run as FINN's Python models).")
    if rtl["failed"] or rtl["tensors_differing"]:
        console.print(f"[red]Verilator: differing tensors {rtl['tensors_differing']}; failed {rtl['failed']}.[/]")
    else:
        console.print(f"[green]Verilator: all {rtl['tensors_compared']} RTL output tensors identical to the "
                      f"functional model.[/]")
