"""Graph transformations FINN lacks for binary ResNetE / BinaryDenseNet.

Both handle the -1 padding of binary activations (see models/quantizers.BipolarPad).
"""

from __future__ import annotations

import numpy as np
from qonnx.core.datatype import DataType
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation
from qonnx.util.basic import get_by_name


def _const_pad(model, node):
    """(pads NCHW-begin-end list, value) of a constant ONNX Pad node, or None."""
    if len(node.input) < 2 or model.get_initializer(node.input[1]) is None:
        return None
    mode = get_by_name(node.attribute, "mode")
    if mode is not None and mode.s.decode() != "constant":
        return None
    pads = [int(p) for p in model.get_initializer(node.input[1]).flatten()]
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        init = model.get_initializer(node.input[2])
        if init is None:
            return None
        value = float(np.asarray(init).flatten()[0])
    if len(node.input) > 3 and node.input[3]:
        return None  # explicit axes: not produced by our exporter
    return pads, value


class FoldPadIntoIm2Col(Transformation):
    """Pad(x, value) -> Transpose(NCHW->NHWC) -> Im2Col becomes Transpose -> Im2Col(pad_amount, pad_value).

    FINN's InferFMPadding only accepts zero padding; the sliding-window generator pads with
    any constant, so the -1 pad of a binary activation is carried exactly.
    """

    def apply(self, model):
        for node in model.graph.node:
            if node.op_type != "Pad":
                continue
            spec = _const_pad(model, node)
            consumers = model.find_consumers(node.output[0]) or []
            if spec is None or len(consumers) != 1 or consumers[0].op_type != "Transpose":
                continue
            transpose = consumers[0]
            im2cols = model.find_consumers(transpose.output[0]) or []
            if len(im2cols) != 1 or im2cols[0].op_type != "Im2Col":
                continue
            pads, value = spec
            n = len(pads) // 2
            begin, end = pads[:n], pads[n:]
            if any(begin[:2]) or any(end[:2]) or value != int(value):
                continue  # batch/channel padding or a non-integer value cannot fold
            im2col = getCustomOp(im2cols[0])
            old = im2col.get_nodeattr("pad_amount")
            if any(old):
                continue
            # Im2Col pad_amount is [H_begin, W_begin, H_end, W_end]
            im2col.set_nodeattr("pad_amount", [begin[2], begin[3], end[2], end[3]])
            im2col.set_nodeattr("pad_value", int(value))
            old_shape = model.get_tensor_shape(node.input[0])
            transpose.input[0] = node.input[0]
            nchw = model.get_tensor_shape(transpose.output[0])
            model.set_tensor_shape(transpose.output[0], [nchw[0], old_shape[2], old_shape[3], nchw[3]])
            ifm = im2col.get_nodeattr("input_shape")
            ifm_list = list(eval(ifm)) if isinstance(ifm, str) else list(ifm)
            ifm_list[1], ifm_list[2] = old_shape[2], old_shape[3]
            im2col.set_nodeattr("input_shape", str(tuple(ifm_list)))
            model.graph.node.remove(node)
            return model, True
        return model, False


class BinaryPadValueToZero(Transformation):
    """An Im2Col that pads a BINARY ({0,1}) input with -1 must pad with 0: the XNOR encoding of -1."""

    def apply(self, model):
        changed = False
        for node in model.graph.node:
            if node.op_type not in ("Im2Col", "ConvolutionInputGenerator"):
                continue
            inst = getCustomOp(node)
            if node.op_type == "Im2Col" and inst.get_nodeattr("pad_value") == -1:
                if model.get_tensor_datatype(node.input[0]) == DataType["BINARY"]:
                    inst.set_nodeattr("pad_value", 0)
                    changed = True
        return model, changed
