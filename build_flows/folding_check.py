"""Folding configs checked against the graph they will be applied to, before a build folder is touched.

FINN's ApplyConfig warns about layers it does not know (in build.log only) and the invalid PE/SIMD
surface later as FINNUserError tracebacks, after the build folder has changed. Here every entry
is checked with FINN's and qonnx's own facilities (the node's attribute definitions and allowed
values, its folded shapes), and each problem ends in one sentence naming the layer, the value
and the values allowed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from bnnflow import compat
from bnnflow.errors import BnnflowError

compat.finn_ready()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp, is_custom_op  # noqa: E402

from finn.transformation.qonnx.give_unique_node_names_recursive import GiveUniqueNodeNamesRecursive  # noqa: E402

# Which attribute holds the dimension a folding factor must divide, per FINN op (for the message;
# the check itself is FINN's folded-shape computation).
FOLD_DIMS = {
    ("MVAU", "PE"): "MH", ("MVAU", "SIMD"): "MW",
    ("VVAU", "PE"): "Channels",
    ("Thresholding", "PE"): "NumChannels", ("DuplicateStreams", "PE"): "NumChannels",
    ("GlobalAccPool", "PE"): "NumChannels", ("Pool", "PE"): "Channels", ("LabelSelect", "PE"): "Labels",
    ("ConvolutionInputGenerator", "SIMD"): "IFMChannels", ("FMPadding", "SIMD"): "NumChannels",
    ("FMPadding_Pixel", "SIMD"): "NumChannels",
}
FOLD_ATTRS = ("PE", "SIMD")
FIFO_ATTRS = ("inFIFODepths", "outFIFODepths")


def _base_op(op_type: str) -> str:
    for suffix in ("_hls", "_rtl"):
        if op_type.endswith(suffix):
            return op_type[: -len(suffix)]
    return op_type


def _q(text: str) -> str:
    """A name from the user's file, kept on one line."""
    return json.dumps(str(text))[1:-1]


def _values(values) -> str:
    values = sorted(values, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))
    shown = ", ".join(map(str, values[:24]))
    return shown + (f" ... ({len(values)} values)" if len(values) > 24 else "")


def load_folding_json(path: Path) -> dict:
    """The config as a dict of layer -> {attribute: value}; one sentence if it is not one."""
    path = Path(path)
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise BnnflowError(f"Folding config {path} cannot be read ({exc.strerror or exc}): pass a readable "
                           "JSON file like those in hw/folding/.") from None
    except UnicodeDecodeError:
        raise BnnflowError(f"Folding config {path} is not UTF-8 text: pass a JSON file like those in "
                           "hw/folding/.") from None
    except json.JSONDecodeError as exc:
        raise BnnflowError(f"Folding config {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                           f"{exc.colno}): fix it or pass a file like those in hw/folding/.") from None
    check_structure(config, f"Folding config {path}")
    return config


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_structure(config, source: str) -> None:
    """An object of layer name -> object of attributes, plus FINN's optional Defaults."""
    if not isinstance(config, dict):
        raise BnnflowError(f"{source} holds a JSON {_json_type(config)}, not an object mapping layer names to "
                           "attributes like those in hw/folding/.")
    for name, entry in config.items():
        if not isinstance(entry, dict):
            raise BnnflowError(f"{source}: the entry for '{_q(name)}' is a JSON {_json_type(entry)}, not an object of "
                               "attributes such as {\"PE\": 2, \"SIMD\": 4}.")
    for attr, spec in config.get("Defaults", {}).items():
        ok = isinstance(spec, list) and len(spec) >= 2 and len(spec) % 2 == 0 and all(
            op == "all" or (isinstance(op, list) and all(isinstance(o, str) for o in op)) for op in spec[1::2])
        if not ok:
            raise BnnflowError(f"{source}: Defaults entry '{_q(attr)}' must be a list of value, [op types] (or "
                               "\"all\") pairs, as in FINN's ApplyConfig.")


def _type_ok(dtype: str, value) -> bool:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if dtype == "i":
        return is_int(value)
    if dtype == "s":
        return isinstance(value, str)
    if dtype == "f":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype == "ints":
        return isinstance(value, list) and all(is_int(v) for v in value)
    if dtype == "floats":
        return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in value)
    if dtype == "strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True


_TYPE_WORDS = {"i": "an integer", "s": "a string", "f": "a number", "ints": "a list of integers",
               "floats": "a list of numbers", "strings": "a list of strings"}


