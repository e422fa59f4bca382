"""Conversations (ingest's `messages` column) in prepare: every unusable one dropped and counted under its first
reason, cut by whole turns when asked, one kept per identity, and the tokens each one trains.

Identity, for dedup and the split: the conversation's user side, that is its system and user turns in order,
each normalised as Alpaca prompts are (identity.normalise), assistant turns left out. It is the conversation's
prompt, as instruction + input is an Alpaca row's: two rows asking the same things are the same example (the
same answers: duplicate; other answers: conflicting_output), and all of them land in one split.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from finetune import chat_format
from finetune.data import cleaning, identity, splitting

ROLES = ("system", "user", "assistant")
# Drop reasons, in the order rows are checked: a row is counted once, under its first reason.
REASONS = (
    "unknown_role",  # a role other than system / user / assistant (ShareGPT's human / gpt are mapped at ingest)
    "empty_turn",  # a turn with no text, or only whitespace
    "system_not_first",  # a system turn after the conversation has started
    "same_side_twice",  # two user turns, or two assistant turns, in a row
    "no_assistant_turn",  # nothing to learn
    "control_characters",
    "duplicate",
    "conflicting_output",
    "too_long",
    "no_labelled_token",  # the chat template leaves no assistant token (checked after cutting)
)

# messages -> (input_ids, assistant mask, token count at each assistant turn's end): chat_format.encode_conversation
Encode = Callable[[list[dict]], tuple[list[int], list[int], list[int]]]


def parse(texts: pd.Series) -> list[list[dict]]:
    return [json.loads(t) for t in texts]


def row_problem(messages: list[dict]) -> str | None:
    """The first of REASONS[:6] that applies to one conversation, or None."""
    if any(turn["role"] not in ROLES for turn in messages):
        return "unknown_role"
    if any(not turn["content"].strip() for turn in messages):
        return "empty_turn"
    if any(turn["role"] == "system" for turn in messages[1:]):
        return "system_not_first"
    sides = [turn["role"] for turn in messages if turn["role"] != "system"]
    if any(a == b for a, b in itertools.pairwise(sides)):
        return "same_side_twice"
    if "assistant" not in sides:
        return "no_assistant_turn"
    if any(cleaning.CONTROL.search(turn["content"]) for turn in messages):
        return "control_characters"
    return None


def conversation_identity(messages: list[dict]) -> str:
    """The normalised user side: system and user turns, in order, roles kept."""
    return json.dumps(
        [[t["role"], identity.normalise(t["content"])] for t in messages if t["role"] != "assistant"],
        ensure_ascii=False,
    )


def identities(texts: pd.Series) -> pa.Array:
    return pa.array([conversation_identity(m) for m in parse(texts)], pa.large_string())


def cut(messages: list[dict], ends: list[int], max_length: int) -> tuple[list[dict], int] | None:
    """The longest prefix ending with an assistant turn that fits max_length tokens (whole turns cut from the
    end), with its length; None when even the first assistant turn does not fit."""
    assistant = [i for i, turn in enumerate(messages) if turn["role"] == "assistant"]
    fitting = [k for k, end in enumerate(ends) if end <= max_length]
    if not fitting:
        return None
    k = fitting[-1]
    return messages[: assistant[k] + 1], ends[k]


def clean(
    frame: pd.DataFrame, encode: Encode, max_length: int, too_long: str, n: int | None, seed: int
) -> tuple[pd.DataFrame, dict]:
    """cleaning.clean for conversations: (kept rows in file order, counts by reason).

    Every usable conversation is tokenized once (encode); with too_long "truncate" a longer one is cut by whole
    turns from the end to the longest prefix that fits and still ends with an assistant turn. Among rows of the
    same identity the first that fits is kept (cleaning._Picker, as for Alpaca prompts)."""
    messages = parse(frame["messages"])
    reasons = np.array([row_problem(m) for m in messages], dtype=object)
    usable = np.flatnonzero(pd.isna(reasons))
    texts, lengths, truncated = [], [], 0
    for i in usable:
        ids, mask, ends = encode(messages[i])
        length, kept = len(ids), messages[i]
        if length > max_length and too_long == "truncate" and (shorter := cut(kept, ends, max_length)) is not None:
            kept, length = shorter
            truncated += 1
            mask = mask[:length]
        if not any(mask):
            reasons[i] = "no_labelled_token"
        texts.append(kept)
        lengths.append(length)
    labelled = np.flatnonzero(pd.isna(reasons[usable]))
    usable = usable[labelled]
    kept_messages = [texts[k] for k in labelled]
    row_lengths = np.array([lengths[k] for k in labelled], dtype=int)
    rows = pd.DataFrame(
        {
            "conversation": [json.dumps(m, ensure_ascii=False) for m in kept_messages],
            "output": [
                json.dumps([t["content"] for t in m if t["role"] == "assistant"], ensure_ascii=False)
                for m in kept_messages
            ],
        }
    )
    group, keys = identity.factorize(pa.array([conversation_identity(m) for m in kept_messages], pa.large_string()))
    by_text = dict(zip(rows["conversation"], row_lengths))
    picker = cleaning._Picker(rows, group, lambda r: [by_text[t] for t in r["conversation"]], max_length, "drop")
    if n is None or n >= len(keys):
        checked = picker.check_all()
    else:
        checked = picker.check_drawn(np.argsort(splitting.draw_keys(keys, seed), kind="stable"), n)
    reasons[usable] = picker.reasons(checked)
    keeper = picker.kept_rows(checked)
    original = frame["messages"].iloc[usable[keeper]].to_numpy(dtype=object)
    cut_texts = rows["conversation"].iloc[keeper].to_numpy(dtype=object)
    # a conversation left whole keeps its bytes from ingest; a cut one is written again
    whole = np.array([len(json.loads(a)) == len(json.loads(b)) for a, b in zip(original, cut_texts)], dtype=bool)
    kept = pd.DataFrame({"messages": np.where(whole, original, cut_texts)}).astype("string")
    counted = pd.Series(reasons).value_counts()
    counts = {
        "rows_read": len(frame),
        "rows_kept": len(kept),
        "rows_unchecked": int((~checked[group]).sum()),
        "length_checked": len(usable),
        "truncated": int((~whole).sum()),
        "dropped_total": int(pd.notna(reasons).sum()),
        **{f"dropped.{reason}": int(counted.get(reason, 0)) for reason in REASONS},
    }
    return kept, counts


def token_report(frames: dict[str, pd.DataFrame], encode: Encode, max_length: int) -> dict:
    """Per split: tokens, labelled tokens (loss on them) and their share, assistant turns per row, and rows with
    no labelled token (prepare drops those, so 0). Alpaca rows are one user and one assistant turn."""
    report = {}
    for name, frame in frames.items():
        total = labelled = turns = unlabelled = 0
        for messages in as_messages(frame):
            ids, mask, _ = encode(messages)
            row_labels = sum(mask[:max_length])  # the trainer cuts a longer row (prepare.too_long: truncate)
            total += min(len(ids), max_length)
            labelled += row_labels
            turns += sum(turn["role"] == "assistant" for turn in messages)
            unlabelled += row_labels == 0
        report |= {
            f"tokens.{name}.total": total,
            f"tokens.{name}.labelled": labelled,
            f"tokens.{name}.labelled_share": round(labelled / max(total, 1), 4),
            f"tokens.{name}.assistant_turns_per_row": round(turns / max(len(frame), 1), 4),
            f"tokens.{name}.rows_without_labels": unlabelled,
        }
    return report


def as_messages(frame: pd.DataFrame) -> list[list[dict]]:
    """Each row as a list of turns: a conversation as it is, an Alpaca row as its user and assistant turns."""
    if "messages" in frame.columns:
        return parse(frame["messages"])
    return [c["prompt"] + c["completion"] for c in chat_format.conversations(frame)]


def unlabelled_rows(frame: pd.DataFrame, encode: Encode, max_length: int) -> np.ndarray:
    """Rows (of an Alpaca frame) with no labelled token within max_length: a prompt that fills it alone."""
    return np.array([not any(encode(m)[1][:max_length]) for m in as_messages(frame)], dtype=bool)
