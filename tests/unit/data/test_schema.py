"""finetune.data.schema: any table read -> one canonical frame of text columns; a bad schema or cell -> a clear
error naming its row and column."""

from __future__ import annotations

import pandas as pd
import pytest

from finetune.data import readers, schema
from finetune.errors import DataError
from inputs import COLUMNS, ROWS, SCHEMA_ERRORS, bad_input, canonical, records, texts, write


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


@pytest.mark.parametrize("columns", [["instruction", "output", "output"], ["instruction", "output", 1, "1"]])
def test_repeated_column_names_are_an_error(columns):
    frame = pd.DataFrame([["a", "b", "c", "d"][: len(columns)]], columns=columns)
    with pytest.raises(DataError, match=r"mem: column\(s\) '(output|1)' appear more than once"):
        schema.canonicalize(frame, "mem", "keep")


def test_canonicalize_leaves_the_callers_frame_alone():
    frame = pd.DataFrame({"instruction": ["a"], "output": ["b"], 3: ["c"]})
    schema.canonicalize(frame, "mem", "keep")
    assert list(frame.columns) == ["instruction", "output", 3]


@pytest.mark.parametrize("name", list(SCHEMA_ERRORS))
def test_bad_schema_or_cell_raises_a_data_error_naming_file_and_problem(tmp_path, name):
    path, phrases = bad_input(tmp_path, name)
    readers.read_any(path)  # a readable file: the table it holds is what is wrong
    with pytest.raises(DataError) as info:
        canonical(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message
