"""`python -m stages.ingest`: the embedded sample -> one canonical parquet; bad input -> a clear error and the
old output kept, even when the stage is killed mid-write."""

from __future__ import annotations

import csv
import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from finetune import paths
from helpers import env, make_project, stage, write_params
from inputs import COLUMNS, bad_input, canonical, records

OUT = Path(paths.INGESTED)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, bytes]:
    """A project copy where ingest already ran on the embedded sample; the output's bytes."""
    project = make_project(tmp_path_factory.mktemp("ingest"), git=False)
    result = stage("ingest", cwd=project)
    assert f"ingest: 1200 rows from data/raw/finance_alpaca.parquet -> {paths.INGESTED}" in result.stdout
    return project, (project / OUT).read_bytes()


def test_stage_writes_string_columns(ingested):
    project, _ = ingested
    frame = pd.read_parquet(project / OUT)
    assert list(frame.columns) == COLUMNS
    assert all(isinstance(dtype, pd.StringDtype) for dtype in frame.dtypes)
    assert len(frame) == 1200
    assert records(canonical(project / OUT)) == records(frame)  # its own output reads back unchanged


# A few of tests/inputs.py's bad files end to end (test_failures.py runs the others' exact messages).
@pytest.mark.parametrize(
    "name",
    [
        "missing file",
        "dict cell",
        "jsonl line not json",
        "csv not utf-8 after a bom",
        "repeated csv header",
    ],
)
def test_stage_fails_on_bad_input_and_keeps_the_old_output(ingested, tmp_path, name):
    project, before = ingested
    path, phrases = bad_input(tmp_path, name)
    write_params(project, {"data": {"path": str(path)}})
    result = stage("ingest", cwd=project, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"ingest: error: {path}" in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr
    assert (project / OUT).read_bytes() == before
    assert [p.name for p in (project / OUT.parent).iterdir()] == [OUT.name]


def test_killed_mid_write_leaves_the_old_output(tmp_path):
    project = make_project(tmp_path, git=False)
    stage("ingest", cwd=project)
    out = project / OUT
    before = out.read_bytes()
    big = tmp_path / "big.csv"
    with big.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(
            [
                f"Question {i}: what is {i} + 1?",
                "" if i % 3 else f"context {i}",
                f"The answer is {i + 1}, one more than {i}.",
            ]
            for i in range(300_000)
        )
    write_params(project, {"data": {"path": str(big)}})

    # Kill as soon as the output's temp file exists: parquet bytes are being written. If the
    # machine is so fast that the write finished between two polls, try again.
    for _ in range(3):
        earlier = set(os.listdir(out.parent))
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.ingest"],
            cwd=project,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        killed = False
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            temps = [out.parent / n for n in os.listdir(out.parent) if n.endswith(".tmp") and n not in earlier]
            if any((t / out.name).exists() for t in temps):
                process.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.001)
        if process.poll() is None:
            process.kill()
        if process.wait() == -signal.SIGKILL and killed:
            break
        out.write_bytes(before)  # it finished: put the old output back and retry
    else:
        pytest.fail("ingest always finished before it could be killed mid-write")

    assert out.read_bytes() == before
    stray = [p.name for p in out.parent.iterdir() if p.name not in (out.name, ".gitignore")]
    assert stray and all(name.startswith(f".{out.name}.") and name.endswith(".tmp") for name in stray)
    assert glob.glob(str(out.parent / "*")) == [str(out)]  # a shell-style glob never sees them
    assert len(pd.read_parquet(out)) == 1200

    # The next run finishes normally and removes what the killed one left behind.
    write_params(project, {"data": {"path": "data/raw/finance_alpaca.parquet"}})
    stage("ingest", cwd=project)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir() if p.name != ".gitignore"] == [out.name]
