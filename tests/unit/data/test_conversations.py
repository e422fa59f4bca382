"""finetune.data.conversations: every refused conversation counted under its reason, cutting by whole turns,
one identity per kept conversation and never in two splits, the trained-token report; and the label mask that
chat_format derives from the chat template (every assistant turn, with its end of turn, and nothing else)."""

from __future__ import annotations

import json

import frames
import numpy as np
import pandas as pd
import pytest

from finetune import chat_format
from finetune.data import conversations, splitting


def turn(role, content):
    return {"role": role, "content": content}


def chat(*pairs, system=None):
    turns = [turn("system", system)] if system else []
    for user, assistant in pairs:
        turns += [turn("user", user), turn("assistant", assistant)]
    return turns


REFUSED = {  # reason -> a conversation refused for it alone
    "unknown_role": [turn("user", "Hi"), turn("tool", "{}"), turn("assistant", "Hello.")],
    "empty_turn": [turn("user", "Hi"), turn("assistant", "  ")],
    "system_not_first": [turn("user", "Hi"), turn("system", "Be brief."), turn("assistant", "Hello.")],
    "same_side_twice": [turn("user", "Hi"), turn("user", "Anyone?"), turn("assistant", "Hello.")],
    "no_assistant_turn": [turn("system", "Be brief."), turn("user", "Hi")],
    "control_characters": chat(("Hi\x07", "Hello.")),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from finetune import modeling

    return modeling.load_tokenizer(tiny_base)


@pytest.fixture(scope="module")
def encode(tokenizer):
    return lambda messages: chat_format.encode_conversation(tokenizer, messages)


def frame(*rows):
    return pd.DataFrame({"messages": [json.dumps(r) for r in rows]}, dtype="string")


def kept_turns(kept):
    return [json.loads(t) for t in kept["messages"]]


def only_drop(counts):
    return {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.") and v}


# ---------------------------------------------------------------- the label mask


def test_label_mask_is_every_assistant_turn_with_its_end_of_turn(tokenizer):
    messages = chat(
        ("What is APR?", "A yearly rate."),
        ("And APY?", "Compounded."),
        ("Thanks", "You are welcome."),
        system="Be brief.",
    )
    ids, mask, ends = chat_format.encode_conversation(tokenizer, messages)
    assert frames.chatml_assistant_mask(tokenizer, messages) == mask
    assert len(ends) == 3 and ends[-1] == len(ids)
    labelled = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert labelled == "".join(
        f"{t['content']}{chat_format.END_OF_TURN}\n" for t in messages if t["role"] == "assistant"
    )
    # negative control: the same mask shifted by one token (either way) is not the assistant tokens
    for shifted in (mask[1:] + [0], [0] + mask[:-1]):
        assert shifted != frames.chatml_assistant_mask(tokenizer, messages)


# ---------------------------------------------------------------- cleaning


def test_each_refused_conversation_counted_under_its_reason_alone(encode):
    good = [chat((f"Question {i}?", f"Answer {i}."), (f"More {i}?", f"Yes {i}."), system="Be brief.") for i in range(6)]
    kept, counts = conversations.clean(frame(*good, *REFUSED.values()), encode, 512, "drop", None, 0)
    assert only_drop(counts) == {reason: 1 for reason in REFUSED}
    assert kept_turns(kept) == good
    assert counts["rows_read"] == counts["rows_kept"] + counts["dropped_total"] == 12


def test_duplicates_and_conflicts_by_the_user_side(encode):
    rows = [
        chat(("Define APR.", "A yearly rate.")),
        chat(("  define apr ", "A yearly rate.")),  # same user side, same answer: duplicate
        chat(("DEFINE APR!", "Something else.")),  # same user side, another answer: conflict
        chat(("Define APR.", "A yearly rate."), ("More?", "No.")),  # another user side: kept
        chat(("Define APR.", "A yearly rate."), system="Be brief."),
    ]  # a system turn is part of it: kept
    kept, counts = conversations.clean(frame(*rows), encode, 512, "drop", None, 0)
    assert only_drop(counts) == {"duplicate": 1, "conflicting_output": 1}
    assert kept_turns(kept) == [rows[0], rows[3], rows[4]]


def test_too_long_dropped_or_cut_by_whole_turns_from_the_end(encode):
    short = chat(("Hi", "Hello."))
    long = chat(("Hi", "Hello."), ("Tell me more", "word " * 80))
    limit = len(encode(short)[0]) + 5
    kept, counts = conversations.clean(frame(short, long), encode, limit, "drop", None, 0)
    assert only_drop(counts) == {"too_long": 1} and kept_turns(kept) == [short]
    kept, counts = conversations.clean(frame(long), encode, limit, "truncate", None, 0)
    assert kept_turns(kept) == [short] and counts["truncated"] == 1 and counts["dropped_total"] == 0
    # when even the first exchange does not fit, cutting leaves nothing: too_long
    kept, counts = conversations.clean(frame(long), encode, 3, "truncate", None, 0)
    assert only_drop(counts) == {"too_long": 1} and len(kept) == 0


def test_rows_without_a_labelled_token_are_refused(tokenizer):
    def drop_assistant_tokens(messages):
        ids, mask, ends = chat_format.encode_conversation(tokenizer, messages)
        return ids, [0] * len(mask) if "unlabelled" in messages[0]["content"] else mask, ends

    rows = [chat(("unlabelled", "x")), chat(("fine", "y"))]
    kept, counts = conversations.clean(frame(*rows), drop_assistant_tokens, 512, "drop", None, 0)
    assert only_drop(counts) == {"no_labelled_token": 1} and kept_turns(kept) == [rows[1]]


# ---------------------------------------------------------------- split and report


def test_no_identity_in_two_splits(encode):
    rows = [chat((f"Question {i % 40}?", f"Answer {i}."), (f"Follow {i % 3}", "ok")) for i in range(150)]
    rows += [chat((f"question {i % 40}", f"Answer {i}."), (f"follow {i % 3}!", "ok")) for i in range(150)]  # spelled
    every = frame(*rows)  # not deduplicated: many rows per identity
    kept, _ = conversations.clean(every, encode, 512, "drop", None, 0)
    assert len(kept) == 120  # 40 openings x 3 follow-ups, spelled two ways
    splits = splitting.sample_and_split(every, 1000, 0.2, 0.1, 0, conversations.identities(every["messages"]))
    seen = [set(conversations.identities(s["messages"]).to_pylist()) for s in splits]
    assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    # control: the same rows split by row (each its own identity) do leak
    by_row = splitting.sample_and_split(every, 1000, 0.2, 0.1, 0, np.arange(len(every)).astype(str).astype(object))
    rows_seen = [set(conversations.identities(s["messages"]).to_pylist()) for s in by_row]
    assert rows_seen[0] & rows_seen[2]


def test_token_report_counts_labels_and_turns(encode, tokenizer):
    rows = [chat(("Hi", "Hello."), ("APR?", "A rate.")), chat(("Bye", "Bye."))]
    report = conversations.token_report({"train": frame(*rows)}, encode, 512)
    total = sum(len(encode(r)[0]) for r in rows)
    labelled = sum(
        len(tokenizer(f"{a}<|im_end|>\n", add_special_tokens=False)["input_ids"]) for a in ("Hello.", "A rate.", "Bye.")
    )
    assert report == {
        "tokens.train.total": total,
        "tokens.train.labelled": labelled,
        "tokens.train.labelled_share": round(labelled / total, 4),
        "tokens.train.assistant_turns_per_row": 1.5,
        "tokens.train.rows_without_labels": 0,
    }
