"""scripts/sample_data.py run as a script or a module writes the committed data/raw files."""

from __future__ import annotations

import sys

import pytest

from helpers import REPO, run

RAW = REPO / "data" / "raw"
FILES = ("finance_alpaca.parquet", "finance_alpaca.csv")


def committed() -> dict[str, bytes]:
    return {name: (RAW / name).read_bytes() for name in FILES}


@pytest.mark.parametrize("how", [["scripts/sample_data.py"], ["-m", "scripts.sample_data"]])
def test_runs_as_a_script_or_a_module(tmp_path, how):
    result = run([sys.executable, *how, "--out", str(tmp_path)], cwd=REPO)
    assert "sample_data: wrote" in result.stdout and "(1200 rows)" in result.stdout
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == committed()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temp files left behind
