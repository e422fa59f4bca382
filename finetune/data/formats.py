"""The user's rows in any of the supported formats -> the canonical table.

alpaca: instruction / input / output columns (under your names with data.columns) -> schema.canonicalize, the
same columns and bytes as before formats existed. messages (OpenAI: [{"role", "content"}]) and sharegpt
([{"from", "value"}], human -> user, gpt -> assistant) -> one text column `messages`, each row the JSON text of
[{"role": ..., "content": ...}]. Only the shape is checked here (a list of turns, each with a role and text): an
unknown role, an empty turn and the other problems of a usable shape are prepare's, dropped and counted by reason.
"""

from __future__ import annotations

import json

import pandas as pd

from finetune.data import schema
from finetune.errors import DataError

FORMATS = ("alpaca", "messages", "sharegpt")
MESSAGES = "messages"  # the canonical conversation column
# Per conversation format: its usual column, the keys of a turn (role, text), and role names mapped to ours.
TURNS = {
    "messages": ("messages", "role", "content", {}),
    "sharegpt": (
        "conversations",
        "from",
        "value",
        {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"},
    ),
}


def is_conversations(frame: pd.DataFrame) -> bool:
    """Whether a canonical table holds conversations (else Alpaca rows)."""
    return MESSAGES in frame.columns


def detect(frame: pd.DataFrame, columns: dict[str, str]) -> str:
    """The format of `frame` from its columns: a conversation format when the (mapped or usual) conversation
    column is there, by the keys of its first turn; else alpaca (whose missing columns schema then names)."""
    names = {str(c) for c in frame.columns}
    if {columns.get("instruction", "instruction"), columns.get("output", "output")} <= names:
        return "alpaca"
    for fmt in ("messages", "sharegpt"):
        column = columns.get("messages", TURNS[fmt][0])
        if column in names:
            first = _first_turn(frame[column])
            other = "sharegpt" if fmt == "messages" else "messages"
            if first is not None and {TURNS[other][1], TURNS[other][2]} <= set(first):
                return other
            return fmt
    return "alpaca"


def _first_turn(values: pd.Series) -> dict | None:
    for value in values:
        turns = _turns(value)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return turns[0]
    return None


def canonical(
    frame: pd.DataFrame, source: str, fmt: str, columns: dict[str, str], extra_columns: str
) -> tuple[pd.DataFrame, str]:
    """(the canonical table, the format it was read as): fmt "auto" is decided by detect()."""
    if frame.empty:
        raise DataError(f"{source}: no rows")
    chosen = detect(frame, columns) if fmt == "auto" else fmt
    if chosen == "alpaca":
        return alpaca(frame, source, columns, extra_columns, named=fmt == "alpaca"), chosen
    return conversations(frame, source, chosen, columns), chosen


def alpaca(
    frame: pd.DataFrame, source: str, columns: dict[str, str], extra_columns: str, named: bool = True
) -> pd.DataFrame:
    """Alpaca rows under the user's column names -> schema.canonicalize (no mapping: exactly as before)."""
    mapping = {theirs: ours for ours, theirs in columns.items() if ours != MESSAGES}
    if mapping:
        missing = [theirs for theirs in mapping if theirs not in frame.columns.astype(str)]
        if missing:
            found = ", ".join(map(str, frame.columns))
            raise DataError(
                f"{source}: data.columns names column(s) {', '.join(map(repr, missing))}, not in the "
                f"file (format alpaca; found: {found})"
            )
        taken = [ours for ours in mapping.values() if ours in frame.columns and ours not in mapping]
        if taken:
            raise DataError(
                f"{source}: column(s) {', '.join(map(repr, taken))} exist and data.columns maps another "
                f"column onto them; map or rename one of them"
            )
        frame = frame.rename(columns=mapping)
    try:
        return schema.canonicalize(frame, source, extra_columns)
    except DataError as e:
        if named:
            raise DataError(f"{e} (format alpaca)") from None
        raise DataError(
            f"{e} (format alpaca, chosen by data.format auto: no messages / conversations column; "
            f"another name goes in data.columns)"
        ) from None


def conversations(frame: pd.DataFrame, source: str, fmt: str, columns: dict[str, str]) -> pd.DataFrame:
    """One text column `messages`: each row's turns as JSON [{"role", "content"}], roles mapped (sharegpt)."""
    usual, role_key, text_key, roles = TURNS[fmt]
    column = columns.get(MESSAGES, usual)
    if column not in frame.columns.astype(str):
        found = ", ".join(map(str, frame.columns))
        raise DataError(
            f"{source}: format {fmt} expects a column {column!r} of [{{{role_key!r}, {text_key!r}}}] "
            f"turns; found: {found}"
            + ("" if MESSAGES in columns else " (name yours with data.columns: {messages: <column>})")
        )
    values = frame[frame.columns[list(frame.columns.astype(str)).index(column)]]
    out = [
        json.dumps(_row(value, source, row, column, fmt, role_key, text_key, roles), ensure_ascii=False)
        for row, value in enumerate(values, start=1)
    ]
    return pd.DataFrame({MESSAGES: pd.Series(out, dtype="string")})


def _turns(value):
    if isinstance(value, str):
        try:
            return json.loads(value)  # csv cells, or a column written as JSON text
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist"):  # parquet lists come back as numpy arrays
        value = value.tolist()
    return value


def _row(value, source: str, row: int, column: str, fmt: str, role_key: str, text_key: str, roles: dict) -> list:
    where = f"{source}: row {row}, column {column!r}"
    turns = _turns(value)
    if not isinstance(turns, list):
        raise DataError(
            f"{where}: expected a list of turns (format {fmt}), found {type(turns).__name__} {schema._short(turns)}"
        )
    result = []
    for k, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            keys = sorted(turn) if isinstance(turn, dict) else type(turn).__name__
            raise DataError(
                f"{where}, turn {k}: expected keys {role_key!r} and {text_key!r} (format {fmt}), found {keys}"
            )
        role = schema.as_text(turn[role_key], source, row, f"{column}[{k}].{role_key}") or ""
        text = schema.as_text(turn[text_key], source, row, f"{column}[{k}].{text_key}") or ""
        result.append({"role": roles.get(role, role), "content": text})
    return result
