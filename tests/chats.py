"""Conversation files for the tests, built from the embedded Alpaca sample (words the tiny tokenizer knows):
multi-turn rows with and without a system turn, and one row of every refused case."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from helpers import REPO

from finetune import paths

REFUSED = {  # reason -> turns (OpenAI roles; ShareGPT files map them back)
    "unknown_role": [("user", "Hi"), ("tool", "{}"), ("assistant", "Hello.")],
    "empty_turn": [("user", "Hi"), ("assistant", " ")],
    "system_not_first": [("user", "Hi"), ("system", "Be brief."), ("assistant", "Hello.")],
    "same_side_twice": [("user", "Hi"), ("user", "Anyone?"), ("assistant", "Hello.")],
    "no_assistant_turn": [("system", "Be brief."), ("user", "Hi")],
}
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def conversations(n: int) -> list[list[tuple[str, str]]]:
    """n good conversations (1 to 3 exchanges, every other one with a system turn), then every refused case."""
    rows = pd.read_parquet(REPO / paths.EMBEDDED_SAMPLE).dropna(subset=["instruction", "output"])
    rows = rows[rows["output"].str.len().between(2, 200) & rows["instruction"].str.len().between(2, 200)]
    pairs = list(zip(rows["instruction"], rows["output"]))
    out, at = [], 0
    for i in range(n):
        turns = [("system", "You answer questions about money.")] if i % 2 else []
        for _ in range(1 + i % 3):
            question, answer = pairs[at % len(pairs)]
            at += 1
            turns += [("user", question), ("assistant", answer)]
        out.append(turns)
    return out + list(REFUSED.values())


def write_messages(path: Path, n: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n" for turns in conversations(n)
        ),
        encoding="utf-8",
    )
    return path


def write_sharegpt(path: Path, n: int) -> Path:
    rows = [
        {"conversations": [{"from": SHAREGPT_ROLES.get(r, r), "value": c} for r, c in turns], "id": str(i)}
        for i, turns in enumerate(conversations(n))
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path
