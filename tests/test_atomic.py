"""Atomic writes leave files and folders with the modes a plain write would give them."""

import os
import shutil
import stat

import pytest
from hypothesis import given, settings, strategies as st

from bnnflow import atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_the_process_umask():
    current = os.umask(0o022)
    os.umask(current)
    assert atomic._UMASK == current


@settings(max_examples=30, deadline=None)
@given(umask=st.integers(0, 0o777))
def test_new_files_and_folders_follow_the_umask(tmp_path_factory, umask):
    root = tmp_path_factory.mktemp("modes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(atomic, "_UMASK", umask)
        atomic.write_json(root / "a.json", {"x": 1})
        with atomic.atomic_dir(root / "build") as tmp:
            (tmp / "f").write_text("x")
    assert _mode(root / "a.json") == 0o666 & ~umask  # not mkstemp's 0600
    assert _mode(root / "build") == 0o777 & ~umask  # not mkdtemp's 0700


def test_a_replaced_file_keeps_its_mode_and_a_copied_executable_its_own(tmp_path):
    private = tmp_path / "private.json"
    private.write_text("{}")
    os.chmod(private, 0o640)
    atomic.write_json(private, {"x": 2})
    assert _mode(private) == 0o640 and "2" in private.read_text()

    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o750)
    with atomic.atomic_path(tmp_path / "cache" / "tool") as tmp:
        shutil.copy2(tool, tmp)
    assert _mode(tmp_path / "cache" / "tool") == 0o750


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]
