"""The benchmarks' code still runs (nothing is timed here): train's inputs, the shared project plumbing, the CLI.
tests/integration/test_benchmark_stages.py runs stages and DVC through it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pandas as pd

from benchmarks import common
from helpers import PROJECT_FILES, REPO, env


def test_train_inputs_are_cleaned_and_split_as_prepare_does(tmp_path):
    from benchmarks import train
    from finetune.data import identity, readers

    rows = readers.read_any(str(common.EMBEDDED_SAMPLE)).head(60)
    inputs = train.make_inputs(tmp_path, n_train=8, n_eval=4, rows=rows)
    train_rows, eval_rows = (pd.read_parquet(inputs[key]) for key in ("train_path", "eval_path"))
    assert (len(train_rows), len(eval_rows)) == (8, 4)
    train_prompts, eval_prompts = (set(identity.prompt_identities(f).to_pylist()) for f in (train_rows, eval_rows))
    assert len(train_prompts) == 8 and not train_prompts & eval_prompts


def test_deep_update_merges_nested_keys_and_leaves_base_alone():
    base = {"model": {"tiny": {"hidden_size": 128, "num_layers": 2}, "base": "tiny"}, "lr": 1e-5, "data": "x"}
    out = common.deep_update(base, {"model": {"tiny": {"hidden_size": 8}}, "lr": 3e-3, "data": {"path": "y"}})
    assert out == {
        "model": {"tiny": {"hidden_size": 8, "num_layers": 2}, "base": "tiny"},
        "lr": 3e-3,
        "data": {"path": "y"},
    }
    assert base["model"]["tiny"]["hidden_size"] == 128


def test_copy_project_changes_only_the_params_asked(tmp_path):
    import yaml

    project = common.copy_project(tmp_path / "copy", {"model": {"tiny": {"hidden_size": 8}}})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["tiny"]["hidden_size"] = 8
    assert yaml.safe_load((project / "params.yaml").read_text()) == params
    assert (project / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()
    assert (project / "stages/ingest.py").is_file() and (project / ".dvc/plots").is_dir()
    assert (project / "finetune/data/readers.py").is_file()  # the library the stages import
    assert all((project / name).exists() for name in PROJECT_FILES)


def test_command_line_lists_every_benchmark():
    from benchmarks.__main__ import BENCHMARKS

    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--help"], cwd=REPO, env=env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "{" + ",".join(sorted(BENCHMARKS)) + "}" in out.stdout
    for name in BENCHMARKS:
        assert callable(importlib.import_module(f"benchmarks.{name}").run)


def test_isolated_peak_memory_is_the_childs_own():
    """A spawned child's ru_maxrss starts at its parent's peak; the figure must not (parent here: +400 MB)."""
    import os

    import numpy as np

    ballast = np.ones(400 * 2**20 // 8)
    parent_peak = common.status_mb("VmHWM")
    child = common.isolated(os.getpid)
    assert child["result"] != os.getpid()
    assert child["peak_rss_mb"] < parent_peak - 300, (child, parent_peak)
    del ballast
