"""CIFAR-10 loading (npz files or the official python release), subsets and augmentation.

Images are returned as uint8 N x 32 x 32 x 3 (HWC, RGB) with int64 labels; `to_model_input`
turns them into the float N x 3 x 32 x 32 raw-pixel tensors our models take.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bnnflow.atomic import atomic_dir, atomic_path
from bnnflow.errors import BnnflowError
from bnnflow.images import CHANNELS, IMAGE_SHAPE, IMAGE_SIZE, nchw_float  # noqa: F401  (re-exported)

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
SPLITS = ("train", "test")
_BATCH_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_HINT = "pass a cifar10_{split}.npz file, a cifar-10-batches-py folder, or --download"


def default_data_dir() -> Path:
    """$BNNFLOW_DATA, else ../shared/data beside the repository if it exists, else ~/.cache/bnnflow/cifar10."""
    env = os.environ.get("BNNFLOW_DATA")
    if env:
        return Path(env).expanduser()
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "bnnflow" / "cifar10"


def load_cifar10(
    source: str | os.PathLike | None = None, split: str = "test", download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Load one CIFAR-10 split as (x uint8 N x 32 x 32 x 3, y int64 N).

    `source` is a .npz file with keys x and y (its contents are the split, whatever `split`
    says), a folder holding cifar10_<split>.npz or cifar-10-batches-py, the
    cifar-10-batches-py folder itself, or None for `default_data_dir()`. With `download`,
    a folder without data gets the official archive.
    """
    if split not in SPLITS:
        raise BnnflowError(f"Unknown CIFAR-10 split {split!r}: use 'train' or 'test'.")
    path = Path(source).expanduser() if source is not None else default_data_dir()
    hint = _HINT.format(split=split)

    if path.is_file():
        if path.suffix != ".npz":
            raise BnnflowError(f"{path} is not a .npz file: {hint}.")
        return _load_npz(path)
    if not path.exists():
        if path.suffix == ".npz":
            raise BnnflowError(f"{path} does not exist: pass an existing .npz file, or a data folder.")
        if not download:
            raise BnnflowError(f"{path} does not exist: {hint}.")
    elif not path.is_dir():
        raise BnnflowError(f"{path} is neither a file nor a folder: {hint}.")

    found = _find_in_folder(path, split) if path.is_dir() else None
    if found is None and download:
        _download(path)
        found = _find_in_folder(path, split)
    if found is None:
        raise BnnflowError(f"No CIFAR-10 {split} split found in {path}: {hint}.")
    return _load_npz(found) if found.is_file() else _load_batches(found, split)


def _find_in_folder(folder: Path, split: str) -> Path | None:
    """The npz file or cifar-10-batches-py folder for `split` inside `folder`, if any."""
    npz = folder / f"cifar10_{split}.npz"
    if npz.is_file():
        return npz
    for candidate in (folder, folder / BATCHES_DIR):
        if candidate.is_dir() and any(
            (candidate / name).is_file() for names in _BATCH_FILES.values() for name in names
        ):
            return candidate
    return None


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"x", "y"} - set(data.files)
            if missing:
                raise BnnflowError(
                    f"{path} has no {' or '.join(sorted(missing))} array (it has {sorted(data.files)}): "
                    "save it with keys x (uint8 N x 32 x 32 x 3) and y (labels)."
                )
            x, y = data["x"], data["y"]
    except BnnflowError:
        raise
    except Exception as exc:  # zip, pickle-refused and I/O errors all mean "not a usable npz"
        raise BnnflowError(
            f"{path} is not a readable .npz file ({type(exc).__name__}): re-create or re-download it."
        ) from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise BnnflowError(
            f"{path} holds x as {x.dtype} {x.shape}, not uint8 N x 32 x 32 x 3 (HWC): "
            "re-save it with the original CIFAR-10 pixels."
        )
    return np.ascontiguousarray(x), _check_labels(y, len(x), path)


