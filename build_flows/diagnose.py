"""Why a network did not make it to hardware, in one sentence: the first node left in software,
its neighbours, the likely cause and the fix in the model.

After `convert_to_hw` every node should be a FINN HW layer, except the input transpose that the
dataflow partition's parent keeps. A node left over would split the dataflow partition (FINN then
fails with "cycle-free graph violated", or leaves it on the CPU); `bnnflow build` stops instead and
names it. Causes come from a small table of what breaks streamlining (see README, 'Your own network').
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HW_DOMAIN = "finn.custom_op.fpgadataflow"
POOLS = ("MaxPool", "MaxPoolNHWC", "AveragePool", "QuantAvgPool2d", "GlobalAveragePool", "Pool", "Pool_hls",
         "Pool_rtl", "GlobalAccPool", "GlobalAccPool_hls")
JOINS = ("Add", "Sub", "Concat", "Sum", "ElementwiseAdd", "StreamingConcat")
# what streamlining must have turned into thresholds or integer ops: left over, it runs in software
FLOAT_OPS = ("Mul", "Div", "Add", "Sub", "Pad", "AveragePool", "QuantAvgPool2d", "Trunc", "Quant", "BipolarQuant",
             "Conv", "Gemm", "Concat", "MatMul")


@dataclass(frozen=True)
class Cause:
    applies: Callable  # (node, model, producer op types, consumer op types) -> bool
    cause: str
    fix: str


def _scalar(model, node) -> float | None:
    for name in node.input[1:]:
        v = model.get_initializer(name)
        if v is not None and v.size == 1:
            return float(np.asarray(v).reshape(-1)[0])
    return None


def _non_power_of_two_pool(node, model, prod, cons) -> bool:
    """A Mul by 1/k (k not a power of two) next to a pool: an average pool FINN cannot shift."""
    if node.op_type not in ("Mul", "Div") or not any(p in POOLS or "Pool" in p for p in prod + cons):
        return False
    v = _scalar(model, node)
    if v is None or v == 0:
        return False
    k = round(1 / v) if node.op_type == "Mul" else round(v)
    return k > 1 and k & (k - 1) != 0


def _two_streams(node, model, prod, cons) -> bool:
    return node.op_type in JOINS and sum(model.get_initializer(i) is None for i in node.input) >= 2


CAUSES: list[Cause] = [
    Cause(lambda n, m, p, c: n.op_type == "Pad" or (n.op_type == "Im2Col" and "Pad" in p),
          "padding that FINN cannot fold into the sliding window (binary activations padded with 0 or a float "
          "value instead of -1)",
          "pad binary activations with -1 (F.pad(x, (1, 1, 1, 1), value=-1.0)) and give the binary conv padding=0"),
    Cause(_two_streams,
          "its inputs come from different quantizers, so their float scales differ and streamlining cannot move "
          "them past the join",
          "pass both branches (and the join's output) through one shared QuantIdentity instance, so they share one "
          "scale"),
    Cause(_non_power_of_two_pool,
          "an average pool whose window is not a power of two (FINN's pools divide by shifting, so its 1/k stays "
          "a float Mul)",
          "use a 2x2 or 4x4 average pool (TruncAvgPool2d with a power-of-two kernel) or a max pool"),
    Cause(lambda n, m, p, c: n.op_type in ("AveragePool", "QuantAvgPool2d", "Trunc"),
          "an average pool FINN cannot map (a window that is not a power of two, or a float input)",
          "quantize right before the pool and use a TruncAvgPool2d with a power-of-two kernel"),
    Cause(lambda n, m, p, c: n.op_type in ("Mul", "Div", "Add", "Sub") and any("MaxPool" in x for x in p + c),
          "a float scale (a batch norm or a quantizer's scale) stuck at a max pool, which it cannot move past",
          "quantize before pooling (conv, batch norm, quantizer, then MaxPool), with no batch norm right before "
          "the pool"),
    Cause(lambda n, m, p, c: "MaxPool" in n.op_type,
          "a max pool fed float values (a batch norm, or a float scale, right before it and no quantizer between)",
          "quantize before pooling (conv, batch norm, quantizer, then MaxPool), with no batch norm right before "
          "the pool"),
    Cause(lambda n, m, p, c: n.op_type in ("MatMul", "Conv", "Gemm"),
          "a layer whose weights are not integers (a float weight quantizer, or a weight scale that could not be "
          "absorbed)",
          "give it a binary weight quantizer with a constant scale of 1 (SignedBinaryWeightPerTensorConst with "
          "scaling_const = 1.0) or per-tensor integer weights, and follow it with a batch norm and a quantizer"),
    Cause(lambda n, m, p, c: n.op_type in ("Mul", "Div", "Add", "Sub"),
          "a float scale or bias that streamlining could not absorb into a threshold (a layer not followed by a "
          "quantizer, or a classifier with a bias)",
          "follow every conv and linear layer with a batch norm and a quantizer, and give the classifier no bias"),
    Cause(lambda n, m, p, c: n.op_type == "MultiThreshold",
          "a quantizer whose input is not on an integer grid (a float operation before it)",
          "feed every quantizer from a conv, linear layer, batch norm, pool or another quantizer"),
]
FALLBACK = Cause(lambda *a: True, "an operation FINN has no hardware layer for",
                 "build the network from convs, linear layers, batch norms, quantizers, max pools, power-of-two "
                 "average pools, adds and concats")


def software_nodes(model, ops: tuple[str, ...] | None = None) -> list:
    """Nodes outside FINN's HW layers, in graph order (the input transpose is allowed); `ops`: only these."""
    inputs = {i.name for i in model.graph.input}
    left = [n for n in model.graph.node if not n.domain.startswith(HW_DOMAIN)
            and not (n.op_type == "Transpose" and n.input[0] in inputs)]
    return [n for n in left if ops is None or n.op_type in ops]


