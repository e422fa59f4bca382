"""finetune.data.cleaning: every unusable row dropped and counted under its first reason, one row kept per prompt,
lengths measured only where they decide something, and a clear error when too much is dropped."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune import chat_format
from finetune.data import cleaning, identity, readers, schema, splitting
from finetune.errors import DataError
from frames import (
    assert_counts_add_up,
    frame_of,
    leaks,
    only_drop,
    output_chars,
    per_row,
    prompt_rows,
    rows_of,
    same_prompt,
)
from helpers import ALPACA, QWEN2_TOKENIZER, requires_alpaca, requires_qwen2_tokenizer

GOOD = ("Define APR.", "", "APR is the yearly cost of a loan.")


# ---------------------------------------------------------------- clean: one reason at a time


@pytest.mark.parametrize(
    "row, reason",
    [
        ((None, "", "an answer"), "missing_instruction"),
        (("Say hi.", "", None), "missing_output"),
        ((None, None, None), "missing_instruction"),  # counted once, under its first reason
        (("   ", "", "an answer"), "blank_instruction"),
        (("?", "what is a bond", "an answer"), "blank_instruction"),  # normalises to "": no prompt
        (("Say hi.", "", ""), "blank_output"),
        (("Say hi.", "", " \t\n\u3000"), "blank_output"),
        (("Say hi.", "", "\x1c\x85"), "blank_output"),  # Python's whitespace, not only ASCII's
        (("Say hi.", "", "<noinput>"), "placeholder_output"),
        (("Say hi.", "", " <nooutput>\n"), "placeholder_output"),
        (("Say hi.", "", "< no  Output >"), "placeholder_output"),
        (("Say hi.", "", "N/A"), "placeholder_output"),
        (("Say hi.", "", "n/a"), "placeholder_output"),
        (("Say hi.", "", "..."), "placeholder_output"),
        (("Say hi.", "", "…"), "placeholder_output"),
        (("Say hi.", "", "....\n.....\n…"), "placeholder_output"),
        (("Say\x00 hi.", "", "hi"), "control_characters"),
        (("Say hi.", "\x1b[31m", "hi"), "control_characters"),
        (("Say hi.", "", "hi\x7f"), "control_characters"),
        (("Say hi.", "", "hi\x0c"), "control_characters"),
    ],
)
def test_each_bad_row_is_dropped_and_counted(row, reason):
    kept, counts = cleaning.clean(frame_of(GOOD, row))
    assert rows_of(kept) == [GOOD]
    assert only_drop(counts) == {reason: 1}
    assert_counts_add_up(counts, 2)


@pytest.mark.parametrize(
    "output",
    [
        "Hello...",
        "... and then it rose.",
        "N/A: not applicable here",
        ".",
        ". .",
        "n/a.",
        "<no>",
        "\t\n\r fine",
        "<nooutput> is what Alpaca writes",
        "N/A N/A",
    ],
)
def test_usable_outputs_are_kept(output):
    kept, counts = cleaning.clean(frame_of(("Say hi.", "", output)))
    assert rows_of(kept) == [("Say hi.", "", output)]
    assert counts["dropped_total"] == 0


def test_a_long_run_of_dots_is_checked_quickly():
    # The old pattern backtracked exponentially: ~3 s for 36 dots, doubling every dot or so.
    start = time.perf_counter()
    assert cleaning.row_problem("Say hi.", "", "." * 36 + " and more") is None
    assert cleaning.row_problem("Say hi.", "", ". . " * 5000 + "..") is None
    assert cleaning.row_problem("Say hi.", "", "...\n" * 5000) == "placeholder_output"
    assert time.perf_counter() - start < 0.5


def test_missing_input_is_filled_with_empty_text():
    kept, counts = cleaning.clean(frame_of(("Say hi.", None, "hi"), ("Add.", "1, 2", "3")))
    assert rows_of(kept) == [("Say hi.", "", "hi"), ("Add.", "1, 2", "3")]
    assert counts["filled_input"] == 1
    assert counts["dropped_total"] == 0


def test_pandas_string_frame_with_na_is_read_like_none():
    frame = frame_of(("Say hi.", None, "hi"), ("Add.", "1", None)).astype("string")
    kept, counts = cleaning.clean(frame)
    assert rows_of(kept) == [("Say hi.", "", "hi")]
    assert counts["filled_input"] == 1 and only_drop(counts) == {"missing_output": 1}


def test_exact_duplicates_keep_the_first():
    other = ("Add.", "1, 2", "3")
    kept, counts = cleaning.clean(frame_of(GOOD, other, GOOD, other, GOOD))
    assert rows_of(kept) == [GOOD, other]
    assert only_drop(counts) == {"duplicate": 3}
    assert_counts_add_up(counts, 5)


def test_same_prompt_with_other_outputs_keeps_the_first_in_file_order():
    a, b = ("Name a bond.", "", "A treasury."), ("Name a bond.", "", "A muni.")
    kept, counts = cleaning.clean(frame_of(a, b, GOOD))
    assert rows_of(kept) == [a, GOOD]
    assert only_drop(counts) == {"conflicting_output": 1}
    kept, _ = cleaning.clean(frame_of(b, GOOD, a))
    assert rows_of(kept) == [b, GOOD]
    # Surrounding whitespace does not make another prompt; the same instruction with another input does.
    kept, counts = cleaning.clean(frame_of(a, (" Name a bond.\n", " ", "A gilt."), ("Name a bond.", "UK", "A gilt.")))
    assert rows_of(kept) == [a, ("Name a bond.", "UK", "A gilt.")]
    assert only_drop(counts) == {"conflicting_output": 1}


def test_case_punctuation_and_width_variants_are_one_prompt():
    variants = [
        ("NAME A BOND", "", "A treasury."),
        ("name a bond!", "", "A muni."),
        ("Ｎａｍｅ ａ ｂｏｎｄ", "", "A treasury."),
    ]
    kept, counts = cleaning.clean(frame_of(("Name a bond.", "", "A treasury."), *variants))
    assert rows_of(kept) == [("Name a bond.", "", "A treasury.")]
    assert only_drop(counts) == {"duplicate": 2, "conflicting_output": 1}  # same answer: a duplicate


def test_too_long_drop_or_truncate_with_a_fake_length():
    seen = []

    def length_of(conversation):  # characters of the user and assistant turns
        seen.append(conversation)
        return len(conversation["prompt"][0]["content"]) + len(conversation["completion"][0]["content"])

    short, long_ = ("Hi.", "", "Hello."), ("Tell me a story.", "dragons", "x" * 100)
    frame = frame_of(short, long_, ("Hi.", "", "Hello."))  # the duplicate is never measured
    kept, counts = cleaning.clean(frame, per_row(length_of), max_length=50, too_long="drop")
    assert rows_of(kept) == [short]
    assert only_drop(counts) == {"too_long": 1, "duplicate": 1}
    assert counts["truncated"] == 0
    assert seen == [chat_format.to_conversation(*short), chat_format.to_conversation(*long_)]
    assert_counts_add_up(counts, 3)

    kept, counts = cleaning.clean(frame, per_row(length_of), max_length=50, too_long="truncate")
    assert rows_of(kept) == [short, long_]  # kept whole: the trainer cuts it at max_length
    assert counts["truncated"] == 1
    assert only_drop(counts) == {"duplicate": 1}
    assert_counts_add_up(counts, 3)

    # Exactly max_length still fits.
    kept, counts = cleaning.clean(frame_of(short), per_row(length_of), max_length=len("Hi.Hello."), too_long="drop")
    assert rows_of(kept) == [short] and counts["dropped_total"] == 0


def test_too_long_with_the_tiny_tokenizer_after_the_chat_template(tiny_tokenizer):
    rows = [
        ("Define APR.", "", "APR is the yearly cost of a loan."),
        ("Summarize.", "Revenue rose 17% to $8.5 billion; net income grew.", "Revenue and income rose."),
        ("Explain compound interest.", "", "Interest on interest. " * 30),
    ]
    length_of = lambda conversation: chat_format.token_length(tiny_tokenizer, conversation)  # noqa: E731
    lengths = [length_of(chat_format.to_conversation(*r)) for r in rows]
    # The template (system turn, role markers) counts: more tokens than the texts alone.
    texts = [len(tiny_tokenizer(chat_format.user_text(i, x) + o)["input_ids"]) for i, x, o in rows]
    assert all(n > t for n, t in zip(lengths, texts))
    limit = sorted(lengths)[1]  # the middle one still fits, the longest does not
    measure = lambda frame: chat_format.token_lengths(tiny_tokenizer, frame, fits=limit)  # noqa: E731
    kept, counts = cleaning.clean(frame_of(*rows), measure, max_length=limit, too_long="drop")
    assert rows_of(kept) == [r for r, n in zip(rows, lengths) if n <= limit]
    assert only_drop(counts) == {"too_long": 1}
    kept, counts = cleaning.clean(frame_of(*rows), measure, max_length=limit, too_long="truncate")
    assert len(kept) == 3 and counts["truncated"] == 1 and counts["dropped_total"] == 0


def test_every_reason_in_one_frame_counts_add_up():
    frame = frame_of(
        GOOD,
        (None, "", "x"),
        ("a", "", None),
        ("", "", "x"),
        ("a", "", " "),
        ("a", "", "N/A"),
        ("a\x00", "", "x"),
        GOOD,
        ("Define APR.", "", "Another answer."),
        ("Long one.", "", "y" * 40),
        ("Add.", None, "3"),
    )
    kept, counts = cleaning.clean(frame, output_chars, 35, "drop")
    assert rows_of(kept) == [GOOD, ("Add.", "", "3")]
    assert only_drop(counts) == {reason: 1 for reason in cleaning.REASONS}
    assert counts["filled_input"] == 1
    assert_counts_add_up(counts, 11)


def test_a_too_long_first_answer_does_not_block_a_usable_one():
    frame = pd.DataFrame(
        {
            "instruction": ["Define ROI."] * 3,
            "input": [""] * 3,
            "output": ["x" * 50, "Return on investment.", "x" * 50],
        },
        dtype=object,
    )
    kept, counts = cleaning.clean(frame, output_chars, max_length=30)
    assert kept["output"].tolist() == ["Return on investment."]
    assert counts["dropped.too_long"] == 1 and counts["dropped.conflicting_output"] == 1


# ---------------------------------------------------------------- clean against the row-by-row rules


def reference_problem(instruction, input_text, output) -> str | None:
    """The row-by-row rules prepare had before it worked by column (Python str and re)."""
    if instruction is None:
        return "missing_instruction"
    if output is None:
        return "missing_output"
    if not instruction.strip() or not identity.normalise(instruction):  # "?" normalises to "": no prompt
        return "blank_instruction"
    if not output.strip():
        return "blank_output"
    if cleaning.PLACEHOLDER.fullmatch(output) or cleaning.DOTS.fullmatch(output):
        return "placeholder_output"
    if any(cleaning.CONTROL.search(text) for text in (instruction, input_text, output)):
        return "control_characters"
    return None


def reference_clean(rows: list[tuple], length_of, max_length: int, too_long: str):
    """One row at a time, in file order: the kept rows and the counts clean must give."""
    counts = dict.fromkeys(cleaning.REASONS, 0)
    kept, kept_by_prompt, truncated = [], {}, 0
    for instruction, input_text, output in rows:
        input_text = "" if input_text is None else input_text
        reason = reference_problem(instruction, input_text, output)
        key = same_prompt(instruction, input_text) if reason is None else None
        if reason is None and key in kept_by_prompt:
            reason = "duplicate" if kept_by_prompt[key] == output else "conflicting_output"
        elif reason is None and length_of is not None and length_of((instruction, input_text, output)) > max_length:
            if too_long == "drop":
                reason = "too_long"
            else:
                truncated += 1
        if reason:
            counts[reason] += 1
        else:
            kept.append((instruction, input_text, output))
            kept_by_prompt[key] = output
    return kept, {f"dropped.{r}": v for r, v in counts.items()}, truncated


# Texts that hit every rule's edge: Unicode whitespace, dots and ellipses, filler spellings,
# control characters, case and width variants of one prompt.
EDGY = st.sampled_from(
    [
        "Define APR.",
        "define  apr",
        "ＤＥＦＩＮＥ ＡＰＲ",
        "Sum it",
        "sum it!",
        "Q",
        "",
        " ",
        "\t\n",
        "\u3000",
        "\x1c",
        "\x85",
        "\u2028",
        "...",
        "…",
        ". .",
        "..x",
        "N/A",
        "n/a ",
        "İ/A",
        "<noinput>",
        "< no output >",
        "<nooutput>x",
        "ok\x00",
        "\x1b[0m",
        "\x7f",
        "x" * 30,
        "A cost.",
        "5",
    ]
)
TEXTS = st.lists(EDGY, min_size=1, max_size=3).map("".join)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.one_of(TEXTS, st.none()), st.one_of(TEXTS, st.none()), st.one_of(TEXTS, st.none())),
        min_size=1,
        max_size=30,
    ),
    too_long=st.sampled_from(["drop", "truncate"]),
    max_length=st.integers(0, 40),
)
def test_clean_by_column_gives_what_row_by_row_rules_give(rows, too_long, max_length):
    length_of = lambda row: len(row[2])  # noqa: E731
    kept, counts = cleaning.clean(frame_of(*rows), output_chars, max_length, too_long)
    want_kept, want_drops, want_truncated = reference_clean(rows, length_of, max_length, too_long)
    assert rows_of(kept) == want_kept
    assert {k: v for k, v in counts.items() if k.startswith("dropped.")} == want_drops
    assert counts["truncated"] == want_truncated
    assert counts["filled_input"] == sum(r[1] is None for r in rows)
    assert counts["rows_unchecked"] == 0
    assert_counts_add_up(counts, len(rows))
    assert [cleaning.row_problem(*r) for r in rows] == [reference_problem(i, x or "", o) for i, x, o in rows]


# ---------------------------------------------------------------- measuring only what decides something


def test_drawing_checks_few_rows_and_gives_the_same_sample(sample):
    """With n below the number of prompts, single-row prompts are measured in draw order until n fit;
    the split is the one that measuring every row gives, and the counts say what was not checked."""
    measured = []

    def lengths(rows):
        measured.extend(rows_of(rows))
        return output_chars(rows)

    everything, all_counts = cleaning.clean(sample, output_chars, 60, "drop")
    drawn, counts = cleaning.clean(sample, lengths, 60, "drop", n=100, seed=5)
    for a, b in zip(
        splitting.sample_and_split(everything, 100, 0.2, 0.05, 5), splitting.sample_and_split(drawn, 100, 0.2, 0.05, 5)
    ):
        pd.testing.assert_frame_equal(a, b)
    assert all_counts["rows_unchecked"] == 0 and all_counts["dropped.too_long"] > 0
    assert counts["length_checked"] <= len(measured) < len(sample) // 2
    assert counts["rows_unchecked"] == len(sample) - counts["length_checked"]  # the sample has no repeated prompt
    assert counts["rows_kept"] == 100 and counts["dropped.too_long"] == counts["length_checked"] - 100
    assert_counts_add_up(counts, len(sample))


def test_drawing_still_resolves_repeated_prompts_everywhere():
    """Duplicates and conflicts are counted over the whole file even when only a few prompts are drawn."""
    rows = [(f"Question {i}?", "", f"Answer {i}.") for i in range(50)]
    frame = frame_of(*rows, rows[7], ("question 7", "", "Another."), ("Long", "", "x" * 99), ("long!", "", "Short."))
    kept, counts = cleaning.clean(frame, output_chars, 40, "drop", n=3, seed=0)
    assert only_drop(counts) == {"duplicate": 1, "conflicting_output": 1, "too_long": 1}
    assert ("long!", "", "Short.") in rows_of(kept)  # the too-long first answer did not block it
    assert counts["rows_unchecked"] > 40
    assert_counts_add_up(counts, len(frame))


@settings(max_examples=30, deadline=None)
@given(
    rows=prompt_rows(),
    n=st.integers(3, 12),
    max_length=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    too_long=st.sampled_from(["drop", "truncate"]),
)
def test_drawing_and_checking_everything_agree(rows, n, max_length, seed, too_long):
    frame = frame_of(*rows)
    lengths = lambda rows: [len(x) for x in rows["input"]]  # noqa: E731  (prompts with an input are too long)
    everything, all_counts = cleaning.clean(frame, lengths, max_length, too_long)
    drawn, counts = cleaning.clean(frame, lengths, max_length, too_long, n=n, seed=seed)
    if len(everything) < 3:
        return
    for a, b in zip(
        splitting.sample_and_split(everything, n, 0.3, 0.2, seed), splitting.sample_and_split(drawn, n, 0.3, 0.2, seed)
    ):
        pd.testing.assert_frame_equal(a, b)
    for reason in ("duplicate", "conflicting_output", *cleaning.REASONS[:6]):
        assert counts[f"dropped.{reason}"] == all_counts[f"dropped.{reason}"]
    assert_counts_add_up(counts, len(rows))


# ---------------------------------------------------------------- failing on too much loss


def _counts(read: int, dropped: int, unchecked: int = 0, checked: int = 0, too_long: int = 0) -> dict:
    return {
        "rows_read": read,
        "rows_kept": read - dropped - unchecked,
        "dropped_total": dropped + too_long,
        "rows_unchecked": unchecked,
        "length_checked": checked,
        "dropped.blank_output": dropped,
        "dropped.too_long": too_long,
    }


def test_drop_share_above_the_limit_fails_with_the_numbers():
    cleaning.check_drop_share(_counts(10, 5), 0.5, "in.parquet")  # at the limit is fine
    with pytest.raises(DataError) as info:
        cleaning.check_drop_share(_counts(10, 6), 0.5, "in.parquet")
    message = str(info.value)
    for phrase in ("in.parquet", "dropped 6 of 10 rows", "60% > prepare.max_drop_fraction 50%", "blank_output=6"):
        assert phrase in message


def test_drop_share_counts_the_unchecked_rows_at_the_checked_rows_rate():
    # 100 rows: 10 blank, 20 length-checked of which 10 too long, 70 unchecked -> about 10 + 10 + 35 = 55 dropped.
    counts = _counts(100, 10, unchecked=70, checked=20, too_long=10)
    cleaning.check_drop_share(counts, 0.55, "in.parquet")
    with pytest.raises(DataError) as info:
        cleaning.check_drop_share(counts, 0.5, "in.parquet")
    for phrase in (
        "would drop about 55 of 100 rows",
        "55% > prepare.max_drop_fraction 50%",
        "too_long estimated from 20 rows checked",
        "blank_output=10, too_long=10",
    ):
        assert phrase in str(info.value)


def test_nothing_surviving_fails_clearly():
    with pytest.raises(DataError, match=r"in.parquet: 0 row\(s\) survive cleaning .*blank_output=10"):
        cleaning.check_drop_share(_counts(10, 10), 1.0, "in.parquet")
    _, counts = cleaning.clean(frame_of(("a", "", ""), (None, "", "x")))
    with pytest.raises(DataError, match="dropped: missing_instruction=1, blank_output=1"):
        cleaning.check_drop_share(counts, 1.0, "in.parquet")
    _, counts = cleaning.clean(frame_of(("a", "", "1"), ("b", "", "2")))
    with pytest.raises(DataError, match=r"2 row\(s\) survive cleaning \(need at least 3 to split\)"):
        cleaning.check_drop_share(counts, 1.0, "in.parquet")


# ---------------------------------------------------------------- the real Alpaca sample


@pytest.fixture(scope="module")
def alpaca() -> pd.DataFrame:
    return schema.canonicalize(readers.read_any(ALPACA), str(ALPACA), "drop")


@pytest.fixture(scope="module")
def qwen2_lengths():
    """Token lengths with the real Qwen2 vocabulary, in batches."""
    if not (QWEN2_TOKENIZER / "vocab.json").is_file():
        return None
    from finetune import tiny

    tokenizer = tiny.qwen2_tokenizer_from_files(QWEN2_TOKENIZER)
    return lambda rows: chat_format.token_lengths(tokenizer, rows, fits=512)


# The sample holds 6 records no trainer should see: 2 empty outputs and 4 whose output is
# Alpaca's "<nooutput>" / "<noinput>" filler. These are dropped whatever too_long says.
ALPACA_UNUSABLE = {"blank_output": 2, "placeholder_output": 4}


@requires_alpaca
def test_real_alpaca_truncate_keeps_every_usable_row(alpaca, qwen2_lengths):
    kept, counts = cleaning.clean(alpaca, qwen2_lengths, max_length=512, too_long="truncate")
    assert counts["rows_read"] == 5000
    assert only_drop(counts) == ALPACA_UNUSABLE
    assert counts["rows_kept"] == 4994 and counts["filled_input"] == 0
    if qwen2_lengths is not None:
        assert counts["truncated"] == 2
    cleaning.check_drop_share(counts, 0.5, str(ALPACA))
    splits = splitting.sample_and_split(kept, 5000, 0.2, 0.05, 42)
    assert tuple(len(s) for s in splits) == (3745, 250, 999)  # round(4994 * 0.2) = 999, round(4994 * 0.05) = 250
    assert not leaks(*splits)


@requires_alpaca
@requires_qwen2_tokenizer
def test_real_alpaca_drop_removes_the_two_rows_over_512_tokens(alpaca, qwen2_lengths):
    kept, counts = cleaning.clean(alpaca, qwen2_lengths, max_length=512, too_long="drop")
    assert only_drop(counts) == {**ALPACA_UNUSABLE, "too_long": 2}
    assert counts["rows_kept"] == 4992 and counts["truncated"] == 0
    assert_counts_add_up(counts, 5000)
