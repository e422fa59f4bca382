"""ingest: every supported format -> one canonical frame; bad input -> a clear error and no output."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import env, make_project, stage, write_params
from stages import ingest, io

# Embedded newlines, commas, quotes, non-ASCII and texts pandas likes to turn into NaN.
ROWS = [
    {"instruction": "Define APR.", "input": None, "output": "APR is the yearly cost of a loan."},
    {"instruction": 'Split "a, b"\ninto parts.', "input": "a, b\r\nc", "output": "a\nb, c"},
    {"instruction": "Translate to French", "input": "café, s'il vous plaît", "output": "NA"},
    {"instruction": "What is null?", "input": "N/A", "output": "null"},
]
COLUMNS = ["instruction", "input", "output"]


def write(path: Path, rows: list[dict], **csv_options) -> Path:
    """rows in the format named by path's extension (None -> null / an empty CSV field)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    elif suffix == ".csv":
        with path.open("w", newline="", encoding=csv_options.pop("encoding", "utf-8")) as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), **csv_options)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def canonical(path: Path, extra_columns: str = "drop") -> pd.DataFrame:
    return ingest.canonicalize(io.read_any(path), str(path), extra_columns)


def texts(column: pd.Series) -> list:
    """A column's values, missing as None."""
    return column.astype(object).where(column.notna(), None).tolist()


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json", ".jsonl"])
def test_every_format_gives_the_same_canonical_rows(tmp_path, suffix):
    frame = canonical(write(tmp_path / f"data{suffix}", ROWS))
    assert list(frame.columns) == COLUMNS
    assert records(frame) == ROWS  # "NA", "N/A" and "null" stay text; \r\n inside a field survives
    assert all(dtype == "string" for dtype in frame.dtypes)  # nullable text: str or <NA>, nothing else
    assert all(isinstance(v, str) or v is pd.NA for v in frame.to_numpy().ravel())


def test_extension_is_case_insensitive(tmp_path):
    assert records(canonical(write(tmp_path / "DATA.JSON", ROWS))) == ROWS


