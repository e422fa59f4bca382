"""finetune.data.readers: every supported format read as it is; an unreadable file -> a clear error."""

from __future__ import annotations

import pandas as pd
import pytest

from finetune.data import readers, schema
from finetune.errors import DataError
from inputs import COLUMNS, READER_ERRORS, ROWS, bad_input, canonical, records, texts, write


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
    frame = readers.read_any(path)
    assert list(frame.columns) == COLUMNS  # no "\ufeffinstruction"
    assert records(schema.canonicalize(frame, str(path), "drop")) == ROWS


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rows = [{"instruction": "a\u2028b\x85c", "output": "d\u2029e"}, {"instruction": "f", "output": "g"}]
    path = write(tmp_path / "seps.jsonl", rows)
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")  # trailing blank lines
    frame = canonical(path)
    assert texts(frame["instruction"]) == ["a\u2028b\x85c", "f"]
    assert texts(frame["output"]) == ["d\u2029e", "g"]


@pytest.mark.parametrize("name", list(READER_ERRORS))
def test_an_unreadable_file_raises_a_data_error_naming_file_and_problem(tmp_path, name):
    path, phrases = bad_input(tmp_path, name)
    with pytest.raises(DataError) as info:
        readers.read_any(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message
