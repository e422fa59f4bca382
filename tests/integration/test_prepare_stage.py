"""`python -m stages.prepare` on a hand-made ingested file: three splits and the counts, or a clear error and
no output when cleaning drops too much."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from finetune import files, paths
from frames import assert_counts_add_up, frame_of, leaks
from helpers import make_project, stage

OUTPUTS = (paths.TRAIN_DATA, paths.VAL_DATA, paths.TEST_DATA, paths.DATA_METRICS)


@pytest.fixture
def prepare_project(tmp_path, tiny_base):
    """A project copy with the tiny base in models/base (the tokenizer prepare measures lengths with);
    each test writes the ingested file, then runs the stage."""
    project = make_project(tmp_path, git=False)
    shutil.copytree(tiny_base, project / paths.BASE_DIR)
    return project


def _stage_outputs(project):
    return [p for p in OUTPUTS if (project / p).exists()]


def _fails(project, message: str) -> None:
    result = stage("prepare", project, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(rf"^prepare: error: {re.escape(paths.INGESTED)}: .*{message}", result.stderr, re.M), result.stderr


def test_stage_writes_three_splits_and_counts(prepare_project):
    files.write_parquet(
        prepare_project / paths.INGESTED,
        frame_of(*[(f"Question {i}?", "", f"Answer {i}.") for i in range(40)], ("Q", "", "N/A")).astype("string"),
    )
    stage("prepare", prepare_project)
    splits = [pd.read_parquet(prepare_project / p) for p in (paths.TRAIN_DATA, paths.VAL_DATA, paths.TEST_DATA)]
    metrics = files.read_json(prepare_project / paths.DATA_METRICS)
    assert tuple(len(s) for s in splits) == (28, 2, 10)  # params: test_fraction 0.25, val_fraction 0.05
    assert not leaks(*splits)
    assert metrics["rows_read"] == 41 and metrics["dropped.placeholder_output"] == 1
    assert (metrics["train"], metrics["val"], metrics["test"], metrics["sampled"]) == (28, 2, 10, 40)
    assert_counts_add_up(metrics, 41)


def test_stage_fails_when_cleaning_drops_too_much(prepare_project):
    rows = [(f"Question {i}?", "", "N/A" if i % 3 else f"Answer {i}.") for i in range(30)]
    files.write_parquet(prepare_project / paths.INGESTED, frame_of(*rows).astype("string"))
    _fails(prepare_project, r"dropped 20 of 30 rows \(67% > prepare.max_drop_fraction 50%\)")
    assert _stage_outputs(prepare_project) == []


def test_stage_fails_when_nothing_survives(prepare_project):
    files.write_parquet(prepare_project / paths.INGESTED, frame_of(("a", "", " "), ("b", "", "...")).astype("string"))
    _fails(prepare_project, r"0 row\(s\) survive cleaning")
    assert _stage_outputs(prepare_project) == []