@pytest.mark.parametrize("bom", [False, True], ids=["no-bom", "bom"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_csv_utf8_with_or_without_bom_and_quoted_fields(tmp_path, bom, newline):
    path = write(tmp_path / "data.csv", ROWS, encoding="utf-8-sig" if bom else "utf-8", lineterminator=newline)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf") == bom
    frame = io.read_any(path)
    assert list(frame.columns) == COLUMNS  # no "\ufeffinstruction"
    assert records(ingest.canonicalize(frame, str(path), "drop")) == ROWS


def test_input_column_is_optional(tmp_path):
    rows = [{"instruction": r["instruction"], "output": r["output"]} for r in ROWS]
    frame = canonical(write(tmp_path / "data.jsonl", rows))
    assert list(frame.columns) == COLUMNS
    assert frame["input"].isna().all()


def test_numbers_and_bools_become_their_text(tmp_path):
    # A column of ints with a null must not turn into floats ("7" -> "7.0").
    rows = [
        {"instruction": "Add 3 and 4.", "input": None, "output": 7},
        {"instruction": "Pi?", "input": 2, "output": 3.25},
        {"instruction": "True?", "input": None, "output": True},
        {"instruction": "Nothing", "input": None, "output": None},
    ]
    for suffix in (".json", ".jsonl"):
        frame = canonical(write(tmp_path / f"numbers{suffix}", rows))
        assert texts(frame["output"]) == ["7", "3.25", "true", None]
        assert texts(frame["input"]) == [None, "2", None, None]


def test_parquet_with_pandas_string_dtype_and_nulls(tmp_path):
    """pd.NA cells (pandas' "string" dtype, as ingest itself writes) are missing values, not errors."""
    path = tmp_path / "strings.parquet"
    pd.DataFrame(ROWS).astype("string").to_parquet(path, index=False)
    assert records(canonical(path)) == ROWS


def test_parquet_number_columns_become_text(tmp_path):
    path = tmp_path / "ints.parquet"
    pd.DataFrame({"instruction": ["a", "b"], "output": pd.array([1, None], dtype="Int64")}).to_parquet(path)
    assert texts(canonical(path)["output"]) == ["1", None]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_extra_columns_kept_unchanged_or_dropped(tmp_path, suffix):
    rows = [dict(r, Source=f"src {i}", category=None if i else "x") for i, r in enumerate(ROWS)]
    path = write(tmp_path / f"extra{suffix}", rows)
    kept = canonical(path, "keep")
    assert list(kept.columns) == COLUMNS + ["Source", "category"]  # same names, never renamed
    assert texts(kept["Source"]) == [f"src {i}" for i in range(len(ROWS))]
    assert texts(kept["category"]) == ["x", None, None, None]
    assert list(canonical(path, "drop").columns) == COLUMNS


def test_non_text_extra_columns_are_kept_as_json_text(tmp_path):
    rows = [dict(ROWS[0], meta={"id": 1, "tags": ["a"]}, score=5), dict(ROWS[1], meta=None, score=None)]
    kept = canonical(write(tmp_path / "meta.jsonl", rows), "keep")
    assert texts(kept["meta"]) == ['{"id": 1, "tags": ["a"]}', None]
    assert texts(kept["score"]) == ["5", None]


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rows = [{"instruction": "a\u2028b\x85c", "output": "d\u2029e"}, {"instruction": "f", "output": "g"}]
    path = write(tmp_path / "seps.jsonl", rows)
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")  # trailing blank lines
    frame = canonical(path)
    assert texts(frame["instruction"]) == ["a\u2028b\x85c", "f"]
    assert texts(frame["output"]) == ["d\u2029e", "g"]


@pytest.mark.parametrize("columns", [["instruction", "output", "output"], ["instruction", "output", 1, "1"]])
def test_repeated_column_names_are_an_error(columns):
    frame = pd.DataFrame([["a", "b", "c", "d"][: len(columns)]], columns=columns)
    with pytest.raises(io.DataError, match=r"mem: column\(s\) '(output|1)' appear more than once"):
        ingest.canonicalize(frame, "mem", "keep")


def test_canonicalize_leaves_the_callers_frame_alone():
    frame = pd.DataFrame({"instruction": ["a"], "output": ["b"], 3: ["c"]})
    ingest.canonicalize(frame, "mem", "keep")
    assert list(frame.columns) == ["instruction", "output", 3]


# ---------------------------------------------------------------- bad input


def _text(content: str):
    return lambda path: path.write_text(content, encoding="utf-8")


def _bytes(content: bytes):
    return lambda path: path.write_bytes(content)


def _rows(*rows: dict):
    return lambda path: write(path, list(rows))


LATIN1_CSV = "instruction,output\ncaf\u00e9,b\n".encode("latin-1")  # é is byte 22
# name -> (file name, how to write it or None for no file, phrases the error holds besides the path)
BAD_INPUTS = {
    "missing file": ("nowhere.csv", None, ["file not found"]),
    "unknown extension": ("data.txt", _text("instruction,output\na,b\n"),
                          ["unknown extension '.txt'", ".parquet, .csv, .json, .jsonl"]),
    **{f"empty {suffix}": (f"empty{suffix}", _bytes(b""), ["file is empty"])
       for suffix in (".parquet", ".csv", ".json", ".jsonl")},
    "whitespace-only json": ("blank.json", _text(" \n\t\n"), ["file is empty"]),
    "csv header without rows": ("header.csv", _text("instruction,input,output\n"), ["no rows"]),
    "missing column": ("nocol.csv", _rows({"instruction": "a", "input": "", "response": "b"}),
                       ["required column(s) output missing", "found: instruction, input, response"]),
    "near-miss column names": ("near.jsonl", _rows({"Instruction": "a", "Output": "b"}),
                               ["instruction, output missing", "found: Instruction, Output",
                                "'Output' looks like 'output' but columns are never renamed"]),
    "dict cell": ("dict.json", _rows(ROWS[0], {"instruction": "x", "output": {"text": "y"}}),
                  ["row 2, column 'output'", "expected text, found dict"]),
    "list cell": ("list.jsonl", _rows({"instruction": ["a", "b"], "output": "y"}),
                  ["row 1, column 'instruction'", "expected text, found list"]),
    "array cell in parquet": ("list.parquet", _rows({"instruction": ["a"], "output": "x"}),
                              ["row 1, column 'instruction'", "expected text, found ndarray"]),
    "jsonl line not json": ("bad.jsonl", _text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"\n'),
                            ["line 3 is not valid JSON"]),  # blank lines count
    "jsonl line not an object": ("array.jsonl", _text('{"instruction": "a", "output": "b"}\n["c", "d"]\n'),
                                 ["line 2 is list, expected an object"]),
    "csv not utf-8": ("latin1.csv", _bytes(LATIN1_CSV), ["not UTF-8", "0xe9", "byte offset 22"]),
    "csv not utf-8 after a bom": ("bom.csv", _bytes(b"\xef\xbb\xbf" + LATIN1_CSV),
                                  ["not UTF-8", "0xe9", "byte offset 25"]),  # the offset counts the BOM
    "json object, not a list": ("object.json", _text(json.dumps({"instruction": "a", "output": "b"})),
                                ["expected a JSON list of records, found dict"]),
    "json list of strings": ("strings.json", _text(json.dumps(["a", "b"])), ["record 0 is str, expected an object"]),
    "invalid json": ("broken.json", _text('[\n{"instruction": "a",\n "output": }]'), ["invalid JSON at line 3"]),
    "repeated csv header": ("dup.csv", _text("instruction,output,output\na,b,c\n"), ["'output' appear more than once"]),
    "malformed csv": ("ragged.csv", _text("instruction,output\na,b\nc,d,e,f\n"), ["malformed CSV"]),
    "corrupt parquet": ("corrupt.parquet", _bytes(b"PAR1 this is not parquet"), ["not a readable parquet file"]),
}


def bad_input(tmp: Path, name: str) -> tuple[Path, list[str]]:
    file_name, writer, phrases = BAD_INPUTS[name]
    path = tmp / file_name
    if writer:
        writer(path)
    return path, phrases


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_a_data_error_naming_file_and_problem(tmp_path, name):
    path, phrases = bad_input(tmp_path, name)
    with pytest.raises(io.DataError) as info:
        canonical(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message


# ---------------------------------------------------------------- atomic writes


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_path_replaces_a_file_and_cleans_up(tmp_path):
    target = tmp_path / "out" / "f.json"
    io.write_json(target, {"a": 1})
    io.write_json(target, {"a": 2})
    assert io.read_json(target) == {"a": 2}
    assert _leftovers(target.parent) == []


def test_atomic_path_error_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.parquet"
    io.write_parquet(target, pd.DataFrame({"a": ["old"]}))
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    # A writer that fails half way (pyarrow cannot store this object column) keeps it too.
    with pytest.raises(Exception):
        io.write_parquet(target, pd.DataFrame({"a": [object()]}))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "model"
    with io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "old_only.bin").write_text("1")
        (tmp / "weights.bin").write_text("old")
    with io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]  # nothing of the old one left
    assert (target / "weights.bin").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_error_keeps_the_old_directory(tmp_path):
    target = tmp_path / "model"
    with io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(target) as tmp:
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
    io.write_json(target, {"a": 1})
    assert _leftovers(tmp_path) == sorted(others)


# ---------------------------------------------------------------- the stage as a subprocess

OUT = Path(ingest.OUT)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, bytes]:
    """A project copy where ingest already ran on the embedded sample; the output's bytes."""
    project = make_project(tmp_path_factory.mktemp("ingest"), git=False)
    result = stage("ingest", cwd=project)
    assert f"ingest: 1200 rows from data/raw/finance_alpaca.parquet -> {ingest.OUT}" in result.stdout
    return project, (project / OUT).read_bytes()


