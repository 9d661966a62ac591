"""The image format every bnnflow stage agrees on: CIFAR-10's 32 x 32 RGB, uint8 pixels.

Data and the hardware are channels-last (N x H x W x C, what the board's DMA streams); PyTorch,
QONNX and the FINN graphs before the dataflow partition are channels-first (N x C x H x W).
numpy only, so every layer of the project can use it.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32
CHANNELS = 3
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)  # H x W x C, as loaded and as the hardware takes them


def nchw_float(x_nhwc: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C images -> contiguous float32 N x C x H x W (raw 0..255 pixel values)."""
    return np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)).astype(np.float32)


def nhwc(x_nchw: np.ndarray) -> np.ndarray:
    """N x C x H x W -> N x H x W x C (a view)."""
    return x_nchw.transpose(0, 2, 3, 1)
