"""Every work-around for the pinned third-party stack, in one place.

* Brevitas 0.13 strips named-tensor names with `Tensor.rename(None)`; torch 2.13 removed
  named tensors, so `rename` no longer exists.
* finn-plus 1.6.1 (all upstream bugs, reported in our notes):
  - `finn.builder.build_dataflow_steps` imports `finn.xsi.SimEngine` at import time, which
    raises unless XILINX_VIVADO is set;
  - FINN's global settings must be initialised and FINN_BUILD_DIR must exist before any
    transformation that generates code;
  - `MinimizeAccumulatorWidth` sizes XNOR-mode MVAU accumulators from the bipolar dot-product
    range although their thresholds live in the popcount range [0, MW]
    (see `fix_xnor_accumulators`);
  - psutil is used but not declared (requirements/runtime.lock pins it);
  - cppsim without Vitis HLS (build_flows/cppsim.py, hls_sources.py): `compile_singlenode_code` links four
    Vitis csim libraries unconditionally although no integer layer uses them
    (`write_cppsim_stub_libs`); it writes `-I$FINN_CUSTOM_HLS` unquoted into compile.sh, which
    swallows the next -I when the variable is unset (`finn_custom_hls_env`); it hard-codes
    `-fno-builtin -fno-inline`, which makes the binaries several times slower (`cppsim_fast_flags`,
    outputs identical, tested); `HLSBackend.execute_node` packs every input into rtlsim's integer
    stream in cppsim mode too, where nothing reads it, and that packing was most of a cppsim image
    (`cppsim_without_rtlsim_packing`, outputs identical, tested);
  - its weight and threshold files are packed by `array2hexstring` with a BitArray appended per
    element, most of `hw_codegen` (`speed_up_finn_packing`: NumPy for integer datatypes, same strings,
    tested).
* qonnx 1.0.0 renames and sorts graphs in O(nodes^2) (a linear scan per tensor / per node),
  run after every transformation; on a 12-block ResNetE streamlining spends most of its time
  there. Its ComposedTransformation (FINN's StreamlinePlus) also re-runs the whole cleanup
  (shape and datatype inference, renaming, sorting) after every member transformation, even
  one that changed nothing. `speed_up_qonnx` swaps in linear-time versions and skips the
  cleanup of an unchanged, already clean graph; results are byte-identical (tested), and
  streamlining a ResNetE is ~2.5x faster. Two more quadratic scans run on every graph: the shape
  check of every ModelWrapper made (a value-info scan per tensor) and GiveUniqueParameterTensors (an
  initializer scan, converting it to an array, per node input); both get linear versions too, and
  InferDataTypes (an annotation scan per node input and output) reads an index of the annotations.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

if not hasattr(torch.Tensor, "rename"):
    # Brevitas only ever calls rename(None), i.e. "drop the names": the identity on torch 2.13.
    torch.Tensor.rename = lambda self, *names, **kw: self  # type: ignore[attr-defined]

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
warnings.filterwarnings("ignore", module="brevitas")
warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")

_FINN_READY = False


def vivado_root() -> str | None:
    """XILINX_VIVADO if it points at an installed Vivado, else None."""
    root = os.environ.get("XILINX_VIVADO")
    return root if root and Path(root).is_dir() else None


def finn_ready(build_dir: str | os.PathLike | None = None) -> None:
    """Make finn-plus importable and usable outside its CLI; idempotent."""
    global _FINN_READY
    if build_dir is None:
        build_dir = os.environ.get("FINN_BUILD_DIR") or Path(tempfile.gettempdir()) / "bnnflow_finn_build"
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    os.environ["FINN_BUILD_DIR"] = str(build_dir)
    if _FINN_READY:
        return
    if vivado_root() is None and "finn.builder.build_dataflow_steps" not in sys.modules:
        import finn.xsi

        # SimEngine is only a type annotation there; without Vivado it cannot exist
        # (the module's __getattr__ raises), so bind a placeholder before the import.
        finn.xsi.SimEngine = None
    if os.environ.get("BNNFLOW_QONNX_AS_IS") != "1":
        speed_up_qonnx()
        speed_up_finn_packing()
    import finn.util.settings as settings

    if settings._SETTINGS is None:
        cwd = os.getcwd()
        try:  # the dummy settings resolve paths relative to the working directory
            os.chdir(build_dir)
            settings.initialize_dummy_settings()
        finally:
            os.chdir(cwd)
    _FINN_READY = True


def _rename_all(model, mapping: dict[str, str]) -> None:
    """Rename many tensors in one pass over the graph (qonnx's rename_tensor scans it per tensor)."""
    if not mapping:
        return
    graph = model.graph
    for container in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in container:
            if item.name in mapping:
                item.name = mapping[item.name]
    for ann in graph.quantization_annotation:
        if ann.tensor_name in mapping:
            ann.tensor_name = mapping[ann.tensor_name]
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name in mapping:
                    field[i] = mapping[name]


def _unique_tensor_names(self, model):
    names = model.get_all_tensor_names()
    _rename_all(model, {name: f"tensor_{i}" for i, name in enumerate(names)})
    return model, False


def _readable_tensor_names(self, model):
    from qonnx.transformation.general import GiveUniqueTensorNames

    model = model.transform(GiveUniqueTensorNames())
    graph = model.graph
    inits = {init.name for init in graph.initializer}
    mapping: dict[str, str] = {}
    for node in graph.node:
        assert node.name != "", "Found empty node name"
        for k, out in enumerate(node.output):
            mapping[out] = f"{node.name}_out{k}"
        j = 0
        for inp in node.input:
            if inp in inits:
                mapping[inp] = f"{node.name}_param{j}"
                j += 1
    for k, inp in enumerate(graph.input):
        mapping[inp.name] = "global_in" if k == 0 else f"global_in_{k}"
    for k, out in enumerate(graph.output):
        mapping[out.name] = "global_out" if k == 0 else f"global_out_{k}"
    _rename_all(model, mapping)
    return model, False


def _sort_graph(self, model):
    from toposort import toposort_flatten

    nodes = list(model.graph.node)
    if len(nodes) == 1:
        return model, False
    producer: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        for out in node.output:
            producer.setdefault(out, idx)  # qonnx's find_producer returns the first
    sources = {init.name for init in model.graph.initializer} | {inp.name for inp in model.graph.input}
    deps: dict[int, set[int]] = {}
    for idx, node in enumerate(nodes):
        preds = {producer[i] for i in node.input if i in producer}
        if preds:
            deps[idx] = preds
        elif any(i in sources for i in node.input if i):
            deps[idx] = set()
        # nodes with neither are dropped, as qonnx's SortGraph does
    order = toposort_flatten(deps)
    for node in nodes:
        model.graph.node.remove(node)
    for new_idx, idx in enumerate(order):
        model.graph.node.insert(new_idx, nodes[idx])
    return model, False


def _unique_parameter_tensors(self, model):
    """qonnx's GiveUniqueParameterTensors with a set of initializer names instead of a lookup per input."""
    graph = model.graph
    params = {init.name for init in graph.initializer}
    seen: set[str] = set()
    for node in graph.node:
        for idx, name in enumerate(list(node.input)):
            if name not in params:
                continue
            if name not in seen:
                seen.add(name)
                continue
            new_name = model.make_new_valueinfo_name()
            model.set_initializer(new_name, model.get_initializer(name))
            model.set_tensor_datatype(new_name, model.get_tensor_datatype(name))
            node.input[idx] = new_name
    return model, False


def _all_tensor_shapes_specified(self, fix_missing_init_shape: bool = False) -> bool:
    """ModelWrapper.check_all_tensor_shapes_specified with one pass over the value infos: a tensor with
    exactly one has a shape; every other tensor goes through qonnx's own lookup (initializer fallback,
    the fix, the duplicate assertion), as before."""
    from collections import Counter

    graph = self._model_proto.graph
    infos = Counter(vi.name for part in (graph.input, graph.output, graph.value_info) for vi in part)
    ret = True
    for node in graph.node:
        for name in [i for i in node.input if i != ""] + list(node.output):
            if infos[name] != 1:
                ret = self.get_tensor_shape(name, fix_missing_init_shape=fix_missing_init_shape) is not None and ret
    return ret


def _infer_datatypes(self, model):
    """qonnx's InferDataTypes.apply with the datatype lookups it makes per node input and output answered
    from an index of the quantization annotations (built once, kept up by every set); tensors without an
    annotation, and graphs that annotate a tensor twice, go through qonnx's own lookups."""
    from qonnx.core.datatype import DataType
    from qonnx.util.basic import get_by_name

    original = ORIGINALS["InferDataTypes"]
    annotations = model.graph.quantization_annotation
    index = {}
    for ann in annotations:
        if index.setdefault(ann.tensor_name, ann) is not ann:
            return original(self, model)
    cls = type(model)

    def get_datatype(name):
        ann = index.get(name)
        entry = None if ann is None else get_by_name(ann.quant_parameter_tensor_names, "finn_datatype", "key")
        return DataType[entry.value] if entry is not None else cls.get_tensor_datatype(model, name)

    def set_datatype(name, datatype):
        cls.set_tensor_datatype(model, name, datatype)  # appends a new annotation at the end
        if name not in index and len(annotations) and annotations[-1].tensor_name == name:
            index[name] = annotations[-1]

    model.get_tensor_datatype, model.set_tensor_datatype = get_datatype, set_datatype
    try:
        return original(self, model)
    finally:
        del model.get_tensor_datatype, model.set_tensor_datatype


def _composed_apply(self, model):
    """qonnx's ComposedTransformation.apply, minus the cleanup of graphs nothing changed.

    The first member always cleans up (the incoming graph may not be clean); after that a
    member that reports no change and left the graph equal to its input is not followed by
    the cleanup, which would reproduce the same (already clean) graph.
    """
    import copy

    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.remove import RemoveIdentityOps

    graph_modified = False
    clean = False
    for transformation in self.transformations:
        before = model
        model = copy.deepcopy(model)
        changed = False
        while True:
            model, step_changed = transformation.apply(model)
            changed = changed or step_changed
            if not step_changed:
                break
        graph_modified = graph_modified or changed
        if clean and not changed and model.model == before.model:
            continue
        model.cleanup()
        model = model.transform(RemoveIdentityOps())
        model = model.transform(GiveUniqueNodeNames())
        model = model.transform(GiveReadableTensorNames())
        model = model.transform(InferShapes())
        model = model.transform(InferDataTypes())
        clean = True
    return model, graph_modified


ORIGINALS: dict = {}  # the replaced qonnx/FINN functions, kept for the equivalence tests


def speed_up_qonnx() -> None:
    """Linear-time versions of qonnx's quadratic passes and lookups (same results, see module docstring)."""
    import qonnx.transformation.composed as composed
    import qonnx.transformation.general as general
    import qonnx.transformation.infer_datatypes as infer_datatypes
    from qonnx.core.modelwrapper import ModelWrapper

    for cls in (general.GiveUniqueTensorNames, general.GiveReadableTensorNames, general.SortGraph,
                general.GiveUniqueParameterTensors):
        ORIGINALS.setdefault(cls.__name__, cls.apply)
    general.GiveUniqueTensorNames.apply = _unique_tensor_names
    general.GiveReadableTensorNames.apply = _readable_tensor_names
    general.SortGraph.apply = _sort_graph
    general.GiveUniqueParameterTensors.apply = _unique_parameter_tensors
    ORIGINALS.setdefault("InferDataTypes", infer_datatypes.InferDataTypes.apply)
    infer_datatypes.InferDataTypes.apply = _infer_datatypes
    ORIGINALS.setdefault("check_all_tensor_shapes_specified", ModelWrapper.check_all_tensor_shapes_specified)
    ModelWrapper.check_all_tensor_shapes_specified = _all_tensor_shapes_specified
    ORIGINALS.setdefault("ComposedTransformation", composed.ComposedTransformation.apply)
    composed.ComposedTransformation.apply = _composed_apply


def _array2hexstring(array, dtype, pad_to_nbits, prefix="0x", reverse=False):
    """finn's array2hexstring for integer and bipolar datatypes, the bits packed by NumPy instead of a
    BitArray appended per element; other datatypes, and widths that are no whole hex digits, go to FINN's."""
    import numpy as np
    from qonnx.core.datatype import BipolarType, DataType, IntType

    def finns():
        return ORIGINALS["array2hexstring"](array, dtype, pad_to_nbits, prefix=prefix, reverse=reverse)

    pad = max(pad_to_nbits, 4)
    fast = (type(dtype) is IntType and dtype.bitwidth() <= 62) or type(dtype) is BipolarType
    if not fast or pad % 4:
        return finns()
    row, dt = array, dtype
    if type(row) is not np.ndarray or row.dtype != np.float32:
        row = np.asarray(row, dtype=np.float32)
    assert row.ndim == 1, "The given array is not one-dimensional."
    if type(dt) is BipolarType:
        row, dt = (row + 1) / 2, DataType["BINARY"]
    if reverse:
        row = np.flip(row, -1)
    # a value FINN refuses (float32 may also round past the range): its own error, in its order
    if not np.all(dt.allowed(row)):
        return finns()
    values = row.astype(np.int64)
    if values.size and (values.min() < dt.min() or values.max() > dt.max()):
        return finns()
    bw = dt.bitwidth()
    if len(values) * bw > pad:
        raise Exception("Number of bits is greater than pad_to_nbits")
    # element 0 most significant, each two's complement at bw bits, zeros in front up to pad (+4 to whole bytes)
    values &= (1 << bw) - 1
    bits = ((values[:, None] >> np.arange(bw - 1, -1, -1, dtype=np.int64)) & 1).astype(np.uint8).reshape(-1)
    lead = pad - len(bits) + pad % 8
    digits = np.packbits(np.concatenate([np.zeros(lead, np.uint8), bits])).tobytes().hex()
    return prefix + digits[(pad % 8) // 4:]


def speed_up_finn_packing() -> None:
    """FINN's weight and threshold files are packed row by row with array2hexstring (`pack_innermost_dim_as_hex_string`
    looks it up at every call), a BitArray append per element: most of hw_codegen. Same strings (tested)."""
    import finn.util.data_packing as data_packing

    ORIGINALS.setdefault("array2hexstring", data_packing.array2hexstring)
    data_packing.array2hexstring = _array2hexstring


def set_finn_build_dir(path: str | os.PathLike) -> Path:
    """Point FINN's generated code (HLS/RTL sources, IP) at `path`; its settings cache the folder."""
    from finn.util.settings import get_settings

    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    get_settings().finn_build_dir = path
    os.environ["FINN_BUILD_DIR"] = str(path)
    return path


def xnor_accumulator_bits(mw: int) -> int:
    """Unsigned bits that hold every popcount of an MW-wide XNOR dot product."""
    return max(1, math.ceil(math.log2(mw + 1)))


def fix_xnor_accumulators(model):
    """Re-size XNOR-mode MVAU accumulators to UINT(ceil(log2(MW+1))) (finn-plus 1.6.1 bug).

    `MinimizeAccumulatorWidth` uses the bipolar dot-product range, e.g. INT8 for MW=216,
    while the thresholds are popcounts in [0, MW]; `RoundAndClipThresholds` then clips
    them and results go wrong.
    """
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        if not node.op_type.startswith("MVAU"):
            continue
        inst = getCustomOp(node)
        if not inst.get_nodeattr("binaryXnorMode"):
            continue
        mw = inst.get_nodeattr("MW")
        acc = DataType[f"UINT{xnor_accumulator_bits(mw)}"]
        inst.set_nodeattr("accDataType", acc.name)
        if inst.get_nodeattr("noActivation"):
            inst.set_nodeattr("outputDataType", acc.name)
            model.set_tensor_datatype(node.output[0], acc)
        thresholds = model.get_initializer(node.input[2]) if len(node.input) > 2 else None
        if thresholds is not None:
            model.set_tensor_datatype(node.input[2], acc)
    return model


def which(tool: str) -> str | None:
    return shutil.which(tool)


# ------------------------------------------------------------------ cppsim without Vitis HLS (finn-plus 1.6.1)

# The Vitis csim libraries FINN's compile_singlenode_code links (-l...) whatever the node: relative to
# XILINX_HLS. Its cppsim template defines HLS_NO_XIL_FPO_LIB and no integer/binary layer references a
# symbol in them, so empty archives satisfy the linker.
CPPSIM_STUB_LIBS = ("lnx64/lib/csim/libhlsmc++-GCC46.a",
                    "lnx64/tools/fpo_v7_1/libgmp.a",
                    "lnx64/tools/fpo_v7_1/libmpfr.a",
                    "lnx64/tools/fpo_v7_1/libIp_floating_point_v7_1_bitacc_cmodel.a")
EMPTY_ARCHIVE = b"!<arch>\n"  # an ar archive with no members


def write_cppsim_stub_libs(xilinx_hls: str | os.PathLike) -> list[Path]:
    """Empty archives in a stand-in XILINX_HLS for the libraries FINN links into every cppsim binary."""
    out = []
    for rel in CPPSIM_STUB_LIBS:
        p = Path(xilinx_hls) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(EMPTY_ARCHIVE)
        out.append(p)
    return out


def finn_custom_hls_env(finn_root: str | os.PathLike) -> dict[str, str]:
    """FINN_CUSTOM_HLS for cppsim: finn-plus writes `-I$FINN_CUSTOM_HLS` unquoted into compile.sh, and
    only its CLI sets the variable; unset, g++ takes the next -I (XILINX_HLS's include folder) as the
    argument of the bare -I and then cannot find ap_int.h. Keeps a value the user set."""
    return {"FINN_CUSTOM_HLS": os.environ.get("FINN_CUSTOM_HLS") or str(Path(finn_root) / "custom_hls")}


SLOW_CPPSIM_FLAGS = "-fno-builtin -fno-inline"  # what finn-plus appends to every cppsim compile


@contextlib.contextmanager
def cppsim_fast_flags(enabled: bool = True):
    """While inside (and enabled), FINN's CppBuilder compiles without `-fno-builtin -fno-inline`.

    finn-plus hard-codes them in HLSBackend.compile_singlenode_code; with them every ap_int operation
    is a call (a CNV-W1A1 image took 26 s instead of 10 s in the probe of
    ../shared/notes/vendor-free-sim.md). The C++ is the same and so are the outputs (tests/test_sim.py
    compares both builds of four nodes on real activations). compile.sh in each node's folder records
    the command actually run."""
    if not enabled:
        yield
        return
    from finn.util.basic import CppBuilder

    original = CppBuilder.build

    def build(self, code_gen_dir):
        self.include_paths = [p for p in self.include_paths if p.strip() != SLOW_CPPSIM_FLAGS]
        return original(self, code_gen_dir)

    CppBuilder.build = build
    try:
        yield
    finally:
        CppBuilder.build = original


@contextlib.contextmanager
def cppsim_without_rtlsim_packing(enabled: bool = True):
    """While inside (and enabled), FINN's HLSBackend.execute_node in cppsim mode skips
    `npy_to_rtlsim_input`, whose result only its rtlsim branch reads.

    finn-plus packs each input word into a hex string in Python whatever the mode; on BinaryDenseNet
    default that was 52 s of the 73 s one image took through cppsim (cProfile). Nodes in rtlsim mode
    run unchanged. The binaries read the same .npy files, so the outputs are the same
    (tests/test_sim.py runs an image both ways)."""
    if not enabled:
        yield
        return
    from finn.custom_op.fpgadataflow import hlsbackend

    original = hlsbackend.HLSBackend.execute_node

    def execute_node(self, context, graph):
        if self.get_nodeattr("exec_mode") != "cppsim":
            return original(self, context, graph)
        packing = hlsbackend.npy_to_rtlsim_input
        hlsbackend.npy_to_rtlsim_input = lambda *args, **kwargs: None
        try:
            return original(self, context, graph)
        finally:
            hlsbackend.npy_to_rtlsim_input = packing

    hlsbackend.HLSBackend.execute_node = execute_node
    try:
        yield
    finally:
        hlsbackend.HLSBackend.execute_node = original