@pytest.mark.slow
def test_stage_writes_string_columns(ingested):
    project, _ = ingested
    frame = pd.read_parquet(project / OUT)
    assert list(frame.columns) == COLUMNS
    assert all(isinstance(dtype, pd.StringDtype) for dtype in frame.dtypes)
    assert len(frame) == 1200
    assert records(canonical(project / OUT)) == records(frame)  # its own output reads back unchanged


# A few of BAD_INPUTS end to end (tests/test_failures.py runs the others' exact messages).
@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "missing file", "dict cell", "jsonl line not json", "csv not utf-8 after a bom", "repeated csv header",
])
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


@pytest.mark.slow
def test_killed_mid_write_leaves_the_old_output(tmp_path):
    project = make_project(tmp_path, git=False)
    stage("ingest", cwd=project)
    out = project / OUT
    before = out.read_bytes()
    big = tmp_path / "big.csv"
    with big.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows([f"Question {i}: what is {i} + 1?", "" if i % 3 else f"context {i}",
                          f"The answer is {i + 1}, one more than {i}."] for i in range(300_000))
    write_params(project, {"data": {"path": str(big)}})

    # Kill as soon as the output's temp file exists: parquet bytes are being written. If the
    # machine is so fast that the write finished between two polls, try again.
    for _ in range(3):
        earlier = set(os.listdir(out.parent))
        process = subprocess.Popen([sys.executable, "-m", "stages.ingest"], cwd=project, env=env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
