"""Reading the user's file: parquet / csv / json (a list of records) / jsonl, by extension, as object columns."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

READERS = (".parquet", ".csv", ".json", ".jsonl")


def read_any(path: str | os.PathLike) -> pd.DataFrame:
    """Read parquet / csv / json (list of records) / jsonl by extension, as object columns."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unknown extension {suffix!r}; expected one of {', '.join(READERS)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable parquet file ({e})") from e
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start  # in the file, BOM included
        raise DataError(f"{path}: not UTF-8 (invalid byte 0x{raw[offset]:02x} at byte offset {offset})") from e
    if not text.strip():
        raise DataError(f"{path}: file is empty (only whitespace)")
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".json":
        return _read_json_records(path, text)
    return _read_jsonl(path, text)


def _read_csv(path: Path, text: str) -> pd.DataFrame:
    import pandas as pd

    buffer = io.StringIO(text)
    # pandas renames a repeated header to "name.1": refuse instead, columns are never renamed.
    header = next(csv.reader(buffer), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header")
    buffer.seek(0)
    try:
        # keep_default_na=False: the text "NA" or "null" is data, not a missing value;
        # only a truly empty field counts as missing.
        frame = pd.read_csv(buffer, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: file has no header row") from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed CSV ({e})") from e
    return frame.astype(object).where(frame.notna(), None)


def _read_json_records(path: Path, text: str) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is {type(record).__name__}, expected an object")
    return _frame(data)


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    from tqdm.auto import tqdm

    records = []
    # Not splitlines(): it also splits at U+2028, U+0085 etc., which JSON allows unescaped in strings.
    lines = tqdm(text.split("\n"), desc=f"reading {path.name}", unit="lines", disable=None, leave=False)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from e
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {lineno} is {type(record).__name__}, expected an object")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return _frame(records)


def _frame(records: list[dict]) -> pd.DataFrame:
    import pandas as pd

    # dtype=object keeps each value as parsed: otherwise a column of ints with a null turns into
    # floats and the number 7 would become the text "7.0".
    return pd.DataFrame(records, dtype=object)
