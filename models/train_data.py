"""CIFAR-10 for a training run: the train / held-out validation / test splits, their
provenance (paths, sha256) for run.json and --resume, and the uint8 tensors on the device.

The last --val-size training images are held out to select best.pt; the test set is only reported.
"""

from __future__ import annotations

from pathlib import Path

from bnnflow.errors import BnnflowError

from .train_config import TrainConfig


def load_data(cfg: TrainConfig) -> dict:
    """Numpy splits x/y (train), xv/yv (held out), xt/yt (test) and their `info` for run.json."""
    import numpy as np

    from .checkpoint import file_sha256
    from .data import _find_in_folder, cifar10_subset, default_data_dir, load_cifar10

    source = Path(cfg.data).expanduser() if cfg.data else default_data_dir()
    if source.is_file():
        train_src, test_root = source, source.parent
    else:
        train_src, test_root = source, source
    x, y = load_cifar10(train_src, "train", download=cfg.download)
    xt, yt = load_cifar10(test_root, "test", download=cfg.download)
    if cfg.val_size >= len(x):
        raise BnnflowError(f"--val-size {cfg.val_size} leaves none of the {len(x)} training images to train on.")
    split = len(x) - cfg.val_size
    xv, yv = x[split:], y[split:]
    x, y = x[:split], y[:split]
    info = {}
    for split, src in (("train", train_src), ("test", test_root)):
        path = src if Path(src).is_file() else (_find_in_folder(Path(src), split) if Path(src).is_dir() else None)
        info[split] = str(Path(path).resolve()) if path else str(src)
        if path is not None and Path(path).is_file():
            info[f"{split}_sha256"] = file_sha256(path)
    if cfg.subset is not None:
        if cfg.subset > len(x):
            raise BnnflowError(f"--subset {cfg.subset} is more than the {len(x)} training images available.")
        x, y = cifar10_subset(x, y, cfg.subset)
    if cfg.test_subset is not None:
        if cfg.test_subset > len(xt):
            raise BnnflowError(f"--test-subset {cfg.test_subset} is more than the {len(xt)} test images available.")
        xt, yt = cifar10_subset(xt, yt, cfg.test_subset)
    info.update(train_images=int(len(x)), val_images=int(len(xv)), test_images=int(len(xt)))
    return {"x": np.ascontiguousarray(x), "y": y, "xv": np.ascontiguousarray(xv), "yv": yv,
            "xt": np.ascontiguousarray(xt), "yt": yt, "info": info}



def to_device_tensors(data: dict, device):
    """uint8 NCHW images and int64 labels on the device; floats are made per batch."""
    import torch

    def images(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)

    return (images(data["x"]), torch.from_numpy(data["y"]).to(device),
            images(data["xv"]), torch.from_numpy(data["yv"]).to(device),
            images(data["xt"]), torch.from_numpy(data["yt"]).to(device))


def check_same_data(saved: dict | None, data: dict, out: Path) -> None:
    """A resumed run must see the images it started with."""
    if saved is None:
        return
    old = saved["train_state"]["data"]
    for key in ("train_sha256", "test_sha256", "train_images", "val_images", "test_images"):
        if key in old and key in data["info"] and old[key] != data["info"][key]:
            raise BnnflowError(f"The CIFAR-10 copy differs from the one the run in {out} started with ({key}): "
                               "pass the same --data to resume.")
