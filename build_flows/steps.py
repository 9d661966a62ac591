"""bnnflow's custom FINN build steps, each with FINN's signature step(model, cfg) -> model.

The recipe (checked on ResNetE, BinaryDenseNet and CNV): StreamlinePlus moves the shared
stream scales past the residual Adds and the Concats; the -1 padding of binary activations is
folded into the sliding-window generator; XNOR-mode accumulators are re-sized after FINN's
bit-width minimisation (an upstream bug, see bnnflow.compat).
"""

from __future__ import annotations

import json

from qonnx.core.datatype import DataType
from qonnx.transformation.bipolar_to_xnor import ConvertBipolarMatMulToXnorPopcount
from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames, RemoveUnusedTensors
from qonnx.transformation.infer_data_layouts import InferDataLayouts
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.transformation.insert_topk import InsertTopK
from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

from bnnflow import compat

compat.finn_ready()

import finn.transformation.streamline.absorb as absorb  # noqa: E402
from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer  # noqa: E402
from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth  # noqa: E402
from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth  # noqa: E402
from finn.transformation.streamline.reorder import MakeMaxPoolNHWC  # noqa: E402
from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds  # noqa: E402
from finn.transformation.streamline.streamline_plus import StreamlinePlus  # noqa: E402

from .transforms import BinaryPadValueToZero, FoldPadIntoIm2Col  # noqa: E402

LOGIT_AFFINE_KEY = "bnnflow_logit_affine"


def _logit_affine(model) -> tuple[float, float]:
    """(a, b) with logits = a * L + b, L being the input of the scalar Mul/Add chain before TopK."""
    a, b = 1.0, 0.0
    node = model.find_producer(model.get_nodes_by_op_type("TopK")[0].input[0])
    while node is not None and node.op_type in ("Mul", "Add"):
        c = model.get_initializer(node.input[1])
        if c is None or c.size != 1:
            break
        c = float(c.flatten()[0])
        if node.op_type == "Mul":
            a *= c
        else:
            b += a * c
        node = model.find_producer(node.input[0])
    return a, b


def step_set_input_uint8(model, cfg):
    """The accelerator takes raw 8-bit pixels (the models are trained on them)."""
    model.set_tensor_datatype(model.graph.input[0].name, DataType["UINT8"])
    return model


def step_bnn_streamline(model, cfg):
    """Streamline to an integer graph: thresholds, XNOR-popcount matmuls, integer adds/concats."""
    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold())
    model = model.transform(StreamlinePlus())
    model = model.transform(LowerConvsToMatMul())
    model = model.transform(FoldPadIntoIm2Col())
    model = model.transform(MakeMaxPoolNHWC())
    model = model.transform(StreamlinePlus())
    model = model.transform(MakeMaxPoolNHWC())
    model = model.transform(absorb.AbsorbConsecutiveTransposes())
    model = model.transform(ConvertBipolarMatMulToXnorPopcount())
    model = model.transform(BinaryPadValueToZero())
    model = model.transform(StreamlinePlus())
    if model.get_nodes_by_op_type("GlobalAveragePool"):
        model = model.transform(InferGlobalAccPoolLayer())
        model = model.transform(StreamlinePlus())
    model = model.transform(RoundAndClipThresholds())
    return model


def step_insert_topk(model, cfg):
    """Top-1 in hardware; the classifier's scalar scale is absorbed (and recorded for verify)."""
    model = model.transform(InsertTopK(k=1))
    scale, bias = _logit_affine(model)
    model = model.transform(absorb.AbsorbScalarMulAddIntoTopK())
    if _logit_affine(model) != (1.0, 0.0):
        scale, bias = 1.0, 0.0  # not absorbed: the graph still outputs the float logits
    model.set_metadata_prop(LOGIT_AFFINE_KEY, json.dumps([scale, bias]))
    model = model.transform(InferShapes())
    model = model.transform(InferDataTypes())
    model = model.transform(InferDataLayouts())
    model = model.transform(RemoveUnusedTensors())
    model = model.transform(GiveUniqueNodeNames())
    model = model.transform(GiveReadableTensorNames())
    return model


def step_target_fps_parallelization(model, cfg):
    """FINN's target-FPS folding, then each MVAU_hls raised to the least SIMD dividing MW that its HLS code
    generation accepts (SIMD >= MW / 1024): SetFolding ignores that limit, so a wide classifier input (a
    user's FC net, MW 3072) folded fine and then failed in hw_codegen."""
    import finn.builder.build_dataflow_steps as finn_steps
    from qonnx.custom_op.registry import getCustomOp

    from .folding_check import hls_mvau_min_simd

    model = finn_steps.step_target_fps_parallelization(model, cfg)
    raised = {}
    for node in model.get_nodes_by_op_type("MVAU_hls"):
        inst = getCustomOp(node)
        mw, simd = inst.get_nodeattr("MW"), inst.get_nodeattr("SIMD")
        if simd < hls_mvau_min_simd(mw):
            raised[node.name] = next(d for d in range(hls_mvau_min_simd(mw), mw + 1) if mw % d == 0)
            inst.set_nodeattr("SIMD", raised[node.name])
    report = cfg.get_report_directory() / "auto_folding_config.json"
    if raised and report.is_file():  # the folding FINN wrote out is the folding built
        config = json.loads(report.read_text())
        for name, simd in raised.items():
            config.setdefault(name, {})["SIMD"] = simd
        report.write_text(json.dumps(config, indent=2))
    return model


def step_minimize_bit_width_xnor_safe(model, cfg):
    """FINN's bit-width minimisation with XNOR accumulators sized from the popcount range."""
    model = model.transform(MinimizeWeightBitWidth())
    model = model.transform(MinimizeAccumulatorWidth())
    model = compat.fix_xnor_accumulators(model)
    model = model.transform(InferDataTypes())
    model = model.transform(RoundAndClipThresholds())
    model = model.transform(InferDataTypes())
    model = model.transform(MinimizeWeightBitWidth())
    model = model.transform(InferDataTypes())
    return model
