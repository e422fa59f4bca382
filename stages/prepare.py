"""prepare: clean, count every dropped row by reason, sample, split without prompt leakage."""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable

import pandas as pd

from stages import errors, io, params, prompts

IN = "data/interim/ingested.parquet"
TRAIN_OUT = "data/processed/train.parquet"
TEST_OUT = "data/processed/test.parquet"
METRICS_OUT = "metrics/data.json"
BASE_DIR = "models/base"

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


def row_problem(instruction, input_text, output) -> str | None:
    """The first reason to drop one row on its own, or None when it is usable."""
    if instruction is None:
        return "missing_instruction"
    if output is None:
        return "missing_output"
    if not instruction.strip():
        return "blank_instruction"
    if not output.strip():
        return "blank_output"
    if PLACEHOLDER.fullmatch(output) or DOTS.fullmatch(output):
        return "placeholder_output"
    if any(CONTROL.search(text) for text in (instruction, input_text, output)):
        return "control_characters"
    return None


def clean(
    frame: pd.DataFrame,
    length_of: Callable[[dict], int] | None = None,
    max_length: int = 512,
    too_long: str = "drop",
) -> tuple[pd.DataFrame, dict]:
    """Fill missing input, drop unusable rows; returns kept rows and counts by reason.

    `length_of(conversation)` gives the token count after the chat template; rows longer than
    `max_length` are dropped or, with too_long="truncate", kept (the trainer cuts them) and counted.
    """
    drops: Counter = Counter()
    kept: list[dict] = []
    seen_rows: set = set()
    seen_prompts: set = set()
    filled_input = truncated = 0
    for record in _records(frame):
        if record["input"] is None:
            record["input"] = ""
            filled_input += 1
        reason = row_problem(record["instruction"], record["input"], record["output"])
        exact = (record["instruction"], record["input"], record["output"])
        key = prompts.prompt_key(record["instruction"], record["input"]) if reason is None else None
        if reason is None and exact in seen_rows:
            reason = "duplicate"
        elif reason is None and key in seen_prompts:
            reason = "conflicting_output"  # same prompt, another answer: the first kept one wins
        if reason is None and length_of is not None:
            conversation = prompts.to_conversation(record["instruction"], record["input"], record["output"])
            if length_of(conversation) > max_length:
                if too_long == "drop":
                    reason = "too_long"
                else:
                    truncated += 1
        if reason:
            drops[reason] += 1
        else:
            kept.append(record)
            seen_rows.add(exact)
            seen_prompts.add(key)
    columns = list(frame.columns)
    counts = {
        "rows_read": len(frame),
        "rows_kept": len(kept),
        "filled_input": filled_input,
        "truncated": truncated,
        "dropped_total": sum(drops.values()),
        **{f"dropped.{reason}": drops[reason] for reason in REASONS},
    }
    return pd.DataFrame(kept, columns=columns), counts


def sample_and_split(frame: pd.DataFrame, n: int, test_fraction: float, seed: int):
    """Seeded sample of n rows, then a split by prompt so no prompt lands on both sides."""
    keys = [prompts.prompt_key(i, x) for i, x in zip(frame["instruction"], frame["input"])]
    unique_keys = sorted(set(keys))
    sampled_keys = pd.Series(unique_keys).sample(n=min(n, len(unique_keys)), random_state=seed).tolist()
    n_test = min(max(1, round(len(sampled_keys) * test_fraction)), len(sampled_keys) - 1)
    test_keys = set(sampled_keys[:n_test])
    train_keys = set(sampled_keys[n_test:])
    key_series = pd.Series(keys, index=frame.index)
    order = {k: i for i, k in enumerate(sampled_keys)}
    train = frame[key_series.isin(train_keys)]
    test = frame[key_series.isin(test_keys)]
    # Sampled order, not file order, so a seed change reshuffles training batches too.
    train = train.iloc[key_series[train.index].map(order).argsort()].reset_index(drop=True)
    test = test.iloc[key_series[test.index].map(order).argsort()].reset_index(drop=True)
    return train, test


def check_drop_share(counts: dict, max_drop_fraction: float, source: str) -> None:
    if counts["rows_kept"] < 2:
        raise io.DataError(
            f"{source}: {counts['rows_kept']} row(s) survive cleaning (need at least 2 to split); "
            f"dropped: {_drop_summary(counts)}"
        )
    share = counts["dropped_total"] / counts["rows_read"]
    if share > max_drop_fraction:
        raise io.DataError(
            f"{source}: cleaning dropped {counts['dropped_total']} of {counts['rows_read']} rows "
            f"({share:.0%} > prepare.max_drop_fraction {max_drop_fraction:.0%}); dropped: {_drop_summary(counts)}"
        )


def _drop_summary(counts: dict) -> str:
    parts = [f"{k.split('.', 1)[1]}={v}" for k, v in counts.items() if k.startswith("dropped.") and v]
    return ", ".join(parts) or "none"


def _records(frame: pd.DataFrame) -> list[dict]:
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


def tokenizer_length(base_dir: str) -> Callable[[dict], int]:
    from stages import modeling  # heavy import, only when a tokenizer is needed

    tokenizer = modeling.load_tokenizer(base_dir)
    return lambda conversation: prompts.token_length(tokenizer, conversation)


def main() -> None:
    p = params.load("prepare")
    cfg = p.prepare
    frame = pd.read_parquet(IN)
    kept, counts = clean(frame, tokenizer_length(BASE_DIR), cfg.max_length, cfg.too_long)
    check_drop_share(counts, cfg.max_drop_fraction, IN)
    train, test = sample_and_split(kept, cfg.n, cfg.test_fraction, cfg.seed)
    counts.update({"sampled": len(train) + len(test), "train": len(train), "test": len(test)})
    io.write_parquet(TRAIN_OUT, train.astype("string"))
    io.write_parquet(TEST_OUT, test.astype("string"))
    io.write_json(METRICS_OUT, counts)
    print(f"prepare: {counts['rows_read']} read, {counts['dropped_total']} dropped ({_drop_summary(counts)}), "
          f"{len(train)} train / {len(test)} test")


if __name__ == "__main__":
    errors.run(main)