def _neighbours(model, node) -> tuple[list[str], list[str]]:
    prod = [model.find_producer(i) for i in node.input]
    cons = [c for o in node.output for c in model.find_consumers(o)]
    return [p.op_type for p in prod if p is not None], [c.op_type for c in cons]


def _named(ops: list[str], none: str) -> str:
    return " and ".join(dict.fromkeys(ops)) if ops else none


def explain(model, node) -> str:
    """'Mul_3 (Mul, after MaxPoolNHWC, before MultiThreshold): likely ...; fix: ...'"""
    prod, cons = _neighbours(model, node)
    cause = next((c for c in CAUSES if c.applies(node, model, prod, cons)), FALLBACK)
    return (f"{node.name or node.op_type} ({node.op_type}, after {_named(prod, 'the graph input')}, before "
            f"{_named(cons, 'the graph output')}): likely {cause.cause}; fix: {cause.fix}")


def diagnose(model, when: str = "after HW conversion", ops: tuple[str, ...] | None = None) -> str | None:
    """One sentence naming the first node left in software, or None when every node is in hardware."""
    left = software_nodes(model, ops)
    if not left:
        return None
    which = f"the first of {len(left)} nodes" if len(left) > 1 else "the node"
    return f"The network does not map to hardware: {which} left in software {when} is {explain(model, left[0])}."


def _pool_window(node) -> int | None:
    from onnx.helper import get_attribute_value

    attrs = {a.name: get_attribute_value(a) for a in node.attribute}
    if node.op_type == "AveragePool":
        return int(np.prod(attrs.get("kernel_shape", [1])))
    if node.op_type == "QuantAvgPool2d":
        return int(attrs.get("kernel", 1)) ** 2
    return None


def _input_affine(model) -> str | None:
    """A per-channel Mul (an input normalisation, --input-mean/--input-std) that reaches a conv or linear layer
    from the graph input before any quantizer: it cannot become part of a threshold."""
    node = next((n for n in model.graph.node if n.input and n.input[0] == model.graph.input[0].name), None)
    per_channel = None
    while node is not None and node.op_type in ("Mul", "Div", "Add", "Sub", "Transpose", "Reshape"):
        v = model.get_initializer(node.input[1]) if len(node.input) > 1 else None
        if node.op_type in ("Mul", "Div", "Add", "Sub") and v is not None and v.size > 1:
            per_channel = per_channel or node
        nxt = model.find_consumers(node.output[0])
        node = nxt[0] if len(nxt) == 1 else None
    if per_channel is None or node is None or node.op_type not in ("Conv", "MatMul", "Gemm"):
        return None
    return (f"The network does not map to hardware: the per-channel input normalisation {per_channel.name} "
            f"({per_channel.op_type}, from --input-mean/--input-std or the network itself) reaches {node.name} "
            f"({node.op_type}) before any quantizer, and FINN moves only scalar scales and offsets past a conv or "
            "linear layer (a per-channel one would turn each input channel's weights into floats), so it cannot "
            "become a threshold; fix: put an input quantizer first in the network (QuantIdentity with an 8-bit "
            "act_quant, whose thresholds absorb mean and std), or train without per-channel normalisation.")


