"""Alpaca frames for the data tests: building and reading them, the drop counts, and a prompt identity written
apart from finetune.data.identity's, to judge its splits by."""

from __future__ import annotations

import re
import unicodedata

import pandas as pd
from hypothesis import strategies as st

from finetune import chat_format
from finetune.data import cleaning

COLUMNS = ["instruction", "input", "output"]


def frame_of(*rows) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(COLUMNS, r)) for r in rows], columns=COLUMNS, dtype=object)


def rows_of(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame[COLUMNS].itertuples(index=False)]


def per_row(length_of):
    """A per-conversation length function as cleaning's Lengths (rows -> counts)."""
    return lambda rows: [length_of(c) for c in chat_format.conversations(rows)]


def output_chars(rows: pd.DataFrame) -> list[int]:
    return [len(o) for o in rows["output"]]


# ---------------------------------------------------------------- an independent prompt identity


def _norm(text: str) -> str:
    """Written apart from identity.normalise on purpose: NFKC, casefold, \\s+ -> " ", edges by category."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    chars = list(re.sub(r"\s+", " ", text))
    junk = lambda c: c.isspace() or unicodedata.category(c)[0] == "P"  # noqa: E731
    while chars and junk(chars[0]):
        chars.pop(0)
    while chars and junk(chars[-1]):
        chars.pop()
    return "".join(chars)


def same_prompt(instruction, input_text) -> tuple[str, str]:
    return _norm(instruction), _norm("" if input_text is None or input_text is pd.NA else input_text)


def keys_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return [same_prompt(i, x) for i, x in zip(frame["instruction"], frame["input"])]


def leaks(*splits: pd.DataFrame) -> set:
    """Prompts (by the independent identity) found in more than one split."""
    seen = [set(keys_of(s)) for s in splits]
    return {k for a in range(len(seen)) for b in range(a + 1, len(seen)) for k in seen[a] & seen[b]}


# ---------------------------------------------------------------- the counts of cleaning.clean


def assert_counts_add_up(counts: dict, n_rows: int) -> None:
    dropped = {k: v for k, v in counts.items() if k.startswith("dropped.")}
    # prepare adds no_labelled_token (cleaning.clean has no tokenizer to tell)
    assert set(dropped) - {"dropped.no_labelled_token"} == {f"dropped.{r}" for r in cleaning.REASONS}
    assert counts["rows_read"] == n_rows
    assert counts["dropped_total"] == sum(dropped.values())
    assert counts["rows_read"] == counts["rows_kept"] + counts["dropped_total"] + counts["rows_unchecked"]


def only_drop(counts: dict) -> dict:
    return {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.") and v}


# ---------------------------------------------------------------- distinct prompts, spelled many ways

BASES = [
    ("Define APR.", ""),
    ("What is a bond?", ""),
    ("Add the numbers.", "1, 2"),
    ("Add the numbers.", "3, 4"),
    ("Straße costs", "fuel"),
    ("Summarize the report", "Revenue rose 5%."),
    ("Classify", "ACH DEBIT 12/05"),
]
FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F))} | {" ": "\u3000"}


@st.composite
def variant(draw, text: str) -> str:
    case = draw(st.sampled_from([str, str.upper, str.lower, str.swapcase, str.title]))
    text = case(text)
    spaces = draw(st.sampled_from([" ", "  ", "\t", "\n ", "\u00a0", "\u2003"]))
    text = text.replace(" ", spaces)
    if draw(st.booleans()):
        text = "".join(FULLWIDTH.get(c, c) for c in text)
    before = draw(st.sampled_from(["", " ", "¿", "«", "“", "- "]))
    after = draw(st.sampled_from(["", ".", "?!", "…", "» ", "\n"]))
    return before + text + after if text else text


@st.composite
def prompt_rows(draw) -> list[tuple]:
    rows = []
    for _ in range(draw(st.integers(1, 40))):
        instruction, input_text = draw(st.sampled_from(BASES))
        rows.append((draw(variant(instruction)), draw(variant(input_text)), draw(st.sampled_from(["A.", "B.", "C."]))))
    return rows


def chatml_assistant_mask(tokenizer, messages) -> list[int]:
    """Independent of chat_format: ChatML spelled out turn by turn; an assistant turn's text, <|im_end|> and
    newline are labelled (the tiny tokenizer splits at special tokens, so pieces tokenize as the whole does)."""
    mask = []
    for t in messages:
        head = tokenizer(f"<|im_start|>{t['role']}\n", add_special_tokens=False)["input_ids"]
        body = tokenizer(f"{t['content']}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        mask += [0] * len(head) + [int(t["role"] == "assistant")] * len(body)
    return mask
