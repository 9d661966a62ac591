"""Automatic folding: the fastest PE/SIMD choice whose FINN estimates fit the board.

The search works on the specialised graph (the model saved after `specialize_layers`):

1. Units. Every HW node is a unit, except that a sliding-window generator goes with the MVAU
   (or pool) it feeds, so the two are folded together. For each unit all legal foldings are
   enumerated with FINN's rules (those of SetFolding): MVAU SIMD divides MW and PE divides MH,
   SIMD * weight bits <= mvau_wwidth_max (FINN's default 36), the weight stream of an HLS MVAU
   in internal_decoupled mode at most MAX_ALLOWED_AP_INT_W bits (internal_embedded where it is
   wider); a window generator's SIMD divides its input channels, or equals them with
   parallel_window=1 (whole windows per cycle); with each MVAU folding go the generator
   foldings worth having: the narrowest SIMD that keeps up with the MVAU (SetFolding's choice,
   a width converter in between), the MVAU's own SIMD (no converter), or parallel_window when
   no SIMD keeps up; a depthwise generator takes the PE of its pool; thresholds, duplicate,
   add, pool, label-select PE divide their channels; concat SIMD divides every input's
   channels; padding SIMD divides its channels.
   Memory choices come along where they change the estimate: MVAU weights in BRAM or LUTRAM,
   HLS MVAU multipliers in LUTs or DSPs (not for XNOR layers), window buffers in LUTRAM or BRAM.
   Each folding is scored with FINN's own per-node estimates (get_exp_cycles, lut_/bram_/dsp_/
   uram_estimation), and dominated ones (slower and no cheaper in anything) are dropped.
2. Target interval. The throughput of a dataflow pipeline is set by its slowest node, so the
   search is a binary search over the achievable initiation intervals T (every cycle count any
   unit can reach): for a given T every unit takes its cheapest folding with cycles <= T, so no
   node is faster than it needs to be and none idles. "Cheapest" is a weighted sum of LUT,
   BRAM, DSP (and URAM) shares of the budget; the weights are swept (a Lagrangian relaxation of
   the multiple-choice knapsack) so that a design short of BRAM trades weights into LUTRAM and
   vice versa. T is feasible when some weighting fits the budget.
3. FIFOs and converters. The depth-2 FIFOs FINN inserts on every stream and the data-width
   converters between nodes of different stream widths are part of every selection's cost
   (FINN's StreamingFIFO / DWC estimates; stream width is a Pareto dimension), and a local
   pass re-picks each unit's folding to match its neighbours' widths where that is cheaper.
   The join FIFOs are sized on the chosen folding by bnnflow.build_flows.fifos (a simulation);
   if they push the design over budget, their cost is reserved and the search runs again.

FINN's target_fps heuristic (SetFolding) is the baseline: `compare_with_target_fps` runs both
on the same graph and scores both with the same estimator.
"""

from .baseline import best_target_fps, compare_with_target_fps, set_folding
from .evaluation import Evaluation, apply_attrs, evaluate
from .report import fold_report, print_comparison, print_fold
from .search import FoldResult, fold, folding_config, load_config, write_config
from .selection import Selection, search
from ..resources import RES
from .units import HW_ATTRS, MVAU_WWIDTH_MAX, Option, Unit, build_units, divisors

__all__ = ["fold", "compare_with_target_fps", "best_target_fps", "set_folding", "search", "Selection",
           "build_units", "Unit", "Option", "divisors", "evaluate", "apply_attrs", "Evaluation", "FoldResult",
           "folding_config", "write_config", "load_config", "fold_report", "print_fold", "print_comparison",
           "HW_ATTRS", "MVAU_WWIDTH_MAX", "RES"]