def lint(model) -> str | None:
    """Rules checked before streamlining, on what would make it fail or never finish (a 3x3 average
    pool leaves StreamlinePlus moving its 1/9 around for good; a per-channel input scale before the
    first layer's weights)."""
    message = _input_affine(model)
    if message:
        return message
    for node in model.graph.node:
        k = _pool_window(node)
        if k is not None and k > 1 and k & (k - 1):
            prod, cons = _neighbours(model, node)
            return (f"The network does not map to hardware: {node.name or node.op_type} ({node.op_type}, after "
                    f"{_named(prod, 'the graph input')}, before {_named(cons, 'the graph output')}) averages "
                    f"{k} values, but FINN's pools divide by shifting, so its 1/{k} cannot become a threshold; fix: "
                    "use a 2x2 or 4x4 average pool (TruncAvgPool2d with a power-of-two kernel) or a max pool.")
    return None


def _record(out_dir, message: str) -> None:
    """The diagnosis stays with the build (build_state.json), beside the graph it names."""
    from . import flow

    state = flow.BuildState(out_dir)
    state.data["diagnosis"] = message
    state.save()


def check_before(out_dir, step: str) -> None:
    """Before streamlining a build: stop with the diagnosis when the graph breaks a rule lint() knows."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.errors import BnnflowError

    from . import flow

    if step != flow.STREAMLINE_STEP:
        return
    path = flow.intermediate_path(out_dir, flow.STEP_NAMES[flow.step_index(step) - 1])
    message = lint(ModelWrapper(str(path))) if path.is_file() else None
    if message:
        _record(out_dir, message)
        raise BnnflowError(message)


def check_build(out_dir, step: str) -> None:
    """After the HW conversion of a build: stop with the diagnosis when a node stayed in software."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.errors import BnnflowError

    from . import flow

    if step != flow.CONVERT_STEP:
        return
    message = diagnose(ModelWrapper(str(flow.intermediate_path(out_dir, step))))
    if message:
        _record(out_dir, message)
        raise BnnflowError(message)


def _first_sentence(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return (text.split(". ")[0].rstrip(".")[:200]) or "no message"


def _user_step_failure(state: dict, failed: str, exc: BaseException) -> str | None:
    """Any other step failing on a user's network: one sentence (bnnflow's own models fail loudly)."""
    if "user_model" not in state and "user_onnx" not in state:
        return None
    from bnnflow.model_ref import shown

    return (f"FINN's step {failed} failed on this network ({type(exc).__name__}: {shown(_first_sentence(exc), 200)}), "
            "which bnnflow has no diagnosis for: try 'bnnflow fold' and build with its folding, or report it with "
            "the build folder's build_state.json.")


def diagnose_failure(out_dir, exc: BaseException) -> str | None:
    """A step from HW conversion to the dataflow partition raised: the diagnosis of the graph it started from;
    any step failing on a user's network: one sentence saying which (None: let it raise)."""
    from qonnx.core.modelwrapper import ModelWrapper

    from . import flow

    data = flow.BuildState(out_dir, strict=False).data or {}
    failed = data.get("failed", {}).get("step")
    lo, hi = flow.step_index(flow.CONVERT_STEP), flow.step_index("create_dataflow_partition")
    if failed not in flow.STEP_NAMES:
        return None
    before = flow.intermediate_path(out_dir, flow.STEP_NAMES[flow.step_index(failed) - 1])
    if not lo <= flow.step_index(failed) <= hi or not before.is_file():
        return _user_step_failure(data, failed, exc)
    ops = FLOAT_OPS if failed == flow.CONVERT_STEP else None  # streamlined: only what should be gone
    return diagnose(ModelWrapper(str(before)), f"when step {failed} failed ({type(exc).__name__})", ops) or \
        _user_step_failure(data, failed, exc)
