"""Two networks the project did not write, from Brevitas' brevitas_examples (bnn_pynq, trained on 0..1
pixels: --input-scale unit): the CNV-W1A1 and a CIFAR-10-shaped FC, named as a user names them on the
command line, and exported to QONNX as a user would (tests/test_user_models.py, tests/test_user_onnx.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CNV_REF = "brevitas_examples.bnn_pynq.models:cnv_1w1a"
CNV_ARGS = ["--model-args", '{"pretrained": false}', "--input-scale", "unit"]
FC_REF = "brevitas_examples.bnn_pynq.models.FC:FC"
FC_ARGS = ["--model-args", json.dumps({"num_classes": 10, "weight_bit_width": 1, "act_bit_width": 1,
                                       "in_bit_width": 1, "in_channels": 3, "out_features": [64, 64],
                                       "in_features": [3, 32, 32]}), "--input-scale", "unit"]
OUTSIDE = {"cnv": (CNV_REF, CNV_ARGS), "fc": (FC_REF, FC_ARGS)}


def export_outside(name: str, path: Path, images: np.ndarray, seed: int = 0) -> Path:
    """The network with random weights, batch norms calibrated on `images` (real CIFAR-10, raw uint8 NHWC) and
    ties moved off the grid (what a trained network looks like), exported by Brevitas' own export_qonnx on
    0..1 inputs: the QONNX file a user of brevitas_examples brings."""
    import torch
    from brevitas.export import export_qonnx

    from bnnflow.models.checkpoint import calibrate
    from bnnflow.models.tie_guard import guard_rounding_ties
    from bnnflow.models.user_model import build_user_network

    ref, args = OUTSIDE[name]
    torch.manual_seed(seed)
    net = build_user_network(ref, args[1], "unit")  # the factory's network behind a 1/255 pixel scale
    calibrate(net, images, seed=seed)
    guard_rounding_ties(net)
    export_qonnx(net.net.eval(), input_t=torch.zeros(1, 3, 32, 32), export_path=str(path))
    return path


def check_package_predictions(package: Path, build: Path) -> None:
    """The classes the package's driver gives its test images (off board, through the packed streams) are the
    top-1 of the build's QONNX graph on the same raw pixels: the driver feeds the hardware its pixels in the
    order the graph takes them (channels last after a conv, channels first for an FC net)."""
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.verify import run_qonnx
    from bnnflow.images import nchw_float

    with np.load(package / "test_images.npz") as d:
        x, expected = d["x"], d["expected"]
    logits = run_qonnx(build / flow.QONNX_FILE, nchw_float(x))
    assert (logits[np.arange(len(x)), expected] == logits.max(axis=1)).all(), (expected, logits.argmax(axis=1))
