"""The deployment package's notebook, classify_cifar10.ipynb, written as nbformat-4 JSON.

`bnnflow deploy` writes it into every package; notebooks/classify_cifar10.ipynb is the same
file for reading in the repository (re-make it with `python -m bnnflow.hw.driver.notebook`).
It runs on the board's Jupyter (board backend) and anywhere with bnnflow's .venv (functional
model), and stores what it computed in notebook_results.json beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NOTEBOOK_NAME = "classify_cifar10.ipynb"
RESULTS_NAME = "notebook_results.json"

INTRO = """\
# CIFAR-10 on the PYNQ-Z2 with a bnnflow accelerator

**Getting it onto the board** (PYNQ image with Jupyter; user and password `xilinx`):

1. On your computer, make the package: `bnnflow deploy cnv --variant tiny` writes `deploy/cnv-tiny-pynq-z2/`
   (and a `.zip` of it).
2. Copy the folder to the board: `scp -r deploy/cnv-tiny-pynq-z2 xilinx@pynq:/home/xilinx/jupyter_notebooks/`
3. Open the board's Jupyter at http://pynq:9090 (or the board's IP address), open
   `cnv-tiny-pynq-z2/classify_cifar10.ipynb` and run all cells.

Without a board the same notebook runs the design's functional model (bit-exact, but at CPU speed):
`cd deploy/cnv-tiny-pynq-z2 && ../../.venv/bin/jupyter-execute --inplace classify_cifar10.ipynb`.
The driver needs only numpy and PYNQ on the board: no torch, FINN or qonnx.
"""

SETUP = """\
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PACKAGE = Path(os.environ.get("BNNFLOW_PACKAGE", ".")).resolve()  # the deployment folder (this notebook's)
N_IMAGES = int(os.environ.get("BNNFLOW_NOTEBOOK_IMAGES", "100"))    # how many packaged test images to classify
sys.path.insert(0, str(PACKAGE))
from bnnflow_driver import BnnflowAccelerator  # noqa: E402

manifest = json.loads((PACKAGE / "manifest.json").read_text())
est = manifest.get("estimates") or {}
print(f"{manifest['model']}/{manifest['variant']} for the {manifest['board']}. {manifest['hardware_note']}")
if est.get("fps") and est.get("latency_ms"):
    print(f"FINN's estimate for the hardware: {est['fps']:,.0f} images/s, latency {est['latency_ms']:.2f} ms")
accel = BnnflowAccelerator(PACKAGE, batch_size=100)
print("backend in use:", accel.backend)
"""

LOAD = """\
data = np.load(PACKAGE / "test_images.npz")
if N_IMAGES > len(data["x"]):
    raise ValueError(f"The package holds {len(data['x'])} test images, fewer than N_IMAGES={N_IMAGES}.")
images, labels = data["x"][:N_IMAGES], data["y"][:N_IMAGES].astype(np.int64)
classes = accel.classes
print(f"{len(images)} CIFAR-10 test images, {images.dtype} {images.shape[1:]} (raw RGB pixels, channels last)")
"""

CLASSIFY = """\
t0 = time.perf_counter()
predictions = accel.classify(images)
seconds = time.perf_counter() - t0
correct = int(np.sum(predictions == labels))
accuracy = correct / len(labels)
print(f"top-1 accuracy: {accuracy:.1%} ({correct}/{len(labels)}) on the {accel.backend}")
print(f"{len(images) / seconds:,.1f} images/s end to end (packing and unpacking on the CPU included)")
if "expected" in data.files:
    agree = int(np.sum(predictions == data["expected"][:N_IMAGES]))
    print(f"agrees with the functional model run at deploy time on {agree}/{len(images)} images")
"""

GRID = """\
import matplotlib.pyplot as plt

rows, cols = 4, 8
fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
for ax, img, p, t in zip(axes.flat, images, predictions, labels):
    ax.imshow(img)
    ax.set_title(f"{classes[p]}\\n({classes[t]})", fontsize=8, color="green" if p == t else "red")
    ax.axis("off")
for ax in list(axes.flat)[len(images):]:
    ax.axis("off")
