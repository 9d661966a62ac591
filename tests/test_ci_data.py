"""CI never skips the real-data tests silently: without CIFAR-10 the run fails in one sentence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, shared_npz


def _pytest(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CI", "BNNFLOW_REQUIRE_DATA", "BNNFLOW_DATA", "BNNFLOW_TEST_CPU")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_models.py::test_unknown_names_are_one_sentence"],
                          cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag", [{"CI": "true"}, {"BNNFLOW_REQUIRE_DATA": "1"}])
def test_missing_data_fails_the_run_in_ci(tmp_path, flag):
    out = _pytest(tmp_path, BNNFLOW_DATA=str(tmp_path / "nowhere"), **flag)
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    line = next(x for x in text.splitlines() if "Real CIFAR-10 is missing" in x)
    sentence = line[line.index("Real CIFAR-10"):].rstrip("! ")  # pytest frames it in "!!! ... !!!"
    assert sentence.endswith(".") and sentence.count(". ") == 0 and "BNNFLOW_DATA" in sentence
    assert str(tmp_path / "nowhere" / "cifar10_test.npz") in sentence


def test_without_ci_a_missing_data_set_only_skips(tmp_path):
    out = _pytest(tmp_path, BNNFLOW_DATA=str(tmp_path / "nowhere"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_data_location_honours_bnnflow_data(monkeypatch, tmp_path):
    monkeypatch.setenv("BNNFLOW_DATA", str(tmp_path))
    assert shared_npz("test") == tmp_path / "cifar10_test.npz"
    monkeypatch.delenv("BNNFLOW_DATA")
    assert shared_npz("train") == SHARED_DATA / "cifar10_train.npz"


def test_ci_script_requires_the_data():
    text = (REPO / ".ci" / "run").read_text()
    assert "BNNFLOW_REQUIRE_DATA=1" in text and text.index("BNNFLOW_REQUIRE_DATA=1") < text.index("make test")