def _shapes_ok(inst, model: ModelWrapper) -> bool:
    """FINN's folded-shape computations, which refuse a folding that does not divide the channels."""
    node = inst.onnx_node
    try:
        for i, t in enumerate(node.input):
            if t and model.get_initializer(t) is None:
                inst.get_folded_input_shape(i)
        for i in range(len(node.output)):
            inst.get_folded_output_shape(i)
        if _base_op(node.op_type) in ("MVAU", "VVAU"):
            inst.calc_wmem()
        for (op, attr), dim in FOLD_DIMS.items():  # some shapes floor-divide, e.g. Thresholding's
            if op == _base_op(node.op_type) and inst.get_nodeattr(dim) % inst.get_nodeattr(attr):
                return False
        if _base_op(node.op_type) == "StreamingConcat":  # FINN's shapes floor-divide here instead
            simd = inst.get_nodeattr("SIMD")
            if simd < 1 or any(c % simd for c in inst.get_nodeattr("ChannelsPerStream")):
                return False
    except Exception:  # noqa: BLE001 - FINN signals it with asserts, FINNUserError or ZeroDivisionError
        return False
    return True


def hls_mvau_min_simd(mw: int) -> int:
    """The smallest SIMD FINN's MVAU_hls code generation accepts: it asserts SIMD >= MW / 1024."""
    return -(-mw // 1024)


def _fold_limit(inst) -> int:
    dims = [int(d) for shape in (inst.get_normal_input_shape(), inst.get_normal_output_shape()) for d in shape]
    return max(dims + [1])


def _legal(inst, model: ModelWrapper, attr: str, attrs: list[str]) -> list[int]:
    """Every value of `attr` FINN accepts on this node, the other folding factors at 1."""
    old = {a: inst.get_nodeattr(a) for a in attrs}
    dim = FOLD_DIMS.get((_base_op(inst.onnx_node.op_type), attr))
    candidates = range(1, int(inst.get_nodeattr(dim)) + 1) if dim else range(1, _fold_limit(inst) + 1)
    legal = []
    try:
        for a in attrs:
            inst.set_nodeattr(a, 1)
        for v in candidates:
            inst.set_nodeattr(attr, v)
            if _shapes_ok(inst, model):
                legal.append(v)
    finally:
        for a, v in old.items():
            inst.set_nodeattr(a, v)
    return legal


def check_folding(model: ModelWrapper, config: dict, source: str = "Folding config", uram: int | None = None) -> None:
    """Raise BnnflowError (one sentence) unless `config` applies cleanly to `model`, the graph that
    FINN's apply_folding_config step will see. `uram`: the device's URAM count, if known."""
    check_structure(config, source)
    model = ModelWrapper(copy.deepcopy(model.model))  # the step renames nodes first; so do we, on a copy
    model = model.transform(GiveUniqueNodeNamesRecursive())
    nodes = {n.name: n for n in model.graph.node}
    hw = sorted(n.name for n in model.graph.node if is_custom_op(n.domain, n.op_type))
    touched = [name for name in config if name != "Defaults"]
    for name in touched:
        _check_layer(nodes, hw, name, config[name], source, uram)
    if "Defaults" in config:
        model, touched = _apply_defaults(model, config, source), hw
        nodes = {n.name: n for n in model.graph.node}
    for name in touched:
        _check_shapes(model, nodes[name], config.get(name, {}), source)


def _check_layer(nodes: dict, hw: list[str], name: str, entry: dict, source: str, uram: int | None) -> None:
    """The layer exists, is a HW layer, and takes every attribute value the config sets (set on the copy)."""
    node = nodes.get(name)
    if node is None:
        raise BnnflowError(f"{source} names layer '{_q(name)}', which this model does not have: its layers are "
                           f"{_values(hw)}.")
    if not is_custom_op(node.domain, node.op_type):
        raise BnnflowError(f"{source} sets attributes on '{_q(name)}' ({node.op_type}), which is not a FINN HW "
                           f"layer and has none: the HW layers are {_values(hw)}.")
    inst = getCustomOp(node)
    types = inst.get_nodeattr_types()
    for attr, value in entry.items():
        if attr not in types:
            raise BnnflowError(f"{source}: layer '{name}' ({node.op_type}) has no attribute '{_q(attr)}'; its "
                               f"attributes are {_values(types)}.")
        _check_value(inst, node, name, attr, value, source, uram)
        try:
            inst.set_nodeattr(attr, value)
        except Exception as exc:  # noqa: BLE001 - qonnx's own type/value check
            raise BnnflowError(f"{source}: {_q(attr)}={json.dumps(value)} on layer '{_q(name)}' is refused by FINN "
                               f"({str(exc).rstrip('.')}).") from None


def _check_value(inst, node, name: str, attr: str, value, source: str, uram: int | None) -> None:
    dtype, _, _, allowed = inst.get_nodeattr_def(attr)
    if not _type_ok(dtype, value):
        raise BnnflowError(f"{source}: {_q(attr)}={json.dumps(value)} on layer '{_q(name)}' must be "
                           f"{_TYPE_WORDS.get(dtype, dtype)}.")
    if allowed is not None and value not in allowed:
        raise BnnflowError(f"{source}: {_q(attr)}={json.dumps(value)} on layer '{_q(name)}' ({node.op_type}) is "
                           f"not supported there; allowed: {_values(allowed)}.")
    if attr in FOLD_ATTRS and value < 1:
        raise BnnflowError(f"{source}: {attr}={value} on layer '{_q(name)}' must be a positive integer.")
    if attr in FIFO_ATTRS and any(d < 1 for d in value):
        raise BnnflowError(f"{source}: {attr}={value} on layer '{_q(name)}' must hold positive FIFO depths.")
    if attr.startswith("ram_style") and value == "ultra" and uram == 0:
        raise BnnflowError(f"{source}: {attr}=\"ultra\" on layer '{_q(name)}' needs UltraRAM, which this "
                           "board's FPGA does not have; use \"block\", \"distributed\" or \"auto\".")


def _apply_defaults(model: ModelWrapper, config: dict, source: str) -> ModelWrapper:
    from finn.transformation.general import ApplyConfig

    try:
        return model.transform(ApplyConfig(config))
    except Exception as exc:  # noqa: BLE001
        raise BnnflowError(f"{source}: its Defaults cannot be applied ({str(exc).rstrip('.')}).") from None


def _check_shapes(model: ModelWrapper, node, entry: dict, source: str) -> None:
    """The layer's PE/SIMD fold its shapes; otherwise name the allowed values of the first bad one."""
    inst, name = getCustomOp(node), node.name
    if _shapes_ok(inst, model):
        if _base_op(node.op_type) == "ConvolutionInputGenerator" and inst.get_nodeattr("parallel_window") \
                and inst.get_nodeattr("SIMD") != inst.get_nodeattr("IFMChannels"):
            raise BnnflowError(f"{source}: layer '{name}' has parallel_window=1, which needs SIMD equal to its "
                               f"{inst.get_nodeattr('IFMChannels')} input channels, not "
                               f"SIMD={inst.get_nodeattr('SIMD')}.")
        if node.op_type == "MVAU_hls" and inst.get_nodeattr("SIMD") < hls_mvau_min_simd(inst.get_nodeattr("MW")):
            mw = inst.get_nodeattr("MW")
            legal = [v for v in _legal(inst, model, "SIMD", ["SIMD"]) if v >= hls_mvau_min_simd(mw)]
            raise BnnflowError(f"{source}: SIMD={inst.get_nodeattr('SIMD')} on layer '{_q(name)}' (MVAU_hls, "
                               f"MW={mw}) is below FINN's HLS limit SIMD >= MW / 1024; allowed SIMD values are "
                               f"{_values(legal) or 'none'}.")
        return
    attrs = [a for a in FOLD_ATTRS if a in inst.get_nodeattr_types()]
    for attr in sorted(attrs, key=lambda a: a not in entry):
        legal = _legal(inst, model, attr, attrs)
        if inst.get_nodeattr(attr) not in legal:
            dim = FOLD_DIMS.get((_base_op(node.op_type), attr))
            why = f" (the divisors of {dim}={inst.get_nodeattr(dim)})" if dim else ""
            raise BnnflowError(f"{source}: {attr}={inst.get_nodeattr(attr)} on layer '{_q(name)}' "
                               f"({node.op_type}) does not divide its channels; allowed {attr} values "
                               f"are {_values(legal) or 'none'}{why}.")
    raise BnnflowError(f"{source}: FINN cannot fold layer '{name}' ({node.op_type}) with "
                       f"{', '.join(f'{a}={inst.get_nodeattr(a)}' for a in attrs) or 'these attributes'}: "
                       "choose PE/SIMD values that divide its channel counts.")


def uram_of_part(part: str) -> int | None:
    from bnnflow.hw.boards import BOARDS

    counts = {b.uram for b in BOARDS.values() if b.part == part}
    return counts.pop() if len(counts) == 1 else None


def check_folding_file(model: ModelWrapper, path: Path, part: str | None = None) -> dict:
    """Load `path` and check it against `model`; the config on success."""
    config = load_folding_json(path)
    check_folding(model, config, f"Folding config {Path(path).name}", uram_of_part(part) if part else None)
    return config
