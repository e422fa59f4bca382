"""finetune.files: atomic writes of files and directories, which leave the old content on any error or kill."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from finetune import files


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_path_replaces_a_file_and_cleans_up(tmp_path):
    target = tmp_path / "out" / "f.json"
    files.write_json(target, {"a": 1})
    files.write_json(target, {"a": 2})
    assert files.read_json(target) == {"a": 2}
    assert _leftovers(target.parent) == []


def test_atomic_path_error_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.parquet"
    files.write_parquet(target, pd.DataFrame({"a": ["old"]}))
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    # A writer that fails half way (pyarrow cannot store this object column) keeps it too.
    with pytest.raises(Exception):
        files.write_parquet(target, pd.DataFrame({"a": [object()]}))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "model"
    with files.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "old_only.bin").write_text("1")
        (tmp / "weights.bin").write_text("old")
    with files.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]  # nothing of the old one left
    assert (target / "weights.bin").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_error_keeps_the_old_directory(tmp_path):
    target = tmp_path / "model"
    with files.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights.bin").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert (target / "weights.bin").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_path_removes_temp_dirs_of_a_killed_earlier_write(tmp_path):
    target = tmp_path / "f.json"
    stale = tmp_path / ".f.json.abc12345.tmp"
    stale.mkdir()
    (stale / "f.json").write_text("{")
    others = [".g.json.abc12345.tmp", ".f.json.gz.abc12345.tmp"]  # other outputs': not ours to touch
    for name in others:
        (tmp_path / name).mkdir()
    files.write_json(target, {"a": 1})
    assert _leftovers(tmp_path) == sorted(others)
