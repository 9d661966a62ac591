"""A design's resources, counted one way everywhere: FINN's per-layer estimates plus the FIFOs and
width converters FINN inserts later (bnnflow's FIFO model), judged against a budget.

Used by the estimate summary (summary.json) and by the folding search's evaluation, so the
search and the build agree on what fits.
"""

from __future__ import annotations

RES = ("LUT", "BRAM_18K", "DSP", "URAM")
SLACK = 1e-9  # float budgets (a share of the device) against integer counts


def stream_resources(plan) -> dict:
    """What a FifoPlan's FIFOs and width converters cost, per resource."""
    return {"LUT": plan.lut, "BRAM_18K": plan.bram, "DSP": 0, "URAM": 0}


def design_total(layers: dict, streams: dict) -> dict:
    return {k: layers[k] + streams.get(k, 0) for k in layers}


def fits(total: dict, budget: dict, keys: tuple[str, ...] = RES) -> bool:
    return all(total[k] <= budget[k] + SLACK for k in keys)
