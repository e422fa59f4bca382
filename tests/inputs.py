"""User input files for the data tests (tests/unit/data) and the ingest stage's (tests/integration): rows in
every supported format, and bad files with the phrases their error must hold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from finetune.data import readers, schema

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
    """What ingest makes of a file: read by extension, then the schema checked and every cell made text."""
    return schema.canonicalize(readers.read_any(path), str(path), extra_columns)


def texts(column: pd.Series) -> list:
    """A column's values, missing as None."""
    return column.astype(object).where(column.notna(), None).tolist()


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _text(content: str):
    return lambda path: path.write_text(content, encoding="utf-8")


def _bytes(content: bytes):
    return lambda path: path.write_bytes(content)


def _rows(*rows: dict):
    return lambda path: write(path, list(rows))


LATIN1_CSV = "instruction,output\ncaf\u00e9,b\n".encode("latin-1")  # é is byte 22
# name -> (file name, how to write it or None for no file, phrases the error holds besides the path).
# Reading the file (finetune.data.readers) fails on these:
READER_ERRORS = {
    "missing file": ("nowhere.csv", None, ["file not found"]),
    "unknown extension": (
        "data.txt",
        _text("instruction,output\na,b\n"),
        ["unknown extension '.txt'", ".parquet, .csv, .json, .jsonl"],
    ),
    **{
        f"empty {suffix}": (f"empty{suffix}", _bytes(b""), ["file is empty"])
        for suffix in (".parquet", ".csv", ".json", ".jsonl")
    },
    "whitespace-only json": ("blank.json", _text(" \n\t\n"), ["file is empty"]),
    "jsonl line not json": (
        "bad.jsonl",
        _text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"\n'),
        ["line 3 is not valid JSON"],
    ),  # blank lines count
    "jsonl line not an object": (
        "array.jsonl",
        _text('{"instruction": "a", "output": "b"}\n["c", "d"]\n'),
        ["line 2 is list, expected an object"],
    ),
    "csv not utf-8": ("latin1.csv", _bytes(LATIN1_CSV), ["not UTF-8", "0xe9", "byte offset 22"]),
    "csv not utf-8 after a bom": (
        "bom.csv",
        _bytes(b"\xef\xbb\xbf" + LATIN1_CSV),
        ["not UTF-8", "0xe9", "byte offset 25"],
    ),  # the offset counts the BOM
    "json object, not a list": (
        "object.json",
        _text(json.dumps({"instruction": "a", "output": "b"})),
        ["expected a JSON list of records, found dict"],
    ),
    "json list of strings": ("strings.json", _text(json.dumps(["a", "b"])), ["record 0 is str, expected an object"]),
    "invalid json": ("broken.json", _text('[\n{"instruction": "a",\n "output": }]'), ["invalid JSON at line 3"]),
    "repeated csv header": ("dup.csv", _text("instruction,output,output\na,b,c\n"), ["'output' appear more than once"]),
    "malformed csv": ("ragged.csv", _text("instruction,output\na,b\nc,d,e,f\n"), ["malformed CSV"]),
    "corrupt parquet": ("corrupt.parquet", _bytes(b"PAR1 this is not parquet"), ["not a readable parquet file"]),
}
# ... and the table read, checking its schema and cells (finetune.data.schema) fails on these:
SCHEMA_ERRORS = {
    "csv header without rows": ("header.csv", _text("instruction,input,output\n"), ["no rows"]),
    "missing column": (
        "nocol.csv",
        _rows({"instruction": "a", "input": "", "response": "b"}),
        ["required column(s) output missing", "found: instruction, input, response"],
    ),
    "near-miss column names": (
        "near.jsonl",
        _rows({"Instruction": "a", "Output": "b"}),
        [
            "instruction, output missing",
            "found: Instruction, Output",
            "'Output' looks like 'output' but columns are never renamed",
        ],
    ),
    "dict cell": (
        "dict.json",
        _rows(ROWS[0], {"instruction": "x", "output": {"text": "y"}}),
        ["row 2, column 'output'", "expected text, found dict"],
    ),
    "list cell": (
        "list.jsonl",
        _rows({"instruction": ["a", "b"], "output": "y"}),
        ["row 1, column 'instruction'", "expected text, found list"],
    ),
    "array cell in parquet": (
        "list.parquet",
        _rows({"instruction": ["a"], "output": "x"}),
        ["row 1, column 'instruction'", "expected text, found ndarray"],
    ),
}
BAD_INPUTS = {**READER_ERRORS, **SCHEMA_ERRORS}


def bad_input(tmp: Path, name: str) -> tuple[Path, list[str]]:
    file_name, writer, phrases = BAD_INPUTS[name]
    path = tmp / file_name
    if writer:
        writer(path)
    return path, phrases
