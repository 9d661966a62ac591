"""Choosing one option per unit: the smallest initiation interval whose cheapest foldings fit.

A binary search over the achievable intervals T; at each T every unit takes its cheapest
option with cycles <= T under a sweep of LUT/BRAM/DSP weightings (a Lagrangian relaxation of
the multiple-choice knapsack), and a local pass re-picks units to match their neighbours'
stream widths (FIFOs and width converters are part of every selection's cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnnflow import compat

compat.finn_ready()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

from .. import fifos  # noqa: E402
from ..fifos import is_hw  # noqa: E402
from .units import Option, Unit  # noqa: E402

# the LUT / BRAM weighting sweep of the Lagrangian selection (share of the weight on LUT)
LUT_WEIGHTS = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
DSP_WEIGHTS = (0.3, 1.0, 3.0)
DSP_SHARE = 0.5  # a DSP weighs half its budget share against LUT/BRAM in the sweep
TIE_BREAK = 1e-12  # among equally cheap options, prefer the slowest (least parallel)
ALIGN_PASSES = 2  # re-pick passes for stream widths; more changed nothing on the default models
LOOK_BELOW = 12  # the fit is not strictly monotone in T: intervals tried below the bisection's answer


def _weights(budget: np.ndarray) -> np.ndarray:
    """Rows of per-resource weights (scaled by the budget) for the Lagrangian sweep."""
    inv = np.array([1.0 / b if b > 0 else 1e6 for b in budget])
    rows = []
    for a in LUT_WEIGHTS:
        for d in DSP_WEIGHTS:
            rows.append(inv * np.array([a, 1.0 - a, d * DSP_SHARE, 1.0]))
    return np.array(rows)


class _Streams:
    """The FIFOs (depth 2) and width converters FINN will put on the streams of a selection."""

    def __init__(self, model: ModelWrapper, units: list[Unit], fpgapart: str):
        self.part = fpgapart
        nodes = [n for n in model.graph.node if is_hw(n)]
        producers = {t: (n.name, q) for n in nodes for q, t in enumerate(n.output)}
        self.edges: list[tuple[str, int, str, int]] = []  # src, out port, dst, position among dst's inputs
        for n in nodes:
            dyn = [i for i, t in enumerate(n.input) if t and model.get_initializer(t) is None]
            for k, i in enumerate(dyn):
                if n.input[i] in producers:
                    src, q = producers[n.input[i]]
                    self.edges.append((src, q, n.name, k))
        unit_of = {name: ui for ui, u in enumerate(units) for name in u.nodes}
        self.incident: list[list[int]] = [[] for _ in units]
        for ei, (src, _, dst, _) in enumerate(self.edges):
            for ui in {unit_of[src], unit_of[dst]}:
                self.incident[ui].append(ei)

    def edge_cost(self, ei: int, widths: dict) -> np.ndarray:
        src, q, dst, k = self.edges[ei]
        wo, wi = widths[src][1][q], widths[dst][0][k]
        lut, bram = fifos.fifo_cost(fifos.DEFAULT_DEPTH, wo, self.part)
        if wo != wi:  # producer -> FIFO -> converter -> FIFO -> consumer
            l2, b2 = fifos.fifo_cost(fifos.DEFAULT_DEPTH, wi, self.part)
            lut, bram = lut + l2 + fifos.dwc_cost(wo, wi, self.part), bram + b2
        return np.array([lut, bram, 0.0, 0.0])

    def cost(self, widths: dict) -> np.ndarray:
        return sum((self.edge_cost(ei, widths) for ei in range(len(self.edges))), np.zeros(4))


class _Tables:
    """Per-unit option arrays for fast selection at a target interval."""

    def __init__(self, units: list[Unit], weights: np.ndarray):
        self.units = units
        self.cyc = [np.array([o.cycles for o in u.options], dtype=np.int64) for u in units]
        self.res = [np.stack([o.res for o in u.options]) for u in units]
        self.cost = [r @ weights.T for r in self.res]  # options x weightings
        self.n_w = weights.shape[0]

    def select(self, target: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(choice index per unit per weighting [units x W], totals [W x 4]); None if a unit cannot meet T."""
        choice = np.zeros((len(self.units), self.n_w), dtype=np.int64)
        totals = np.zeros((self.n_w, 4))
        for i, (cyc, cost, res) in enumerate(zip(self.cyc, self.cost, self.res)):
            ok = cyc <= target
            if not ok.any():
                return None
            # cheapest; ties go to the slowest (least parallel) option
            c = np.where(ok[:, None], cost, np.inf) - TIE_BREAK * cyc[:, None]
            idx = np.argmin(c, axis=0)
            choice[i] = idx
            totals += res[idx]
        return choice, totals