def _check_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise BnnflowError(f"{path} has labels of shape {y.shape} for {n} images: re-create it with one label per image.")
    if y.dtype.kind not in "iu":
        raise BnnflowError(f"{path} has {y.dtype} labels, not integers: re-create it with integer labels 0..9.")
    if n and (y.min() < 0 or y.max() >= len(CLASSES)):
        raise BnnflowError(
            f"{path} has labels outside 0..9 (from {y.min()} to {y.max()}): it is not CIFAR-10, re-create it."
        )
    return y.astype(np.int64)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, so a tampered batch file cannot run code."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol < 3
    }

    def find_class(self, module: str, name: str):
        # the official files come from Python 2 / numpy 1 and name numpy.core
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = "delete the folder and extract cifar-10-python.tar.gz again (or use --download)"
    if not path.is_file():
        raise BnnflowError(f"{path} is missing from the CIFAR-10 batches folder: {fix}.")
    try:
        with open(path, "rb") as f:
            # latin1 decodes Python 2 str keys and array buffers losslessly
            batch = _BatchUnpickler(f, encoding="latin1").load()
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"])
    except Exception as exc:  # any unpickling failure means a damaged or foreign file
        raise BnnflowError(
            f"{path} is not a readable CIFAR-10 batch (corrupt or truncated, {type(exc).__name__}): {fix}."
        ) from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CHANNELS * IMAGE_SIZE * IMAGE_SIZE:
        raise BnnflowError(
            f"{path} holds data as {data.dtype} {data.shape}, not uint8 N x 3072 (truncated or foreign): {fix}."
        )
    x = np.ascontiguousarray(data.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
    return x, _check_labels(labels, len(x), path)


def _load_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_batch(folder / name) for name in _BATCH_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(folder: Path) -> None:
    """Fetch and check the official archive into `folder`, then extract cifar-10-batches-py."""
    archive = folder / ARCHIVE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (archive.is_file() and _md5(archive) == MD5):
            with atomic_path(archive) as tmp:
                _fetch(URL, tmp, archive)
                digest = _md5(tmp)
                if digest != MD5:
                    raise BnnflowError(
                        f"The CIFAR-10 archive downloaded from {URL} into {folder} has md5 {digest}, "
                        f"not {MD5}: retry the download, or fetch it by hand and pass its extracted folder."
                    )
        _extract(archive, folder / BATCHES_DIR)
    except BnnflowError:
        raise
    except OSError as exc:
        raise BnnflowError(
            f"Could not write CIFAR-10 into {folder} ({exc.strerror or exc}): pass a writable folder."
        ) from exc


def _fetch(url: str, dest: Path, shown: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {shown.name}") as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BnnflowError(
            f"Could not download {url} into {shown.parent} ({reason}): check the internet connection, "
            f"or place {ARCHIVE} or its extracted {BATCHES_DIR} folder there by hand."
        ) from exc


def _extract(archive: Path, target: Path) -> None:
    """Extract only plain files directly under cifar-10-batches-py/, so no member escapes `target`."""
    try:
        with tarfile.open(archive, "r:gz") as tar, atomic_dir(target) as tmp:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) != 2 or parts[0] != BATCHES_DIR or parts[1] in ("..", "."):
                    continue
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has contents
                with src, open(tmp / parts[1], "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        archive.unlink(missing_ok=True)
        raise BnnflowError(f"{archive} is not a readable tar.gz archive ({exc}): run the download again.") from exc


def cifar10_subset(x: np.ndarray, y: np.ndarray, n: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` images, or `n` distinct images chosen with `seed` (kept in dataset order)."""
    if len(x) != len(y):
        raise BnnflowError(f"CIFAR-10 subset got {len(x)} images but {len(y)} labels: pass matching arrays.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(x):
        raise BnnflowError(f"CIFAR-10 subset size must be an integer from 1 to {len(x)}, got {n!r}: pass a valid count.")
    if seed is None:
        return x[:n], y[:n]
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=int(n), replace=False))
    return x[idx], y[idx]


def to_model_input(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 N x 32 x 32 x 3 images -> float32 N x 3 x 32 x 32 tensor of raw 0..255 pixels."""
    x = np.asarray(x_uint8)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise BnnflowError(f"Model input must be uint8 N x 32 x 32 x 3 images, got {x.dtype} {x.shape}: pass load_cifar10's x.")
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().contiguous()


def augment(batch: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, on `batch`'s device.

    The random draws come from `generator` (on its own device), so a seeded generator gives
    the same result on CPU and GPU.
    """
    if batch.ndim != 4:
        raise BnnflowError(f"augment needs an N x C x H x W batch, got shape {tuple(batch.shape)}: pass to_model_input's output.")
    n, _, h, w = batch.shape
    device = batch.device
    rand_device = generator.device if generator is not None else device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rand_device).to(device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rand_device).to(device)
    flip = torch.rand(n, generator=generator, device=rand_device).to(device) < 0.5

    padded = F.pad(batch, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(h, device=device)  # N x H
    cols = dx[:, None] + torch.arange(w, device=device)  # N x W
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    images = torch.arange(n, device=device)[:, None, None]
    # advanced indices around the channel slice put their dims first: N x H x W x C
    out = padded[images, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
