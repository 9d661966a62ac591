"""Export a Brevitas model to QONNX, the input of the FINN flow."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch
from brevitas.export import export_qonnx
from torch import nn

from bnnflow.atomic import atomic_path
from bnnflow.images import CHANNELS, IMAGE_SIZE

INPUT_SHAPE = (1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)  # raw 8-bit pixels, NCHW


def export_model(net: nn.Module, path: str | Path) -> Path:
    """Write `net` (eval mode) as a QONNX model at `path`, atomically."""
    net = net.eval()
    path = Path(path)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with atomic_path(path) as tmp:
        onnx_tmp = tmp.with_suffix(".onnx")
        # the dynamo exporter writes the weights beside the file; Brevitas reads them back into it
        weights_tmp = onnx_tmp.with_name(onnx_tmp.name + ".data")
        try:
            # the dynamo exporter narrates every phase on stdout
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                export_qonnx(net, input_t=torch.zeros(INPUT_SHAPE), export_path=str(onnx_tmp))
            _self_contained(onnx_tmp, tmp)
        finally:
            onnx_tmp.unlink(missing_ok=True)
            weights_tmp.unlink(missing_ok=True)
    return path


def _self_contained(exported: Path, target: Path) -> None:
    """Move the exported file to `target` with every weight inside it, so no side file is left behind."""
    import onnx

    model = onnx.load(str(exported), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.save(onnx.load(str(exported)), str(target))
    else:
        exported.replace(target)
