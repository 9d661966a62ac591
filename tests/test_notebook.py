"""The package's notebook, executed end to end off the board on 100 real CIFAR-10 test images.

The notebook saves what it computed (predictions, accuracy, confusion matrix, speed) in
notebook_results.json; those must match the Brevitas model on the same images image for image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bnnflow.hw.driver.notebook import NOTEBOOK_NAME, RESULTS_NAME, make_notebook, notebook_text

REPO = Path(__file__).resolve().parents[1]
IMAGES = 100


def test_repository_notebook_is_the_generated_one():
    import nbformat

    path = REPO / "notebooks" / NOTEBOOK_NAME
    assert path.read_text() == notebook_text(), "re-make it: python -m bnnflow.hw.driver.notebook"
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
    intro = "".join(make_notebook()["cells"][0]["source"])
    assert "scp -r deploy/" in intro and "xilinx@pynq:/home/xilinx/jupyter_notebooks/" in intro
    assert "http://pynq:9090" in intro


@pytest.mark.slow
def test_notebook_runs_off_board_and_matches_brevitas(package, cifar_test, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from bnnflow.build_flows.verify import run_brevitas
    from bnnflow.models.checkpoint import load_checkpoint

    build, pkg = package
    copy = tmp_path / pkg.name
    shutil.copytree(pkg, copy)
    monkeypatch.setenv("BNNFLOW_NOTEBOOK_IMAGES", str(IMAGES))
    monkeypatch.delenv("BNNFLOW_PACKAGE", raising=False)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    nb = nbformat.read(copy / NOTEBOOK_NAME, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, startup_timeout=120,
                            resources={"metadata": {"path": str(copy)}})
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "backend in use: functional model (no board)" in text
    assert f"agrees with the functional model run at deploy time on {IMAGES}/{IMAGES} images" in text
    assert "simulation speed on this CPU" in text
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 2, "the image grid and the confusion matrix"

    res = json.loads((copy / RESULTS_NAME).read_text())
    x, y = cifar_test
    assert res["backend"] == "functional model (no board)" and res["images"] == IMAGES
    assert res["labels"] == y[:IMAGES].tolist()
    net, _ = load_checkpoint(build / "model.brevitas.pt")
    ref = run_brevitas(net, np.ascontiguousarray(x[:IMAGES].transpose(0, 3, 1, 2)).astype(np.float32)).argmax(1)
    assert res["predictions"] == ref.tolist(), "the notebook's predictions differ from Brevitas"
    assert res["accuracy"] == pytest.approx(float(np.mean(ref == y[:IMAGES])))
    confusion = np.array(res["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == IMAGES
    assert np.trace(confusion) == int(np.sum(ref == y[:IMAGES]))
    assert res["throughput"]["images_per_s"] > 0 and res["throughput"]["estimated_fps"] > 0
