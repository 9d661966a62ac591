"""The stream model's cycles per RTL node against Verilator's (`bnnflow verify --sim N`, issue 11).

verilator_sim runs each RTL node alone: its inputs always ready, its output never blocked, cycles
counted from reset to the last output word of each image. node_alone (fifo_sizing) runs the same
node alone in the stream model that sizes the FIFOs. Two numbers are compared per node:

* steady state, cycles per image (images 2..N in Verilator, the model's last frame interval): what
  throughput and FIFO sizing rest on. Measured on CNV-W1A1 tiny and ResNetE default (README), they
  agree to the cycle, except ConvolutionInputGenerator_rtl, which idles one cycle between images
  (the model lets the next image start on the cycle the last window leaves): STEADY_SLACK.
* the first image, from reset: Verilator adds the pipeline fill of Thresholding_rtl (3-9 cycles) and
  MVAU_rtl (8-11 cycles), which the model leaves out: FIRST_SLACK.

FINN's own estimate (get_exp_cycles, what FINN's folding and FPS figures use) is reported beside.
"""

from __future__ import annotations

STEADY_SLACK = 1  # cycles per image the model may be below Verilator in the steady state (none above)
FIRST_SLACK = 16  # cycles Verilator's first image may take beyond the model's (pipeline fill; none below)


def model_cycles(model, names: list[str], frames: int) -> dict[str, dict]:
    """node -> {"first": first image's cycles, "interval": cycles per image (last frame), "finn": FINN's
    estimate} in the stream model, each node alone."""
    from .fifo_graph import stream_graph
    from .fifo_sizing import node_alone

    g = stream_graph(model)
    out = {}
    for name in names:
        r = node_alone(g, name, max(frames, 1))
        out[name] = {"first": r.latency, "interval": r.interval if frames > 1 else None,
                     "finn": int(g.exp_cycles.get(name, 0))}
    return out


def agrees(verilator: dict, modelled: dict) -> bool:
    """Within the slack the module's docstring justifies from the measured nodes (one image: the first only)."""
    first = verilator["cycles_first_image"] - modelled["first"]
    if modelled["interval"] is None:
        return 0 <= first <= FIRST_SLACK
    steady = verilator["cycles_per_image"] - modelled["interval"]
    return 0 <= steady <= STEADY_SLACK and 0 <= first <= FIRST_SLACK


def cross_check(model, rtl_nodes: dict, images: int) -> dict:
    """Per RTL node that ran in Verilator (verilator_sim.simulate's "nodes"): Verilator's cycles, the
    model's, FINN's, and whether they agree; per op type the range of Verilator / model and Verilator /
    FINN (steady state). {"error": sentence} when the model cannot be built for this graph."""
    ran = {k: v for k, v in rtl_nodes.items() if "cycles_per_image" in v}
    if not ran:
        return {}
    try:
        modelled = model_cycles(model, list(ran), images)
    except Exception as e:  # the check is informative: the bit-exact verdict stands without it
        return {"error": f"the stream model could not be run on this graph ({type(e).__name__}: {e})."}
    nodes, types = {}, {}
    for name, v in ran.items():
        m = modelled[name]
        row = {"verilator_first": v["cycles_first_image"], "verilator_per_image": v["cycles_per_image"],
               "model_first": m["first"], "model_per_image": m["interval"], "finn": m["finn"],
               "agrees": agrees(v, m)}
        nodes[name] = row
        t = types.setdefault(v["op_type"], {"nodes": 0, "agree": 0, "model": [], "finn": []})
        t["nodes"] += 1
        t["agree"] += int(row["agrees"])
        t["model"].append(v["cycles_per_image"] / max(m["interval"] or m["first"], 1))
        t["finn"].append(v["cycles_per_image"] / max(m["finn"], 1))
    for t in types.values():
        t["model"] = [min(t["model"]), max(t["model"])]
        t["finn"] = [min(t["finn"]), max(t["finn"])]
    return {"nodes": nodes, "types": types, "all_agree": all(r["agrees"] for r in nodes.values())}


def ratio_text(lo_hi: list[float]) -> str:
    lo, hi = lo_hi
    return f"{lo:.4f}" if f"{lo:.4f}" == f"{hi:.4f}" else f"{lo:.4f}-{hi:.4f}"


def print_check(check: dict, console) -> None:
    """One line under verify's --sim table: how many RTL nodes agree, and which do not."""
    if "error" in check:
        console.print(f"Cycle cross-check skipped: {check['error']}")
    elif check:
        off = [k for k, r in check["nodes"].items() if not r["agrees"]]
        console.print(("[green]" if not off else "[red]") +
                      f"Stream model vs Verilator (cycles per image; ratios per type above): "
                      f"{len(check['nodes']) - len(off)}/{len(check['nodes'])} RTL nodes agree (steady state within "
                      f"{STEADY_SLACK} cycle, first image within {FIRST_SLACK} cycles of pipeline fill)"
                      + (f"; differing: {', '.join(off)}" if off else "") + ".[/]")
