"""The benchmarks' project plumbing with real stages and DVC (nothing is timed here): a stage's own peak memory,
its error, a git+dvc copy of the project."""

from __future__ import annotations

import resource
import subprocess

import pandas as pd
import pytest

from benchmarks import common
from helpers import REPO


def test_run_stage_runs_a_stage_and_measures_its_own_memory(tmp_path):
    project = common.copy_project(tmp_path / "copy")
    ballast = bytearray(1500 * 2**20)  # this process's peak RSS goes above 1.5 GB...
    ballast[::4096] = b"\1" * len(ballast[::4096])
    figures = common.run_stage("ingest", project)
    del ballast
    assert pd.read_parquet(project / "data/interim/ingested.parquet").shape[0] > 0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > 1500
    assert figures["peak_rss_mb"] < 1000  # ...and the stage's peak is not the parent's


def test_run_stage_failure_shows_the_stage_error(tmp_path):
    project = common.copy_project(tmp_path / "copy", {"data": {"path": "missing.parquet"}})
    with pytest.raises(SystemExit, match=r"stages\.ingest failed \(1\)(.|\n)*ingest: error: .*missing\.parquet"):
        common.run_stage("ingest", project)


def test_dvc_repo_keeps_the_projects_dvc_settings(tmp_path):
    from benchmarks import dvc

    project = common.copy_project(tmp_path / "copy")
    dvc.init_repo(project)
    assert (project / ".dvc/config").read_text() == (REPO / ".dvc/config").read_text()
    assert (project / ".dvc/plots").is_dir()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True, check=True)
    assert status.stdout == ""
