"""One list of train's inputs: its checkpoint fingerprint covers exactly the train stage's deps and params
in dvc.yaml, so a change DVC reruns train for also clears the checkpoints, and nothing else does.
(tests/unit/test_pipeline.py reads the lists themselves.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

import helpers
from finetune.training import checkpoints

# Tiny model, 2 optimizer steps of 1 row, a checkpoint after each: the cheapest run that leaves checkpoints.
PARAMS = {
    "prepare": {"n": 40, "max_length": 128, "too_long": "truncate"},
    "train": {
        "max_steps": 2,
        "save_steps": 1,
        "save_total_limit": 2,
        "logging_steps": 1,
        "eval_steps": 0,
        "batch_size": 1,
        "grad_accum": 1,
    },
}
CLEARED = "clearing checkpoints"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    project = helpers.make_project(tmp_path_factory.mktemp("trained"), params=PARAMS, git=False)
    for name in ("ingest", "base", "prepare", "train"):
        helpers.stage(name, project)
    assert checkpoints.latest_complete(project / "models/checkpoints") is not None
    return project


def drop_last_row(project: Path) -> None:
    path = project / "data/processed/train.parquet"
    frame = pd.read_parquet(path)
    path.unlink()  # a read-only cache link in a DVC workspace; replaced, as a stage would
    frame.iloc[:-1].to_parquet(path, index=False)


def touch_code(project: Path, module: str) -> None:
    path = project / module
    path.write_text(path.read_text() + "\n# an edit\n")


CASES = {
    # a dep of the train stage changes: DVC reruns train, and the checkpoints are another run's
    "data file": (drop_last_row, True),
    "code file": (lambda project: touch_code(project, "finetune/files.py"), True),  # was missing from the old list
    # control: a file the train stage does not depend on leaves them to be resumed
    "another stage's code": (lambda project: touch_code(project, "stages/evaluate.py"), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_changed_input_clears_the_checkpoints(trained, tmp_path, case):
    project = tmp_path / "project"
    shutil.copytree(trained, project)
    change, clears = CASES[case]
    change(project)
    result = helpers.stage("train", project)
    assert (CLEARED in result.stdout) is clears, result.stdout
    assert ("resuming from" in result.stdout) is not clears, result.stdout
