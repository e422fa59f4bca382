"""The user's table -> one canonical table of text columns (instruction, input, output): the schema checked,
every cell converted to text or refused with its row and column."""

from __future__ import annotations

import difflib
import json
import math

import pandas as pd
from tqdm.auto import tqdm

from finetune.errors import DataError

REQUIRED = ("instruction", "output")
TEXT_COLUMNS = ("instruction", "input", "output")  # input may be absent: prepare fills it with ""


def check_columns(frame: pd.DataFrame, source: str) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if not missing:
        return
    found = ", ".join(map(str, frame.columns)) or "(none)"
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, [str(c) for c in frame.columns], n=1, cutoff=0.6)
        if close:
            hints.append(f"{close[0]!r} looks like {name!r} but columns are never renamed")  # unless data.columns
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise DataError(f"{source}: required column(s) {', '.join(missing)} missing; found: {found}{hint}")


def as_text(value, source: str, row: int, column: str) -> str | None:
    """A cell as text: None stays missing; numbers become their decimal text; containers are errors."""
    if _missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{source}: row {row}, column {column!r}: bytes that are not UTF-8 text") from None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return as_text(value.item(), source, row, column)
    raise DataError(
        f"{source}: row {row}, column {column!r}: expected text, found {type(value).__name__} {_short(value)}"
    )


def canonicalize(frame: pd.DataFrame, source: str, extra_columns: str) -> pd.DataFrame:
    """Validate the schema and return instruction/input/output as nullable text (+ extras if kept)."""
    if frame.empty:
        raise DataError(f"{source}: no rows")
    frame = frame.rename(columns=str)  # a copy: the caller's frame keeps its column names
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise DataError(f"{source}: column(s) {', '.join(map(repr, repeated))} appear more than once")
    check_columns(frame, source)
    out = {}
    for column in TEXT_COLUMNS:
        if column in frame.columns:
            out[column] = text_column(frame[column], lambda v, i: as_text(v, source, i + 1, column))  # 1-based rows
        else:
            out[column] = pd.Series([None] * len(frame), dtype="string")
    if extra_columns == "keep":
        for column in frame.columns:
            if column not in TEXT_COLUMNS:
                out[column] = text_column(frame[column], lambda v, i: _extra_as_text(v))
    # pandas' "string" dtype: text, or <NA> where missing, in every column.
    return pd.DataFrame({name: values.reset_index(drop=True) for name, values in out.items()})


def text_column(values: pd.Series, convert) -> pd.Series:
    """values as "string": a column of text and missing values as it is, any other cell by convert(value, row)."""
    if isinstance(values.dtype, pd.StringDtype) or (
        values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")
    ):
        return values.astype("string")
    cells = tqdm(values.tolist(), desc=f"column {values.name}", unit="rows", disable=None, leave=False)
    return pd.Series([convert(v, i) for i, v in enumerate(cells)], dtype="string")


def _missing(value) -> bool:
    # pd.NA is what a parquet written from pandas' "string" dtype (ingest's own output) holds.
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _extra_as_text(value) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value.tolist() if hasattr(value, "tolist") else value, ensure_ascii=False)
    except TypeError:
        return str(value)


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