fig.suptitle("predicted (true) label: green = right, red = wrong")
plt.tight_layout()
plt.show()
"""

CONFUSION = """\
n_classes = len(classes)
confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
np.add.at(confusion, (labels, predictions), 1)
fig, ax = plt.subplots(figsize=(6.5, 5.5))
im = ax.imshow(confusion, cmap="Blues")
ax.set_xticks(range(n_classes))
ax.set_xticklabels(classes, rotation=60, ha="right")
ax.set_yticks(range(n_classes))
ax.set_yticklabels(classes)
ax.set_xlabel("predicted")
ax.set_ylabel("true")
for i in range(n_classes):
    for j in range(n_classes):
        if confusion[i, j]:
            ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=8,
                    color="white" if confusion[i, j] > confusion.max() / 2 else "black")
ax.set_title(f"confusion matrix, {len(labels)} images, accuracy {accuracy:.1%}")
fig.colorbar(im)
plt.tight_layout()
plt.show()
"""

SPEED = """\
speed = accel.throughput_test()
if accel.backend == "board":
    print(f"measured on the FPGA ({speed['fclk_mhz']:g} MHz): {speed['images_per_s']:,.0f} images/s for a batch of "
          f"{speed['batch_size']}, latency {speed['latency_ms']:.3f} ms for one image")
    print(f"DMA: {speed['dram_in_MBps']:.1f} MB/s in, {speed['dram_out_MBps']:.3f} MB/s out; CPU packing "
          f"{speed['pack_input_ms']:.2f} ms, unpacking {speed['unpack_output_ms']:.2f} ms per batch")
else:
    print(f"simulation speed on this CPU (functional model, not the hardware's speed): "
          f"{speed['images_per_s']:,.1f} images/s, {speed['latency_ms']:.1f} ms for one image")
    if speed.get("estimated_fps") and speed.get("estimated_latency_ms"):
        print(f"on the board FINN estimates {speed['estimated_fps']:,.0f} images/s, "
              f"latency {speed['estimated_latency_ms']:.2f} ms")
"""

SAVE = """\
results = {
    "backend": accel.backend,
    "model": manifest["model"],
    "variant": manifest["variant"],
    "images": len(images),
    "accuracy": accuracy,
    "predictions": predictions.tolist(),
    "labels": labels.tolist(),
    "confusion": confusion.tolist(),
    "throughput": speed,
}
(PACKAGE / "notebook_results.json").write_text(json.dumps(results, indent=1))
accel.close()
print("results saved in", PACKAGE / "notebook_results.json")
"""

CELLS = [
    ("markdown", INTRO),
    ("markdown", "## Load the driver\nIt picks the board when PYNQ and a bitfile are there, "
                 "else the functional model of the same hardware graph, and says which."),
    ("code", SETUP),
    ("markdown", "## Test images\nThe package carries the first CIFAR-10 test images with their labels."),
    ("code", LOAD),
    ("markdown", "## Classify and measure accuracy"),
    ("code", CLASSIFY),
    ("markdown", "## Predictions"),
    ("code", GRID),
    ("markdown", "## Confusion matrix"),
    ("code", CONFUSION),
    ("markdown", "## Throughput and latency\nOn the board: the FPGA's speed. Off the board: how fast the "
                 "functional model runs on this CPU, with FINN's estimate for the hardware beside it."),
    ("code", SPEED),
    ("markdown", "## Save the results"),
    ("code", SAVE),
]


def _lines(text: str) -> list[str]:
    lines = text.rstrip("\n").split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def make_notebook() -> dict:
    """The notebook as nbformat 4.5 JSON (a dict)."""
    cells = []
    for i, (kind, text) in enumerate(CELLS):
        cell = {"cell_type": kind, "id": f"cell-{i:02d}", "metadata": {}, "source": _lines(text)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_text() -> str:
    return json.dumps(make_notebook(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    default = Path(__file__).resolve().parents[2] / "notebooks" / NOTEBOOK_NAME
    target = Path(argv[0]) if argv else default
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(notebook_text())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
