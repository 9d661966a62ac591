"""A user's own images and labels for `bnnflow verify --data FILE.npz`: keys x (uint8 N x H x W x C,
the raw pixels the board will stream) and y (integer labels, one per image).

Checked in two passes, each problem one sentence: the file on its own (before anything is built),
then against the network once its input shape and class count are known. numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnnflow.errors import BnnflowError

FORMAT = "keys x (uint8 N x H x W x C pixels) and y (N integer labels)"


def is_images_file(path) -> bool:
    """--data names a single .npz (the user's images) rather than a CIFAR-10 folder."""
    return path is not None and str(path).lower().endswith(".npz")


def _shape(a: np.ndarray) -> str:
    return " x ".join(str(d) for d in a.shape) or "a scalar"


def load_images_npz(path) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 N x H x W x C, y int64 N) from a .npz; one sentence for a missing file, missing keys, wrong
    dtypes or shapes, or no images."""
    path = Path(path)
    if not path.is_file():
        raise BnnflowError(f"{path} does not exist: pass a .npz with {FORMAT}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise BnnflowError(f"{path} has no {' or '.join(missing)} array (it has "
                                   f"{', '.join(sorted(data.files)) or 'none'}): save it with {FORMAT}.")
            x, y = data["x"], data["y"]
    except BnnflowError:
        raise
    except Exception as exc:  # zip, pickle-refused and I/O errors all mean "not a usable npz"
        raise BnnflowError(f"{path} is not a readable .npz file ({type(exc).__name__}): save it with "
                           f"numpy.savez(FILE, x=..., y=...).") from None
    if x.dtype != np.uint8:
        raise BnnflowError(f"{path} holds x as {x.dtype}, not uint8: save the raw 0..255 pixels the board will "
                           "receive (the network's own input scaling is given by --input-scale).")
    if x.ndim != 4:
        raise BnnflowError(f"{path} holds x of shape {_shape(x)}, not N x H x W x C: add the batch and channel "
                           "axes (a grey image is H x W x 1).")
    if len(x) == 0 or 0 in x.shape:
        raise BnnflowError(f"{path} holds no images (x is {_shape(x)}): save at least one image.")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise BnnflowError(f"{path} has labels y of shape {_shape(y)} for {len(x)} images: save one integer label "
                           "per image.")
    if y.dtype.kind not in "iu":
        raise BnnflowError(f"{path} has {y.dtype} labels y, not integers: save the class numbers 0, 1, ... as "
                           "integers.")
    if y.min() < 0:
        raise BnnflowError(f"{path} has negative labels (down to {y.min()}): labels are class numbers from 0.")
    return np.ascontiguousarray(x), y.astype(np.int64)


def check_images_fit(x: np.ndarray, y: np.ndarray, path, image_hwc: tuple[int, int, int], classes: int) -> None:
    """The images are what the network takes (H x W x C) and every label names one of its classes."""
    if tuple(x.shape[1:]) != tuple(image_hwc):
        want = " x ".join(map(str, image_hwc))
        raise BnnflowError(f"{path} holds images of {' x '.join(map(str, x.shape[1:]))} "
                           f"(H x W x C), but the network takes {want}: save images of that shape.")
    if len(y) and y.max() >= classes:
        raise BnnflowError(f"{path} has labels up to {y.max()}, but the network has {classes} classes "
                           f"(labels 0..{classes - 1}): save labels that name its classes.")