def _align(units: list[Unit], choice: list[int], target: int, weight: np.ndarray, streams: _Streams,
           passes: int = ALIGN_PASSES) -> list[int]:
    """Local improvement: re-pick each unit's folding counting the FIFOs/converters on its streams."""
    choice = list(choice)
    widths = {k: v for i, u in enumerate(units) for k, v in u.options[choice[i]].widths.items()}
    for _ in range(passes):
        changed = False
        for ui, u in enumerate(units):
            if len(u.options) < 2:
                continue
            best, best_cost = choice[ui], None
            for oi, o in enumerate(u.options):
                if o.cycles > target:
                    continue
                trial = {**widths, **o.widths}
                c = float(o.res @ weight) + sum(float(streams.edge_cost(ei, trial) @ weight)
                                                for ei in streams.incident[ui])
                if best_cost is None or c < best_cost - 1e-12:
                    best, best_cost = oi, c
            if best != choice[ui]:
                choice[ui] = best
                widths.update(u.options[best].widths)
                changed = True
        if not changed:
            break
    return choice


def _fits(totals: np.ndarray, budget: np.ndarray) -> np.ndarray:
    return np.all(totals <= budget[None, :] + 1e-9, axis=1)


@dataclass
class Selection:
    target: int
    options: list[Option]
    totals: np.ndarray  # layers + depth-2 FIFOs + converters


def search(units: list[Unit], budget: np.ndarray, streams: _Streams | None = None,
           reserve: np.ndarray | None = None) -> Selection | None:
    """Smallest target interval whose cheapest per-unit foldings (plus their streams) fit `budget`.

    budget: LUT, BRAM_18K, DSP, URAM; reserve: kept free on top (the join FIFOs).
    """
    reserve = np.zeros(4) if reserve is None else reserve
    avail = budget - reserve
    weights = _weights(budget)
    tables = _Tables(units, weights)
    candidates = np.unique(np.concatenate(tables.cyc))
    t_min = max(int(c.min()) for c in tables.cyc)
    candidates = candidates[candidates >= t_min]

    def feasible(t: int):
        sel = tables.select(int(t))
        if sel is None:
            return None
        choice, totals = sel
        ok = _fits(totals, avail)
        if not ok.any():
            return None
        share = np.max(totals / np.maximum(budget, 1e-9)[None, :], axis=1)
        for w in [int(i) for i in np.argsort(np.where(ok, share, np.inf))[:4] if ok[i]]:
            pick = list(choice[:, w])
            if streams is not None:
                pick = _align(units, pick, int(t), weights[w], streams)
            opts = [u.options[pick[i]] for i, u in enumerate(units)]
            total = sum((o.res for o in opts), np.zeros(4))
            if streams is not None:
                total = total + streams.cost({k: v for o in opts for k, v in o.widths.items()})
            if np.all(total <= avail + 1e-9):
                return Selection(int(t), opts, total)
        return None

    best = feasible(candidates[-1])
    if best is None:
        return None
    lo, hi = 0, len(candidates) - 1  # candidates[hi] is feasible
    while lo < hi:
        mid = (lo + hi) // 2
        s = feasible(candidates[mid])
        if s is not None:
            best, hi = s, mid
        else:
            lo = mid + 1
    for t in candidates[max(0, hi - LOOK_BELOW): hi][::-1]:
        s = feasible(t)
        if s is not None and s.target < best.target:
            best = s
    return best
