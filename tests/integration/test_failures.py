"""End to end: each bad input and each bad param stops its stage with the exact error, touching no output.

One project copy is built per module (ingest, base, prepare run once for real); every case then
breaks params.yaml or points data.path at a bad file, runs the stage as `python -m stages.<name>`,
and checks the exit status, the message on stderr, and the sha256 of every file under the outputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from finetune.data.cleaning import REASONS
from helpers import make_project, stage, write_params

WATCHED = ("data/interim", "data/processed", "metrics", "models")
INTERIM = "data/interim/ingested.parquet"
AUTO = (
    " (format alpaca, chosen by data.format auto: no messages / conversations column; another name goes in "
    "data.columns)"
)

# Bad input files, relative to the project root; written once by the fixture.
BAD_FILES: dict[str, bytes] = {
    "data/bad/notes.txt": b"instruction,input,output\nq,,a\n",
    "data/bad/empty.csv": b"",
    "data/bad/no_output.csv": b"instruction,input,answer\nq,,a\n",
    "data/bad/capital_output.csv": b"instruction,input,Output\nq,,a\n",
    "data/bad/bad_line.jsonl": (
        b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": "e", "output": \n'
    ),
    "data/bad/latin1.csv": "instruction,input,output\nq,,café\n".encode("latin-1"),  # é at byte offset 31
    "data/bad/dict.json": b'{"instruction": "a", "output": "b"}',
    "data/bad/no_outputs.csv": b"instruction,input,output\nq1,,\nq2,,\nq3,,\n",  # ingest takes it; prepare can't
}


@dataclass
class Case:
    id: str
    stage: str
    params: dict
    expected: str | Callable[[dict], str]
    """The exact message after `<stage>: error: ` (a function of metrics/data.json when it has counts)."""
    names: str
    """The key or file the message must name."""
    ingest_first: bool = False
    """Run ingest on params first (it succeeds), so the bad data reaches this stage."""


def params_error(*lines: str) -> str:
    return f"params.yaml: {len(lines)} problem(s):\n" + "\n".join(f"  {line}" for line in lines)


def data_path(path: str) -> dict:
    return {"data": {"path": path}}


def too_many_drops(counts: dict) -> str:
    dropped = ", ".join(f"{r}={counts[f'dropped.{r}']}" for r in REASONS if counts[f"dropped.{r}"])  # check order
    share = counts["dropped_total"] / counts["rows_read"]
    return (
        f"{INTERIM}: cleaning dropped {counts['dropped_total']} of {counts['rows_read']} rows "
        f"({share:.0%} > prepare.max_drop_fraction 0%); dropped: {dropped}"
    )


CASES = [
    # --- bad params, one stage each ---
    Case(
        "ingest-extra_columns",
        "ingest",
        {"data": {"extra_columns": "maybe"}},
        params_error("data.extra_columns must be one of drop, keep, got 'maybe'"),
        "data.extra_columns",
    ),
    Case(
        "prepare-test_fraction",
        "prepare",
        {"prepare": {"test_fraction": 1.5}},
        params_error("prepare.test_fraction must be in (0, 1), got 1.5"),
        "prepare.test_fraction",
    ),
    Case(
        "prepare-n",
        "prepare",
        {"prepare": {"n": 0}},
        params_error("prepare.n must be >= 3 (at least one train, one val and one test row), got 0"),
        "prepare.n",
    ),
    Case(
        "prepare-too_long",
        "prepare",
        {"prepare": {"too_long": "cut"}},
        params_error("prepare.too_long must be one of drop, truncate, got 'cut'"),
        "prepare.too_long",
    ),
    Case("train-lr", "train", {"lr": -1}, params_error("lr must be > 0, got -1"), "lr"),
    Case(
        "train-lerning_rate",
        "train",
        {"train": {"lerning_rate": 2e-5}},
        params_error("unknown key train.lerning_rate (did you mean the top-level lr?)"),
        "train.lerning_rate",
    ),
    Case(
        "train-quantization",
        "train",
        {"model": {"quantization": "3bit"}},
        params_error("model.quantization must be one of 8bit, 4bit, none, got '3bit'"),
        "model.quantization",
    ),
    Case(
        "train-lora.r",
        "train",
        {"train": {"lora": {"r": 0}}},
        params_error("train.lora.r must be >= 1, got 0"),
        "train.lora.r",
    ),
    Case(
        "train-several",
        "train",
        {"lr": "fast", "prepare": {"max_length": 4}, "train": {"lora": {"rr": 4}}},
        params_error(
            "lr must be a number, got 'fast'",
            "prepare.max_length must be >= 8, got 4",
            "unknown key train.lora.rr (did you mean r?)",
        ),
        "train.lora.rr",
    ),
    # checked by transformers' SFTConfig, before checkpoints are touched
    Case(
        "train-optim",
        "train",
        {"train": {"optim": "adamw_8bitt"}},
        params_error(
            "train.optim must be one of transformers' optimizer names, got 'adamw_8bitt' (did you mean adamw_8bit?)"
        ),
        "train.optim",
    ),
    # --- bad input files for ingest ---
    Case(
        "ingest-missing-file",
        "ingest",
        data_path("data/bad/nope.csv"),
        "data/bad/nope.csv: file not found",
        "data/bad/nope.csv",
    ),
    Case(
        "ingest-txt",
        "ingest",
        data_path("data/bad/notes.txt"),
        "data/bad/notes.txt: unknown extension '.txt'; expected one of .parquet, .csv, .json, .jsonl",
        "data/bad/notes.txt",
    ),
    Case(
        "ingest-empty",
        "ingest",
        data_path("data/bad/empty.csv"),
        "data/bad/empty.csv: file is empty",
        "data/bad/empty.csv",
    ),
    Case(
        "ingest-no-output-column",
        "ingest",
        data_path("data/bad/no_output.csv"),
        "data/bad/no_output.csv: required column(s) output missing; found: instruction, input, answer" + AUTO,
        "data/bad/no_output.csv",
    ),
    Case(
        "ingest-Output-column",
        "ingest",
        data_path("data/bad/capital_output.csv"),
        "data/bad/capital_output.csv: required column(s) output missing; found: instruction, input, Output "
        "('Output' looks like 'output' but columns are never renamed)" + AUTO,
        "data/bad/capital_output.csv",
    ),
    Case(
        "ingest-jsonl-line-3",
        "ingest",
        data_path("data/bad/bad_line.jsonl"),
        "data/bad/bad_line.jsonl: line 3 is not valid JSON (Expecting value)",
        "data/bad/bad_line.jsonl",
    ),
    Case(
        "ingest-not-utf8",
        "ingest",
        data_path("data/bad/latin1.csv"),
        "data/bad/latin1.csv: not UTF-8 (invalid byte 0xe9 at byte offset 31)",
        "data/bad/latin1.csv",
    ),
    Case(
        "ingest-json-dict",
        "ingest",
        data_path("data/bad/dict.json"),
        "data/bad/dict.json: expected a JSON list of records, found dict",
        "data/bad/dict.json",
    ),
    # --- data that only prepare can judge ---
    Case(
        "prepare-nothing-survives",
        "prepare",
        data_path("data/bad/no_outputs.csv"),
        f"{INTERIM}: 0 row(s) survive cleaning (need at least 3 to split); dropped: missing_output=3",
        INTERIM,
        ingest_first=True,
    ),
    Case("prepare-too-many-drops", "prepare", {"prepare": {"max_drop_fraction": 0.0}}, too_many_drops, INTERIM),
]


def sha256s(project: Path) -> dict[str, str]:
    """sha256 of every file under the stages' output folders, by path."""
    digests = {}
    for folder in WATCHED:
        for path in sorted((project / folder).rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    project = make_project(tmp_path_factory.mktemp("failures"), git=False)
    for name in ("ingest", "base", "prepare"):
        stage(name, project)
    # Stand-ins for train's outputs: a train that got past params.load would clear or replace them.
    for rel, text in {
        "models/adapter/adapter_config.json": "{}\n",
        "models/checkpoints/fingerprint.json": '{"fingerprint": "an earlier run"}\n',
        "metrics/train.json": "{}\n",
    }.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    for rel, content in BAD_FILES.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(content)
    return {
        "project": project,
        "params": (project / "params.yaml").read_bytes(),
        "interim": (project / INTERIM).read_bytes(),
        "counts": json.loads((project / "metrics/data.json").read_text()),
        "outputs": sha256s(project),
    }


def test_setup_has_outputs_and_drops(built):
    watched = built["outputs"]
    for rel in (
        INTERIM,
        "data/processed/train.parquet",
        "data/processed/val.parquet",
        "data/processed/test.parquet",
        "metrics/data.json",
        "models/base/config.json",
        "models/adapter/adapter_config.json",
    ):
        assert rel in watched
    assert built["counts"]["dropped_total"] > 0  # the too-many-drops case needs some


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_or_param_fails_cleanly(built, case: Case):
    project = built["project"]
    try:
        write_params(project, case.params)
        if case.ingest_first:
            stage("ingest", project)
            assert (project / INTERIM).read_bytes() != built["interim"]
            before = sha256s(project)
        else:
            before = built["outputs"]
            assert sha256s(project) == before  # the previous case restored everything
        result = stage(case.stage, project, check=False)

        expected = case.expected(built["counts"]) if callable(case.expected) else case.expected
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.rstrip("\n").endswith(f"{case.stage}: error: {expected}"), result.stderr
        message = result.stderr.split(f"{case.stage}: error: ", 1)[1]
        assert case.names in message
        assert sha256s(project) == before, "a failed stage changed an output file"
        if case.stage == "train":
            # Failed before loading a model, clearing checkpoints (sha256s above) or printing progress.
            assert "train:" not in result.stdout
    finally:
        (project / "params.yaml").write_bytes(built["params"])
        (project / INTERIM).write_bytes(built["interim"])


def test_outputs_unchanged_after_all_cases(built):
    assert sha256s(built["project"]) == built["outputs"]
