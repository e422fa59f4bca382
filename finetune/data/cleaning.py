"""Cleaning: every unusable row dropped and counted under its first reason; one row kept per prompt."""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from finetune.data import identity, splitting
from finetune.errors import DataError

# Drop reasons, in the order rows are checked: a row is counted once, under its first reason.
REASONS = (
    "missing_instruction",
    "missing_output",
    "blank_instruction",
    "blank_output",
    "placeholder_output",
    "control_characters",
    "duplicate",
    "conflicting_output",
    "too_long",
)
# Alpaca's own filler values, and outputs that are only dots / ellipses (fullmatch both).
PLACEHOLDER = re.compile(r"\s*(<\s*no\s*(input|output)\s*>|n/a)\s*", re.IGNORECASE)
# (?!\.) makes each dot run match whole: split freely, "...." + "x" took exponential time.
DOTS = re.compile(r"\s*((\.{2,}(?!\.)|…+(?!…))\s*)+")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, newline and carriage return are fine

# The same checks on whole columns with pyarrow (RE2): Python's whitespace (what str.strip and
# re's \s use) spelled out, and supersets of PLACEHOLDER / DOTS that `re` then confirms.
_WS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x3001)) if c.isspace()) + "]"
_BLANK = f"^{_WS}*$"
_PLACEHOLDER_LIKE = f"^{_WS}*(?:[^{_WS[1:-1]}]{_WS}*){{0,10}}$"  # at most 10 other characters: "<nooutput>"
_DOTS_LIKE = f"^(?:{_WS}|[.…])*$"

# rows (instruction, input filled, output) -> token counts after the chat template; a row that
# provably fits may get any number <= max_length instead of its count.
Lengths = Callable[[pd.DataFrame], Sequence[int]]


# _Picker.kept_at for a prompt with no kept row: none of its rows fits, or it was not looked at (yet).
NONE_FITS = -1
NOT_CHECKED = -2


def row_problem(instruction, input_text, output) -> str | None:
    """The first of REASONS[:6] that applies to one row, or None when it is usable."""
    return _row_problems(*(_arrow(pd.Series([v], dtype=object)) for v in (instruction, input_text, output)))[0]


def _arrow(column: pd.Series) -> pa.Array:
    return pa.array(column, type=pa.large_string(), from_pandas=True)


def _row_problems(i: pa.Array, x: pa.Array, o: pa.Array) -> np.ndarray:
    """row_problem of every row, by column (input filled with "")."""

    def matches(array, pattern):
        return pc.fill_null(pc.match_substring_regex(array, pattern), False).to_numpy(zero_copy_only=False)

    def placeholder():
        candidates = np.flatnonzero(matches(o, _PLACEHOLDER_LIKE) | matches(o, _DOTS_LIKE))
        found = np.zeros(len(o), dtype=bool)
        found[candidates] = [
            bool(PLACEHOLDER.fullmatch(t) or DOTS.fullmatch(t))
            for t in o.take(pa.array(candidates, type=pa.int64())).to_pylist()
        ]
        return found

    checks = (
        ("missing_instruction", lambda: i.is_null().to_numpy(zero_copy_only=False)),
        ("missing_output", lambda: o.is_null().to_numpy(zero_copy_only=False)),
        ("blank_instruction", lambda: matches(i, _BLANK) | _normalises_to_nothing(i)),  # e.g. "?"
        ("blank_output", lambda: matches(o, _BLANK)),
        ("placeholder_output", placeholder),
        (
            "control_characters",
            lambda: matches(i, CONTROL.pattern) | matches(x, CONTROL.pattern) | matches(o, CONTROL.pattern),
        ),
    )
    reasons = np.full(len(o), None, dtype=object)
    for reason, check in checks:
        undecided = pd.isna(reasons)
        reasons[undecided & check()] = reason
    return reasons


def _normalises_to_nothing(column: pa.Array) -> np.ndarray:
    """Texts that identity.normalise makes "" (only punctuation and whitespace, e.g. "?"): no prompt."""
    texts = pc.fill_null(column, "x")
    uniques = pc.unique(texts)
    empty = pa.array([identity.normalise(t) == "" for t in uniques.to_pylist()], type=pa.bool_())
    return empty.take(pc.index_in(texts, value_set=uniques)).to_numpy(zero_copy_only=False)


