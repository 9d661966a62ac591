"""CIFAR-10 loading, subsets, model input and augmentation (bnnflow.models.data)."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.errors import BnnflowError
from bnnflow.models import data

from conftest import SHARED_DATA, shared_npz  # noqa: E402  (tests/ is on sys.path)

TEST_NPZ = shared_npz("test")  # honours BNNFLOW_DATA, else ../shared/data
DATA_DIR = TEST_NPZ.parent
needs_real_data = pytest.mark.skipif(
    not TEST_NPZ.is_file(), reason=f"real CIFAR-10 test set not found at {TEST_NPZ} (set BNNFLOW_DATA)"
)


@pytest.fixture(scope="module")
def real_test() -> tuple[np.ndarray, np.ndarray]:
    if not TEST_NPZ.is_file():
        pytest.skip(f"real CIFAR-10 test set not found at {TEST_NPZ}")
    with np.load(TEST_NPZ) as d:
        return d["x"], d["y"]


@pytest.fixture(scope="module")
def few_images(real_test) -> tuple[np.ndarray, np.ndarray]:
    """24 real test images: 4 for each of data_batch_1..5 and test_batch."""
    x, y = real_test
    return x[:24].copy(), y[:24].copy()


def write_batch(path: Path, x: np.ndarray, y: np.ndarray, protocol: int = 2) -> None:
    """One batch in the official format: R, G, B planes per row, bytes keys."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(v) for v in y],
        b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1).copy(),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(x))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_batches_dir(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A fake cifar-10-batches-py under `root`: images 0..19 as train, 20..23 as test."""
    folder = root / data.BATCHES_DIR
    folder.mkdir(parents=True)
    for i in range(5):
        write_batch(folder / f"data_batch_{i + 1}", x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4], protocol=2 + i % 4)
    write_batch(folder / "test_batch", x[20:24], y[20:24])
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in data.CLASSES]}))
    return folder


def py2_batch_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """A batch as Python 2 / numpy 1 pickled the official files: str keys, numpy.core globals."""

    def s(b: bytes) -> bytes:  # a Python 2 str
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + len(b).to_bytes(4, "little")) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if v < 256 else b"M" + v.to_bytes(2, "little")

    raw = x.transpose(0, 3, 1, 2).reshape(len(x), -1).tobytes()
    dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"  # dtype('u1', 0, 1)
    dtype += b"(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + i(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
    array += b"(" + i(1) + i(len(x)) + i(3072) + b"\x86" + dtype + b"\x89" + s(raw) + b"tb"
    labels = b"](" + b"".join(i(int(v)) for v in y) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + labels + s(b"batch_label") + s(b"testing") + b"u."


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.endswith("."), msg
    for fragment in fragments:
        assert fragment in msg, msg


# ---------------------------------------------------------------- real data


@needs_real_data
def test_real_test_npz_loads():
    x, y = data.load_cifar10(TEST_NPZ)
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert y[:8].tolist() == [3, 8, 8, 0, 6, 6, 1, 6]
    assert np.bincount(y).tolist() == [1000] * 10


@needs_real_data
def test_real_folder_and_default_dir(monkeypatch):
    x, y = data.load_cifar10(DATA_DIR, split="test")
    assert x.shape == (10000, 32, 32, 3) and y[:8].tolist() == [3, 8, 8, 0, 6, 6, 1, 6]
    monkeypatch.setenv("BNNFLOW_DATA", str(DATA_DIR))
    assert data.default_data_dir() == DATA_DIR
    x2, _ = data.load_cifar10()  # source=None, split="test"
    assert np.array_equal(x, x2)
    monkeypatch.delenv("BNNFLOW_DATA")
    if SHARED_DATA.is_dir():  # without the variable: ../shared/data beside the repository
        assert data.default_data_dir() == SHARED_DATA


def test_classes():
    assert data.CLASSES == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )


# ---------------------------------------------------------------- official python release


def test_batches_folder_matches_npz(tmp_path, few_images):
    x, y = few_images
    folder = make_batches_dir(tmp_path, x, y)
    for source in (folder, tmp_path):  # the folder itself and torchvision's root/cifar-10-batches-py
        xt, yt = data.load_cifar10(source, split="test")
        assert xt.dtype == np.uint8 and yt.dtype == np.int64 and xt.flags.c_contiguous
        assert np.array_equal(xt, x[20:24]) and np.array_equal(yt, y[20:24])
        xr, yr = data.load_cifar10(source, split="train")
        assert np.array_equal(xr, x[:20]) and np.array_equal(yr, y[:20])


def test_npz_folder_preferred_and_env_default(tmp_path, monkeypatch, few_images):
    x, y = few_images
    np.savez(tmp_path / "cifar10_test.npz", x=x[:3], y=y[:3])
    monkeypatch.setenv("BNNFLOW_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    xt, yt = data.load_cifar10()
    assert np.array_equal(xt, x[:3]) and np.array_equal(yt, y[:3])


def test_default_dir_falls_back_to_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("BNNFLOW_DATA", raising=False)
    monkeypatch.setattr(data, "__file__", str(tmp_path / "repo" / "models" / "data.py"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir() == tmp_path / "home" / ".cache" / "bnnflow" / "cifar10"


def test_python2_pickles_load(tmp_path, few_images):
    x, y = few_images
    folder = make_batches_dir(tmp_path, x, y)
    (folder / "test_batch").write_bytes(py2_batch_bytes(x[:5], y[:5]))
    xt, yt = data.load_cifar10(folder, split="test")
    assert np.array_equal(xt, x[:5]) and np.array_equal(yt, y[:5])


# ---------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(tmp_path / "nowhere")
    assert_one_line_error(e, str(tmp_path / "nowhere"), "--download")


def test_empty_folder(tmp_path):
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(tmp_path)
    assert_one_line_error(e, f"No CIFAR-10 test split found in {tmp_path}", "cifar-10-batches-py")


def test_bad_split(tmp_path):
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(tmp_path, split="val")
    assert_one_line_error(e, "'val'", "'train' or 'test'")


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"images": np.zeros((2, 32, 32, 3), np.uint8), "y": np.zeros(2, np.int64)}, "no x array"),
        ({"x": np.zeros((2, 3, 32, 32), np.uint8), "y": np.zeros(2, np.int64)}, "not uint8 N x 32 x 32 x 3"),
        ({"x": np.zeros((2, 32, 32, 3), np.float32), "y": np.zeros(2, np.int64)}, "not uint8 N x 32 x 32 x 3"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8), "y": np.zeros(3, np.int64)}, "one label per image"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8), "y": np.array([0, 10])}, "outside 0..9"),
        ({"x": np.zeros((2, 32, 32, 3), np.uint8), "y": np.zeros(2, np.float32)}, "not integers"),
    ],
)
def test_malformed_npz(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(path)
    assert_one_line_error(e, str(path), fragment)


def test_not_an_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(tmp_path / "junk.npz")
    assert_one_line_error(e, str(tmp_path / "junk.npz"), "not a readable .npz")
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(tmp_path / "junk.txt")
    assert_one_line_error(e, "is not a .npz file")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "short_rows", "bad_label", "missing", "evil"])
def test_malformed_batches(tmp_path, few_images, damage):
    x, y = few_images
    folder = make_batches_dir(tmp_path, x, y)
    batch = folder / "test_batch"
    if damage == "truncate":
        batch.write_bytes(batch.read_bytes()[:5000])
    elif damage == "garbage":
        batch.write_bytes(b"\x00garbage" * 100)
    elif damage == "short_rows":
        d = {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]}
        batch.write_bytes(pickle.dumps(d))
    elif damage == "bad_label":
        write_batch(batch, x[:4], np.array([0, 1, 12, 3]))
    elif damage == "missing":
        batch.unlink()
        batch = folder / "data_batch_3"
        batch.unlink()
    elif damage == "evil":  # a pickle that would run code must be refused, not executed
        batch.write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    split = "train" if damage == "missing" else "test"
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(folder, split=split)
    assert_one_line_error(e, str(batch))


# ---------------------------------------------------------------- download (no internet)


def make_archive(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    src = tmp_path / "src"
    make_batches_dir(src, x, y)
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / data.BATCHES_DIR, arcname=data.BATCHES_DIR)
        evil = tarfile.TarInfo("../escaped.txt")  # must never be written outside the target
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    return archive


def test_download_extracts_and_verifies(tmp_path, monkeypatch, few_images):
    x, y = few_images
    archive = make_archive(tmp_path, x, y)
    monkeypatch.setattr(data, "URL", archive.as_uri())  # urllib serves the local tarball
    monkeypatch.setattr(data, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "dl" / "cifar10"
    xt, yt = data.load_cifar10(root, split="test", download=True)
    assert np.array_equal(xt, x[20:24]) and np.array_equal(yt, y[20:24])
    assert sorted(p.name for p in root.iterdir()) == sorted([data.ARCHIVE, data.BATCHES_DIR])  # no temp files
    assert not (tmp_path / "dl" / "escaped.txt").exists() and not (root / "escaped.txt").exists()
    # the second call finds the data and does not download again
    monkeypatch.setattr(data, "URL", (tmp_path / "gone.tar.gz").as_uri())
    xr, _ = data.load_cifar10(root, split="train", download=True)
    assert np.array_equal(xr, x[:20])


@pytest.mark.parametrize("argv", [
    ["evaluate", "models/checkpoints/cnv-default.pt", "--hw-images", "0"],
    ["train", "cnv", "--variant", "tiny", "--epochs", "1", "--val-size", "4", "--batch-size", "8", "--no-compile",
     "--no-progress", "--out", "RUN"],
])
def test_commands_that_read_cifar10_download_it_when_asked(tmp_path, monkeypatch, few_images, capsys, argv):
    """data.py's errors tell the user to add --download: each command that reads CIFAR-10 takes it."""
    from bnnflow.cli import main
    from conftest import REPO

    x, y = few_images
    archive = make_archive(tmp_path, x, y)
    monkeypatch.setattr(data, "URL", archive.as_uri())
    monkeypatch.setattr(data, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.chdir(REPO)
    root = tmp_path / "dl"
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    assert main([*argv, "--data", str(root)]) != 0
    assert "--download" in capsys.readouterr().err
    assert main([*argv, "--data", str(root), "--download"]) == 0
    assert (root / data.BATCHES_DIR).is_dir()


def test_download_checksum_mismatch(tmp_path, monkeypatch, few_images):
    x, y = few_images
    monkeypatch.setattr(data, "URL", make_archive(tmp_path, x, y).as_uri())  # real MD5 kept: mismatch
    root = tmp_path / "dl"
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(root, download=True)
    assert_one_line_error(e, str(root), data.MD5, "retry")
    assert list(root.iterdir()) == []  # the temp file beside the archive is gone


def test_download_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "URL", (tmp_path / "nothing-here.tar.gz").as_uri())
    with pytest.raises(BnnflowError) as e:
        data.load_cifar10(tmp_path / "dl", download=True)
    assert_one_line_error(e, "Could not download", str(tmp_path / "dl"))


# ---------------------------------------------------------------- subset and model input


def test_subset():
    x = np.arange(50 * 4, dtype=np.uint8).reshape(50, 2, 2, 1)
    y = np.arange(50) % 10
    xs, ys = data.cifar10_subset(x, y, 7)
    assert np.array_equal(xs, x[:7]) and np.array_equal(ys, y[:7])
    xa, ya = data.cifar10_subset(x, y, 20, seed=1)
    xb, yb = data.cifar10_subset(x, y, 20, seed=1)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    picked = xa[:, 0, 0, 0] // 4
    assert len(np.unique(picked)) == 20 and np.array_equal(y[picked], ya)
    assert not np.array_equal(xa, data.cifar10_subset(x, y, 20, seed=2)[0])
    for bad in (0, -1, 51, 2.5, True):
        with pytest.raises(BnnflowError) as e:
            data.cifar10_subset(x, y, bad)
        assert_one_line_error(e, "from 1 to 50")


def test_to_model_input():
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    t = data.to_model_input(x)
    assert t.dtype == torch.float32 and t.shape == (5, 3, 32, 32) and t.is_contiguous()
    assert torch.equal(t, torch.from_numpy(x).permute(0, 3, 1, 2).float())
    assert t.max() <= 255 and t.min() >= 0
    with pytest.raises(BnnflowError):
        data.to_model_input(x.astype(np.float32))
    with pytest.raises(BnnflowError):
        data.to_model_input(x.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- augmentation


def all_crops(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Every shifted crop of the zero-padded image and its mirror: K x C x H x W."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    crops = torch.stack(crops)
    return torch.cat([crops, crops.flip(-1)])


def test_augment_shape_dtype_determinism():
    x = torch.rand(16, 3, 32, 32) * 255
    out = data.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(out, data.augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, data.augment(x, torch.Generator().manual_seed(1)))
    assert data.augment(x).shape == x.shape  # global RNG works too
    assert data.augment(x.double(), torch.Generator().manual_seed(0)).dtype == torch.float64


def test_augment_covers_all_shifts_and_flips():
    # each pixel holds its own position + 1, so the crop offset and flip can be read back
    n = 2000
    pos = (torch.arange(32 * 32, dtype=torch.float32) + 1).reshape(1, 1, 32, 32).expand(n, 3, 32, 32)
    out = data.augment(pos.contiguous(), torch.Generator().manual_seed(0))
    center = out[:, 0, 15, 15]  # never padding for shifts of at most 4
    row, col = (center - 1) // 32, (center - 1) % 32
    flipped = (out[:, 0, 15, 16] - out[:, 0, 15, 15]) < 0
    dy = row - 15
    dx = torch.where(flipped, col - 16, col - 15)  # flipped: output column c reads padded column dx + 31 - c
    assert set(dy.long().tolist()) == set(range(-4, 5)) and set(dx.long().tolist()) == set(range(-4, 5))
    assert 0.45 < flipped.float().mean() < 0.55


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 6),
    channels=st.sampled_from([1, 3]),
    data_seed=st.integers(0, 2**16),
)
def test_augment_outputs_are_padded_crops(seed, n, channels, data_seed):
    x = torch.rand(n, channels, 32, 32, generator=torch.Generator().manual_seed(data_seed)) * 255 + 1
    out = data.augment(x, torch.Generator().manual_seed(seed))
    for image, result in zip(x, out):
        matches = (all_crops(image) == result).flatten(1).all(1)
        assert matches.any(), "output is not a shifted (possibly flipped) crop of the padded input"