def clean(
    frame: pd.DataFrame,
    lengths: Lengths | None = None,
    max_length: int = 512,
    too_long: str = "drop",
    n: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Fill missing input, drop unusable rows; returns kept rows (file order) and counts by reason.

    Rows with the same prompt (identity.prompt_identity) keep one: the first in file order that
    fits `max_length` tokens; a later one with the same output is a duplicate, with another output
    a conflict. With too_long="truncate" the first is kept whatever its length (the trainer cuts
    it), and counted. Lengths are measured only where they decide something: every prompt asked
    more than once, and single-row prompts in draw order (draw_keys) until `n` prompts fit; the
    single-row prompts after that are `rows_unchecked`, neither kept nor dropped. n=None checks
    every prompt.
    """
    filled = frame["input"].isna().to_numpy()
    inputs = pc.fill_null(_arrow(frame["input"]), "")
    reasons = _row_problems(_arrow(frame["instruction"]), inputs, _arrow(frame["output"]))
    usable = np.flatnonzero(pd.isna(reasons))
    take = pa.array(usable, type=pa.int64())
    rows = pa.table(
        {
            "instruction": _arrow(frame["instruction"]).take(take),
            "input": inputs.take(take),
            "output": _arrow(frame["output"]).take(take),
        }
    ).to_pandas()
    group, keys = identity.factorize(identity.prompt_identities(rows))
    picker = _Picker(rows, group, lengths, max_length, too_long)
    if lengths is None or n is None or n >= len(keys):
        checked = picker.check_all()
    else:
        checked = picker.check_drawn(np.argsort(splitting.draw_keys(keys, seed), kind="stable"), n)
    reasons[usable] = picker.reasons(checked)
    keeper = picker.kept_rows(checked)

    kept = frame.iloc[usable[keeper]].reset_index(drop=True)
    kept["input"] = rows["input"].iloc[keeper].to_numpy(dtype=object)
    counted = pd.Series(reasons).value_counts()
    counts = {
        "rows_read": len(frame),
        "rows_kept": len(kept),
        "rows_unchecked": int((~checked[group]).sum()),
        "length_checked": picker.measured_rows(checked),
        "filled_input": int(filled.sum()),
        "truncated": picker.truncated(checked),
        "dropped_total": int(pd.notna(reasons).sum()),
        **{f"dropped.{reason}": int(counted.get(reason, 0)) for reason in REASONS},
    }
    return kept, counts


class _Picker:
    """Finds each prompt's kept row (kept_at, by prompt: a row position, NONE_FITS or NOT_CHECKED).

    rows: the usable rows; group: each row's prompt (index into the distinct identities).
    """

    def __init__(self, rows: pd.DataFrame, group: np.ndarray, lengths, max_length: int, too_long: str):
        self.rows, self.group = rows, group
        order = np.lexsort((np.arange(len(group)), group))  # rows by prompt, then file order
        starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1] if len(group) else np.zeros(0, dtype=int)
        self.rank = np.empty(len(group), dtype=int)  # a row's place among its prompt's rows, 0 = first
        self.rank[order] = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
        self.lengths, self.max_length, self.too_long = lengths, max_length, too_long
        self.kept_at = np.full(group.max() + 1 if len(group) else 0, NOT_CHECKED)
        self.length = np.full(len(group), -1)  # measured (or bounded) tokens; -1 not measured
        self.known: dict[tuple, int] = {}  # an exact repeat of a measured row has its length

    def check_all(self) -> np.ndarray:
        self.resolve(np.arange(len(self.kept_at)))
        return np.ones(len(self.kept_at), dtype=bool)

    def check_drawn(self, draw: np.ndarray, n: int) -> np.ndarray:
        """Every prompt with several rows, then the others in `draw` order until n prompts fit."""
        multi = np.bincount(self.group, minlength=len(self.kept_at)) > 1
        self.resolve(np.flatnonzero(multi))
        done = 0
        while done < len(draw):
            fitted = int((self.kept_at[draw[:done]] >= 0).sum())
            if fitted >= n:
                break
            step = draw[done : done + max(n - fitted, 64)]
            self.resolve(step[self.kept_at[step] == NOT_CHECKED])
            done += len(step)
        # Only the prefix of the draw up to its n-th fitting prompt counts as checked.
        fits = np.cumsum(self.kept_at[draw] >= 0)
        last = int(np.searchsorted(fits, n)) if fits.size and fits[-1] >= n else len(draw) - 1
        checked = multi.copy()
        checked[draw[: last + 1]] = True
        return checked

    def resolve(self, prompts_: np.ndarray) -> None:
        """Each prompt's kept row: its first row (truncate), or its first row that fits (drop)."""
        pending = np.zeros(len(self.kept_at), dtype=bool)
        pending[prompts_] = True
        left = np.flatnonzero(pending[self.group])  # rows of prompts still without a kept row
        r = 0
        while len(left):
            candidates = left[self.rank[left] == r]
            if self.lengths is None:
                fits = np.ones(len(candidates), dtype=bool)
            else:
                self.length[candidates] = self._measure(candidates)
                fits = (self.length[candidates] <= self.max_length) | (self.too_long == "truncate")
            self.kept_at[self.group[candidates[fits]]] = candidates[fits]
            pending[self.group[candidates[fits]]] = False
            left = left[pending[self.group[left]] & (self.rank[left] > r)]
            r += 1
        self.kept_at[prompts_[self.kept_at[prompts_] == NOT_CHECKED]] = NONE_FITS

    def _measure(self, at: np.ndarray) -> np.ndarray:
        rows = self.rows.iloc[at]
        keys = list(zip(*(rows[c].tolist() for c in self.rows.columns)))  # Alpaca: instruction, input, output
        new = [k for k, key in enumerate(keys) if key not in self.known]
        if new:
            measured = self.lengths(rows.iloc[new].reset_index(drop=True))
            self.known.update(zip((keys[k] for k in new), (int(m) for m in measured)))
        return np.array([self.known[key] for key in keys], dtype=int)

    def reasons(self, checked: np.ndarray) -> np.ndarray:
        """Per row: too_long before its prompt's kept row (or when none fits), duplicate / conflicting_output
        after it (same / other output), None for the kept row and rows of unchecked prompts."""
        position = np.arange(len(self.group))
        chosen = self.kept_at[self.group]
        later = np.flatnonzero((chosen >= 0) & (position > chosen))
        outputs = self.rows["output"]
        same = outputs.iloc[later].to_numpy(dtype=object) == outputs.iloc[chosen[later]].to_numpy(dtype=object)
        reasons = np.full(len(self.group), None, dtype=object)
        reasons[checked[self.group] & ((chosen == NONE_FITS) | (position < chosen))] = "too_long"
        reasons[later[same]] = "duplicate"
        reasons[later[~same]] = "conflicting_output"
        return reasons

    def kept_rows(self, checked: np.ndarray) -> np.ndarray:
        return np.sort(self.kept_at[checked & (self.kept_at >= 0)])

    def measured_rows(self, checked: np.ndarray) -> int:
        return int(((self.length >= 0) & checked[self.group]).sum())

    def truncated(self, checked: np.ndarray) -> int:
        kept = self.kept_at[checked & (self.kept_at >= 0)]
        return int((self.length[kept] > self.max_length).sum()) if self.too_long == "truncate" else 0


def check_drop_share(counts: dict, max_drop_fraction: float, source: str) -> None:
    if counts["rows_kept"] < splitting.MIN_PROMPTS:
        raise DataError(
            f"{source}: {counts['rows_kept']} row(s) survive cleaning (need at least {splitting.MIN_PROMPTS} to split); "
            f"dropped: {drop_summary(counts)}"
        )
    # Rows never length-checked (not needed for the sample) count at the too_long rate of those checked.
    unchecked = counts.get("rows_unchecked", 0)
    extra = round(unchecked * counts["dropped.too_long"] / max(counts["length_checked"], 1)) if unchecked else 0
    dropped = counts["dropped_total"] + extra
    share = dropped / counts["rows_read"]
    if share > max_drop_fraction:
        what, basis = (
            (f"would drop about {dropped}", f"; too_long estimated from {counts['length_checked']} rows checked")
            if extra
            else (f"dropped {dropped}", "")
        )
        raise DataError(
            f"{source}: cleaning {what} of {counts['rows_read']} rows "
            f"({share:.0%} > prepare.max_drop_fraction {max_drop_fraction:.0%}{basis}); "
            f"dropped: {drop_summary(counts)}"
        )


def drop_summary(counts: dict) -> str:
    parts = [f"{k.split('.', 1)[1]}={v}" for k, v in counts.items() if k.startswith("dropped.") and v]
    return ", ".join(parts) or "none"
