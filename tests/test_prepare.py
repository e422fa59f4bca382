"""prepare: every dropped row counted by reason, a seeded train/val/test split without prompt leakage."""

from __future__ import annotations

import re
import sys
import time
import unicodedata

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import ALPACA, QWEN2_TOKENIZER, REPO, make_project, requires_alpaca, requires_qwen2_tokenizer
from stages import ingest, io, params, prepare, prompts

COLUMNS = ["instruction", "input", "output"]
GOOD = ("Define APR.", "", "APR is the yearly cost of a loan.")
SPLITS = ("train", "val", "test")


def frame_of(*rows) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(COLUMNS, r)) for r in rows], columns=COLUMNS, dtype=object)


def rows_of(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame[COLUMNS].itertuples(index=False)]


def per_row(length_of):
    """A per-conversation length function as prepare's Lengths (rows -> counts)."""
    return lambda rows: [length_of(c) for c in prompts.conversations(rows)]


def output_chars(rows: pd.DataFrame) -> list[int]:
    return [len(o) for o in rows["output"]]


# ---------------------------------------------------------------- an independent prompt identity

def _norm(text: str) -> str:
    """Written apart from prompts.normalise on purpose: NFKC, casefold, \\s+ -> " ", edges by category."""
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


def assert_counts_add_up(counts: dict, n_rows: int) -> None:
    dropped = {k: v for k, v in counts.items() if k.startswith("dropped.")}
    assert set(dropped) == {f"dropped.{r}" for r in prepare.REASONS}
    assert counts["rows_read"] == n_rows
    assert counts["dropped_total"] == sum(dropped.values())
    assert counts["rows_read"] == counts["rows_kept"] + counts["dropped_total"] + counts["rows_unchecked"]


def only_drop(counts: dict) -> dict:
    return {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.") and v}


# ---------------------------------------------------------------- the prompt identity


@pytest.mark.parametrize("a, b", [
    ("Define APR.", "define apr"),
    ("Define  APR", " define\tAPR?! "),
    ("Define\u00a0APR", "DEFINE\u3000apr"),             # no-break and ideographic spaces
    ("ＤＥＦＩＮＥ ＡＰＲ．", "define APR"),              # fullwidth forms (NFKC)
    ("«Define APR»", "“define apr”"),                    # quotes are punctuation
    ("Straße", "STRASSE"),                                # casefold, not lower
    ("\ufb01nance", "finance"),                           # the fi ligature (NFKC)
])
def test_normalise_makes_variants_one_prompt(a, b):
    assert prompts.normalise(a) == prompts.normalise(b) == _norm(a)


@pytest.mark.parametrize("a, b", [
    ("U.S. GDP", "US GDP"),      # punctuation inside stays
    ("Define APR", "Define ARP"),
    ("$5", "5"),                 # symbols are not punctuation
])
def test_normalise_keeps_what_makes_another_prompt(a, b):
    assert prompts.normalise(a) != prompts.normalise(b)


def test_edge_characters_cover_the_whole_unicode_range():
    full = {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace() or unicodedata.category(c)[0] == "P"}
    assert prompts.EDGE == full


def test_identity_is_the_user_turn_of_the_normalised_parts():
    assert prompts.prompt_identity("Define APR.", "") == prompts.prompt_identity(" define apr", "  ")
    assert prompts.prompt_identity("Sum.", "1, 2.") == prompts.prompt_identity("sum", " 1, 2")
    assert prompts.prompt_identity("Sum", "1, 2") == prompts.prompt_identity("Sum\n Context:1, 2", "")
    assert prompts.prompt_identity("Sum", "1, 2") != prompts.prompt_identity("Sum", "1, 3")
    frame = frame_of(("Define APR.", None, "x"), ("Sum.", "1, 2.", "y"), ("Ｓｕｍ", "1, 2", "z"))
    assert prompts.prompt_identities(frame).to_pylist() == \
        [prompts.prompt_identity(i, x or "") for i, x, _ in rows_of(frame)]


# ---------------------------------------------------------------- clean: one reason at a time


@pytest.mark.parametrize("row, reason", [
    ((None, "", "an answer"), "missing_instruction"),
    (("Say hi.", "", None), "missing_output"),
    ((None, None, None), "missing_instruction"),  # counted once, under its first reason
    (("   ", "", "an answer"), "blank_instruction"),
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
])
def test_each_bad_row_is_dropped_and_counted(row, reason):
    kept, counts = prepare.clean(frame_of(GOOD, row))
    assert rows_of(kept) == [GOOD]
    assert only_drop(counts) == {reason: 1}
    assert_counts_add_up(counts, 2)


@pytest.mark.parametrize("output", [
    "Hello...", "... and then it rose.", "N/A: not applicable here", ".", ". .", "n/a.", "<no>", "\t\n\r fine",
    "<nooutput> is what Alpaca writes", "N/A N/A",
])
def test_usable_outputs_are_kept(output):
    kept, counts = prepare.clean(frame_of(("Say hi.", "", output)))
    assert rows_of(kept) == [("Say hi.", "", output)]
    assert counts["dropped_total"] == 0


def test_a_long_run_of_dots_is_checked_quickly():
    # The old pattern backtracked exponentially: ~3 s for 36 dots, doubling every dot or so.
    start = time.perf_counter()
    assert prepare.row_problem("Say hi.", "", "." * 36 + " and more") is None
    assert prepare.row_problem("Say hi.", "", ". . " * 5000 + "..") is None
    assert prepare.row_problem("Say hi.", "", "...\n" * 5000) == "placeholder_output"
    assert time.perf_counter() - start < 0.5


def test_missing_input_is_filled_with_empty_text():
    kept, counts = prepare.clean(frame_of(("Say hi.", None, "hi"), ("Add.", "1, 2", "3")))
    assert rows_of(kept) == [("Say hi.", "", "hi"), ("Add.", "1, 2", "3")]
    assert counts["filled_input"] == 1
    assert counts["dropped_total"] == 0


def test_pandas_string_frame_with_na_is_read_like_none():
    frame = frame_of(("Say hi.", None, "hi"), ("Add.", "1", None)).astype("string")
    kept, counts = prepare.clean(frame)
    assert rows_of(kept) == [("Say hi.", "", "hi")]
    assert counts["filled_input"] == 1 and only_drop(counts) == {"missing_output": 1}


def test_exact_duplicates_keep_the_first():
    other = ("Add.", "1, 2", "3")
    kept, counts = prepare.clean(frame_of(GOOD, other, GOOD, other, GOOD))
    assert rows_of(kept) == [GOOD, other]
    assert only_drop(counts) == {"duplicate": 3}
    assert_counts_add_up(counts, 5)


def test_same_prompt_with_other_outputs_keeps_the_first_in_file_order():
    a, b = ("Name a bond.", "", "A treasury."), ("Name a bond.", "", "A muni.")
    kept, counts = prepare.clean(frame_of(a, b, GOOD))
    assert rows_of(kept) == [a, GOOD]
    assert only_drop(counts) == {"conflicting_output": 1}
    kept, _ = prepare.clean(frame_of(b, GOOD, a))
    assert rows_of(kept) == [b, GOOD]
    # Surrounding whitespace does not make another prompt; the same instruction with another input does.
    kept, counts = prepare.clean(frame_of(a, (" Name a bond.\n", " ", "A gilt."), ("Name a bond.", "UK", "A gilt.")))
    assert rows_of(kept) == [a, ("Name a bond.", "UK", "A gilt.")]
    assert only_drop(counts) == {"conflicting_output": 1}


def test_case_punctuation_and_width_variants_are_one_prompt():
    variants = [("NAME A BOND", "", "A treasury."), ("name a bond!", "", "A muni."),
                ("Ｎａｍｅ ａ ｂｏｎｄ", "", "A treasury.")]
    kept, counts = prepare.clean(frame_of(("Name a bond.", "", "A treasury."), *variants))
    assert rows_of(kept) == [("Name a bond.", "", "A treasury.")]
    assert only_drop(counts) == {"duplicate": 2, "conflicting_output": 1}  # same answer: a duplicate


def test_too_long_drop_or_truncate_with_a_fake_length():
    seen = []

    def length_of(conversation):  # characters of the user and assistant turns
        seen.append(conversation)
        return len(conversation["prompt"][0]["content"]) + len(conversation["completion"][0]["content"])

    short, long_ = ("Hi.", "", "Hello."), ("Tell me a story.", "dragons", "x" * 100)
    frame = frame_of(short, long_, ("Hi.", "", "Hello."))  # the duplicate is never measured
    kept, counts = prepare.clean(frame, per_row(length_of), max_length=50, too_long="drop")
    assert rows_of(kept) == [short]
    assert only_drop(counts) == {"too_long": 1, "duplicate": 1}
    assert counts["truncated"] == 0
    assert seen == [prompts.to_conversation(*short), prompts.to_conversation(*long_)]
    assert_counts_add_up(counts, 3)

    kept, counts = prepare.clean(frame, per_row(length_of), max_length=50, too_long="truncate")
    assert rows_of(kept) == [short, long_]  # kept whole: the trainer cuts it at max_length
    assert counts["truncated"] == 1
    assert only_drop(counts) == {"duplicate": 1}
    assert_counts_add_up(counts, 3)

    # Exactly max_length still fits.
    kept, counts = prepare.clean(frame_of(short), per_row(length_of), max_length=len("Hi.Hello."), too_long="drop")
    assert rows_of(kept) == [short] and counts["dropped_total"] == 0


def test_too_long_with_the_tiny_tokenizer_after_the_chat_template(tiny_tokenizer):
    rows = [("Define APR.", "", "APR is the yearly cost of a loan."),
            ("Summarize.", "Revenue rose 17% to $8.5 billion; net income grew.", "Revenue and income rose."),
            ("Explain compound interest.", "", "Interest on interest. " * 30)]
    length_of = lambda conversation: prompts.token_length(tiny_tokenizer, conversation)  # noqa: E731
    lengths = [length_of(prompts.to_conversation(*r)) for r in rows]
    # The template (system turn, role markers) counts: more tokens than the texts alone.
    texts = [len(tiny_tokenizer(prompts.user_text(i, x) + o)["input_ids"]) for i, x, o in rows]
    assert all(n > t for n, t in zip(lengths, texts))
    limit = sorted(lengths)[1]  # the middle one still fits, the longest does not
    measure = lambda frame: prompts.token_lengths(tiny_tokenizer, frame, fits=limit)  # noqa: E731
    kept, counts = prepare.clean(frame_of(*rows), measure, max_length=limit, too_long="drop")
    assert rows_of(kept) == [r for r, n in zip(rows, lengths) if n <= limit]
    assert only_drop(counts) == {"too_long": 1}
    kept, counts = prepare.clean(frame_of(*rows), measure, max_length=limit, too_long="truncate")
    assert len(kept) == 3 and counts["truncated"] == 1 and counts["dropped_total"] == 0


def test_every_reason_in_one_frame_counts_add_up():
    frame = frame_of(
        GOOD, (None, "", "x"), ("a", "", None), ("", "", "x"), ("a", "", " "), ("a", "", "N/A"),
        ("a\x00", "", "x"), GOOD, ("Define APR.", "", "Another answer."), ("Long one.", "", "y" * 40),
        ("Add.", None, "3"),
    )
    kept, counts = prepare.clean(frame, output_chars, 35, "drop")
    assert rows_of(kept) == [GOOD, ("Add.", "", "3")]
    assert only_drop(counts) == {reason: 1 for reason in prepare.REASONS}
    assert counts["filled_input"] == 1
    assert_counts_add_up(counts, 11)


def test_a_too_long_first_answer_does_not_block_a_usable_one():
    frame = pd.DataFrame({"instruction": ["Define ROI."] * 3, "input": [""] * 3,
                          "output": ["x" * 50, "Return on investment.", "x" * 50]}, dtype=object)
    kept, counts = prepare.clean(frame, output_chars, max_length=30)
    assert kept["output"].tolist() == ["Return on investment."]
    assert counts["dropped.too_long"] == 1 and counts["dropped.conflicting_output"] == 1


# ---------------------------------------------------------------- clean against the row-by-row rules

def reference_problem(instruction, input_text, output) -> str | None:
    """The row-by-row rules prepare had before it worked by column (Python str and re)."""
    if instruction is None:
        return "missing_instruction"
    if output is None:
        return "missing_output"
    if not instruction.strip():
        return "blank_instruction"
    if not output.strip():
        return "blank_output"
    if prepare.PLACEHOLDER.fullmatch(output) or prepare.DOTS.fullmatch(output):
        return "placeholder_output"
    if any(prepare.CONTROL.search(text) for text in (instruction, input_text, output)):
        return "control_characters"
    return None


def reference_clean(rows: list[tuple], length_of, max_length: int, too_long: str):
    """One row at a time, in file order: the kept rows and the counts clean must give."""
    counts = dict.fromkeys(prepare.REASONS, 0)
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
EDGY = st.sampled_from([
    "Define APR.", "define  apr", "ＤＥＦＩＮＥ ＡＰＲ", "Sum it", "sum it!", "Q",
    "", " ", "\t\n", "\u3000", "\x1c", "\x85",
    "\u2028", "...", "…", ". .", "..x", "N/A", "n/a ", "İ/A", "<noinput>", "< no output >", "<nooutput>x",
    "ok\x00", "\x1b[0m", "\x7f", "x" * 30, "A cost.", "5",
])
TEXTS = st.lists(EDGY, min_size=1, max_size=3).map("".join)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(st.one_of(TEXTS, st.none()), st.one_of(TEXTS, st.none()), st.one_of(TEXTS, st.none())),
                  min_size=1, max_size=30),
    too_long=st.sampled_from(["drop", "truncate"]),
    max_length=st.integers(0, 40),
)
def test_clean_by_column_gives_what_row_by_row_rules_give(rows, too_long, max_length):
    length_of = lambda row: len(row[2])  # noqa: E731
    kept, counts = prepare.clean(frame_of(*rows), output_chars, max_length, too_long)
    want_kept, want_drops, want_truncated = reference_clean(rows, length_of, max_length, too_long)
    assert rows_of(kept) == want_kept
    assert {k: v for k, v in counts.items() if k.startswith("dropped.")} == want_drops
    assert counts["truncated"] == want_truncated
    assert counts["filled_input"] == sum(r[1] is None for r in rows)
    assert counts["rows_unchecked"] == 0
    assert_counts_add_up(counts, len(rows))
    assert [prepare.row_problem(*r) for r in rows] == [reference_problem(i, x or "", o) for i, x, o in rows]


# ---------------------------------------------------------------- sample and split


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """The embedded parquet sample after ingest and cleaning."""
    path = REPO / "data/raw/finance_alpaca.parquet"
    kept, _ = prepare.clean(ingest.canonicalize(io.read_any(path), str(path), "drop"))
    return kept


def expected_sizes(prompts_sampled: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """Test and val are shares of all sampled prompts, at least one each, and train keeps at least one."""
    test = min(max(1, round(prompts_sampled * test_fraction)), prompts_sampled - 2)
    val = min(max(1, round(prompts_sampled * val_fraction)), prompts_sampled - 1 - test)
    return prompts_sampled - test - val, val, test


def test_same_seed_same_split_other_seed_other_split(sample):
    first = prepare.sample_and_split(sample, 1000, 0.2, 0.05, seed=42)
    for a, b in zip(first, prepare.sample_and_split(sample, 1000, 0.2, 0.05, seed=42)):
        pd.testing.assert_frame_equal(a, b)
    other = prepare.sample_and_split(sample, 1000, 0.2, 0.05, seed=43)
    for a, b in zip(first, other):
        assert set(keys_of(a)) != set(keys_of(b))
    assert rows_of(other[0]) != rows_of(first[0])


def test_split_does_not_depend_on_row_order(sample):
    shuffled = sample.sample(frac=1, random_state=0).reset_index(drop=True)
    for a, b in zip(prepare.sample_and_split(sample, 500, 0.2, 0.05, 7),
                    prepare.sample_and_split(shuffled, 500, 0.2, 0.05, 7)):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("n, test_fraction, val_fraction",
                         [(5000, 0.2, 0.05), (1000, 0.25, 0.1), (101, 0.1, 0.3), (10, 0.5, 0.45), (3, 0.01, 0.01),
                          (3, 0.9, 0.05)])
def test_split_sizes_and_no_shared_prompt(sample, n, test_fraction, val_fraction):
    splits = prepare.sample_and_split(sample, n, test_fraction, val_fraction, seed=1)
    sampled = min(n, len(sample))
    assert tuple(len(s) for s in splits) == expected_sizes(sampled, test_fraction, val_fraction)
    assert not leaks(*splits)
    for split in splits:
        assert len(set(keys_of(split))) == len(split)
        assert list(split.columns) == list(sample.columns)
        assert set(rows_of(split)) <= set(rows_of(sample))


def test_val_comes_out_of_train_and_test_stays_the_same(sample):
    """A bigger val_fraction takes rows from train only: test is the same prompts, in the same order."""
    small = prepare.sample_and_split(sample, 1000, 0.2, 0.05, seed=3)
    big = prepare.sample_and_split(sample, 1000, 0.2, 0.15, seed=3)
    pd.testing.assert_frame_equal(small[2], big[2])
    assert set(rows_of(small[1])) < set(rows_of(big[1]))
    assert set(rows_of(big[0])) < set(rows_of(small[0]))


def test_too_few_prompts_to_split_is_a_data_error():
    frame = frame_of(("a", "", "1"), ("A.", "", "2"), ("b", "", "3"))
    with pytest.raises(io.DataError, match=r"2 prompt\(s\) to split .* need at least 3"):
        prepare.sample_and_split(frame, 5, 0.2, 0.05, 0)
    with pytest.raises(io.DataError, match=r"2 prompt\(s\) to split \(prepare.n 2"):
        prepare.sample_and_split(frame_of(("a", "", "1"), ("b", "", "2"), ("c", "", "3")), 2, 0.2, 0.05, 0)


def test_embedded_parquet_and_csv_give_the_same_split():
    results = {}
    for suffix in ("parquet", "csv"):
        path = REPO / f"data/raw/finance_alpaca.{suffix}"
        kept, counts = prepare.clean(ingest.canonicalize(io.read_any(path), str(path), "drop"))
        results[suffix] = kept, counts, prepare.sample_and_split(kept, 5000, 0.2, 0.05, 42)
    (kept_p, counts_p, split_p), (kept_c, counts_c, split_c) = results["parquet"], results["csv"]
    pd.testing.assert_frame_equal(kept_p, kept_c)
    for a, b in zip(split_p, split_c):
        pd.testing.assert_frame_equal(a, b)
    # A CSV cannot tell "" from a missing input, so only the fill count may differ.
    assert {k: v for k, v in counts_p.items() if k != "filled_input"} == \
        {k: v for k, v in counts_c.items() if k != "filled_input"}
    assert counts_p["rows_read"] == 1200 and counts_p["dropped_total"] > 0


# ---------------------------------------------------------------- property: no prompt in two splits

# Distinct prompts, and what can make two spellings of one of them look different.
BASES = [("Define APR.", ""), ("What is a bond?", ""), ("Add the numbers.", "1, 2"), ("Add the numbers.", "3, 4"),
         ("Straße costs", "fuel"), ("Summarize the report", "Revenue rose 5%."), ("Classify", "ACH DEBIT 12/05")]
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


@settings(max_examples=50, deadline=None)
@given(rows=prompt_rows(), n=st.integers(1, 10), test_fraction=st.floats(0.05, 0.6),
       val_fraction=st.floats(0.05, 0.3), seed=st.integers(0, 2**32 - 1))
def test_split_never_puts_one_prompt_in_two_splits(rows, n, test_fraction, val_fraction, seed):
    frame = frame_of(*rows)
    distinct = set(keys_of(frame))
    if min(n, len(distinct)) < 3:
        with pytest.raises(io.DataError, match="need at least 3"):
            prepare.sample_and_split(frame, n, test_fraction, val_fraction, seed)
        return
    splits = prepare.sample_and_split(frame, n, test_fraction, val_fraction, seed)
    assert not leaks(*splits)
    # Whole prompts: every spelling of a sampled prompt goes with it, and the sizes count prompts.
    sizes = tuple(len(set(keys_of(s))) for s in splits)
    assert sizes == expected_sizes(min(n, len(distinct)), test_fraction, val_fraction)
    for split in splits:
        assert len(split) == sum(k in set(keys_of(split)) for k in keys_of(frame))


def test_a_case_sensitive_identity_would_leak(monkeypatch):
    """Negative control: with the old key (surrounding whitespace only) the same check finds leaks."""
    rows = [(v, x, "A.") for i, x in BASES for v in (i, i.upper(), i.lower() + "!", i.title())]
    frame = frame_of(*rows)
    assert not leaks(*prepare.sample_and_split(frame, 100, 0.3, 0.2, seed=0))
    monkeypatch.setattr(prompts, "normalise", str.strip)
    assert leaks(*prepare.sample_and_split(frame, 100, 0.3, 0.2, seed=0))


# ---------------------------------------------------------------- measuring only what decides something


def test_drawing_checks_few_rows_and_gives_the_same_sample(sample):
    """With n below the number of prompts, single-row prompts are measured in draw order until n fit;
    the split is the one that measuring every row gives, and the counts say what was not checked."""
    measured = []

    def lengths(rows):
        measured.extend(rows_of(rows))
        return output_chars(rows)

    everything, all_counts = prepare.clean(sample, output_chars, 60, "drop")
    drawn, counts = prepare.clean(sample, lengths, 60, "drop", n=100, seed=5)
    for a, b in zip(prepare.sample_and_split(everything, 100, 0.2, 0.05, 5),
                    prepare.sample_and_split(drawn, 100, 0.2, 0.05, 5)):
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
    kept, counts = prepare.clean(frame, output_chars, 40, "drop", n=3, seed=0)
    assert only_drop(counts) == {"duplicate": 1, "conflicting_output": 1, "too_long": 1}
    assert ("long!", "", "Short.") in rows_of(kept)  # the too-long first answer did not block it
    assert counts["rows_unchecked"] > 40
    assert_counts_add_up(counts, len(frame))


@settings(max_examples=30, deadline=None)
@given(rows=prompt_rows(), n=st.integers(3, 12), max_length=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
       too_long=st.sampled_from(["drop", "truncate"]))
def test_drawing_and_checking_everything_agree(rows, n, max_length, seed, too_long):
    frame = frame_of(*rows)
    lengths = lambda rows: [len(x) for x in rows["input"]]  # noqa: E731  (prompts with an input are too long)
    everything, all_counts = prepare.clean(frame, lengths, max_length, too_long)
    drawn, counts = prepare.clean(frame, lengths, max_length, too_long, n=n, seed=seed)
    if len(everything) < 3:
        return
    for a, b in zip(prepare.sample_and_split(everything, n, 0.3, 0.2, seed),
                    prepare.sample_and_split(drawn, n, 0.3, 0.2, seed)):
        pd.testing.assert_frame_equal(a, b)
    for reason in ("duplicate", "conflicting_output", *prepare.REASONS[:6]):
        assert counts[f"dropped.{reason}"] == all_counts[f"dropped.{reason}"]
    assert_counts_add_up(counts, len(rows))


# ---------------------------------------------------------------- token lengths in batches


TRICKY = [("Define APR.", None, "APR is the yearly cost of a loan."),
          ("Quote the stop marker.", "It is <|im_end|> here.", "It reads <|im_end|>."),  # special tokens in content
          ("Translate.", "café, s'il vous plaît ÄÖÜ 株式", "Coffee, please."),
          (" Spaces around ", "  ", "\nnewlines\n"),
          ("Long.", "", "word " * 400)]


def test_batched_lengths_are_the_chat_templates_token_counts(tiny_tokenizer, sample):
    frame = pd.concat([frame_of(*TRICKY), sample.head(300)], ignore_index=True)
    one_by_one = [prompts.token_length(tiny_tokenizer, c) for c in prompts.conversations(frame)]
    assert prompts.token_lengths(tiny_tokenizer, frame, batch_size=64).tolist() == one_by_one
    # With a limit: exact above it, any bound at or below it for rows that surely fit.
    limit = 256  # the tests' max_length; a byte-level token is >= 1 byte, so rows of <= 256 bytes surely fit
    bounded = prompts.token_lengths(tiny_tokenizer, frame, fits=limit).tolist()
    assert [b == n if n > limit else b <= limit for b, n in zip(bounded, one_by_one)] == [True] * len(frame)
    assert sum(b != n for b, n in zip(bounded, one_by_one)) > len(frame) // 10  # those were not tokenized


def test_lengths_ignore_the_padding_a_padded_call_left_behind(tiny_tokenizer, sample):
    frame = sample.head(8)
    one_by_one = [prompts.token_length(tiny_tokenizer, c) for c in prompts.conversations(frame)]
    tiny_tokenizer(["a", "a much longer text " * 20], padding="longest", truncation=True, max_length=16)
    assert tiny_tokenizer.backend_tokenizer.padding is not None  # what transformers leaves set: the control
    assert prompts.token_lengths(tiny_tokenizer, frame).tolist() == one_by_one
    assert len(set(one_by_one)) > 1


def test_only_byte_level_bpe_gets_the_byte_bound(tiny_tokenizer):
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    assert prompts._one_byte_per_token(tiny_tokenizer)
    word_piece = Tokenizer(models.WordPiece({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word_piece.pre_tokenizer = pre_tokenizers.Whitespace()  # one [UNK] can stand for many bytes, or none
    byte_bpe = Tokenizer(models.BPE())
    byte_bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    byte_bpe.normalizer = normalizers.Replace("a", "aaa")  # lengthens ASCII: tokens may exceed bytes
    for backend in (word_piece, byte_bpe):
        assert not prompts._one_byte_per_token(SimpleNamespace(backend_tokenizer=backend))


@requires_qwen2_tokenizer
def test_batched_lengths_with_the_real_qwen2_tokenizer():
    from stages import modeling

    tokenizer = modeling.qwen2_tokenizer_from_files(QWEN2_TOKENIZER)
    assert prompts._one_byte_per_token(tokenizer)
    frame = frame_of(*TRICKY)
    assert prompts.token_lengths(tokenizer, frame).tolist() == \
        [prompts.token_length(tokenizer, c) for c in prompts.conversations(frame)]


def test_a_template_that_changes_the_content_is_rendered_row_by_row(tiny_base, tiny_tokenizer):
    """Negative control for the rendered-once template: one that trims the content is detected."""
    from stages import modeling

    trimming = modeling.load_tokenizer(tiny_base)
    trimming.chat_template = prompts.CHATML_TEMPLATE.replace("message['content']", "message['content'] | trim")
    assert prompts.template_parts(tiny_tokenizer) is not None
    assert prompts.template_parts(trimming) is None
    frame = frame_of(*TRICKY)
    assert prompts.token_lengths(trimming, frame).tolist() == \
        [prompts.token_length(trimming, c) for c in prompts.conversations(frame)]
    assert prompts.token_lengths(trimming, frame).tolist() != prompts.token_lengths(tiny_tokenizer, frame).tolist()


# ---------------------------------------------------------------- failing on too much loss


def _counts(read: int, dropped: int, unchecked: int = 0, checked: int = 0, too_long: int = 0) -> dict:
    return {"rows_read": read, "rows_kept": read - dropped - unchecked, "dropped_total": dropped + too_long,
            "rows_unchecked": unchecked, "length_checked": checked, "dropped.blank_output": dropped,
            "dropped.too_long": too_long}


def test_drop_share_above_the_limit_fails_with_the_numbers():
    prepare.check_drop_share(_counts(10, 5), 0.5, "in.parquet")  # at the limit is fine
    with pytest.raises(io.DataError) as info:
        prepare.check_drop_share(_counts(10, 6), 0.5, "in.parquet")
    message = str(info.value)
    for phrase in ("in.parquet", "dropped 6 of 10 rows", "60% > prepare.max_drop_fraction 50%", "blank_output=6"):
        assert phrase in message


def test_drop_share_counts_the_unchecked_rows_at_the_checked_rows_rate():
    # 100 rows: 10 blank, 20 length-checked of which 10 too long, 70 unchecked -> about 10 + 10 + 35 = 55 dropped.
    counts = _counts(100, 10, unchecked=70, checked=20, too_long=10)
    prepare.check_drop_share(counts, 0.55, "in.parquet")
    with pytest.raises(io.DataError) as info:
        prepare.check_drop_share(counts, 0.5, "in.parquet")
    for phrase in ("would drop about 55 of 100 rows", "55% > prepare.max_drop_fraction 50%",
                   "too_long estimated from 20 rows checked", "blank_output=10, too_long=10"):
        assert phrase in str(info.value)


def test_nothing_surviving_fails_clearly():
    with pytest.raises(io.DataError, match=r"in.parquet: 0 row\(s\) survive cleaning .*blank_output=10"):
        prepare.check_drop_share(_counts(10, 10), 1.0, "in.parquet")
    _, counts = prepare.clean(frame_of(("a", "", ""), (None, "", "x")))
    with pytest.raises(io.DataError, match="dropped: missing_instruction=1, blank_output=1"):
        prepare.check_drop_share(counts, 1.0, "in.parquet")
    _, counts = prepare.clean(frame_of(("a", "", "1"), ("b", "", "2")))
    with pytest.raises(io.DataError, match=r"2 row\(s\) survive cleaning \(need at least 3 to split\)"):
        prepare.check_drop_share(counts, 1.0, "in.parquet")


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5, "1e0"])
def test_test_fraction_outside_zero_one_is_a_params_error(fraction):
    with pytest.raises(params.ParamsError, match=r"prepare.test_fraction must be in \(0, 1\)"):
        params.parse({"prepare": {"test_fraction": fraction}}, ["prepare"])
    assert params.parse({"prepare": {"test_fraction": 0.2}}, ["prepare"]).prepare.test_fraction == 0.2


@pytest.mark.parametrize("fractions, message", [
    ({"val_fraction": 0}, r"prepare.val_fraction must be in \(0, 1\) \(training evaluates on the val split\), got 0$"),
    ({"val_fraction": -0.1}, r"prepare.val_fraction must be in \(0, 1\) .*got -0.1$"),
    ({"val_fraction": 1}, r"prepare.val_fraction must be in \(0, 1\) .*got 1$"),
    ({"val_fraction": 0.5, "test_fraction": 0.5},
     r"prepare.val_fraction \+ prepare.test_fraction must be < 1 \(the rest is train\), got 0.5 \+ 0.5$"),
])
def test_val_fraction_that_leaves_no_val_or_no_train_is_a_params_error(fractions, message):
    with pytest.raises(params.ParamsError, match=message):
        params.parse({"prepare": fractions}, ["prepare"])
    ok = params.parse({"prepare": {"val_fraction": 0.1, "test_fraction": 0.85}}, ["prepare"])
    assert ok.prepare.val_fraction == 0.1


@pytest.fixture
def prepare_project(tmp_path, monkeypatch):
    """A project copy with an ingested file and a fake tokenizer; prepare.main() runs inside it."""
    project = make_project(tmp_path, git=False)
    monkeypatch.chdir(project)
    monkeypatch.delenv("PARAMS_FILE", raising=False)
    monkeypatch.setattr(prepare, "tokenizer_lengths", lambda base_dir, max_length: lambda rows: [10] * len(rows))
    return project


def _stage_outputs(project):
    outputs = (prepare.TRAIN_OUT, prepare.VAL_OUT, prepare.TEST_OUT, prepare.METRICS_OUT)
    return [p for p in outputs if (project / p).exists()]


def test_stage_writes_three_splits_and_counts(prepare_project):
    io.write_parquet(prepare.IN, frame_of(*[(f"Question {i}?", "", f"Answer {i}.") for i in range(40)],
                                          ("Q", "", "N/A")).astype("string"))
    prepare.main()
    splits = [pd.read_parquet(p) for p in (prepare.TRAIN_OUT, prepare.VAL_OUT, prepare.TEST_OUT)]
    metrics = io.read_json(prepare.METRICS_OUT)
    assert tuple(len(s) for s in splits) == (28, 2, 10)  # params: test_fraction 0.25, val_fraction 0.05
    assert not leaks(*splits)
    assert metrics["rows_read"] == 41 and metrics["dropped.placeholder_output"] == 1
    assert (metrics["train"], metrics["val"], metrics["test"], metrics["sampled"]) == (28, 2, 10, 40)
    assert_counts_add_up(metrics, 41)


def test_stage_fails_when_cleaning_drops_too_much(prepare_project):
    rows = [(f"Question {i}?", "", "N/A" if i % 3 else f"Answer {i}.") for i in range(30)]
    io.write_parquet(prepare.IN, frame_of(*rows).astype("string"))
    with pytest.raises(io.DataError, match=r"dropped 20 of 30 rows \(67% > prepare.max_drop_fraction 50%\)"):
        prepare.main()
    assert _stage_outputs(prepare_project) == []


def test_stage_fails_when_nothing_survives(prepare_project):
    io.write_parquet(prepare.IN, frame_of(("a", "", " "), ("b", "", "...")).astype("string"))
    with pytest.raises(io.DataError, match=r"0 row\(s\) survive cleaning"):
        prepare.main()
    assert _stage_outputs(prepare_project) == []


# ---------------------------------------------------------------- the real Alpaca sample


@pytest.fixture(scope="module")
def alpaca() -> pd.DataFrame:
    return ingest.canonicalize(io.read_any(ALPACA), str(ALPACA), "drop")


@pytest.fixture(scope="module")
def qwen2_lengths():
    """Token lengths with the real Qwen2 vocabulary, in batches."""
    if not (QWEN2_TOKENIZER / "vocab.json").is_file():
        return None
    from stages import modeling

    tokenizer = modeling.qwen2_tokenizer_from_files(QWEN2_TOKENIZER)
    return lambda rows: prompts.token_lengths(tokenizer, rows, fits=512)


# The sample holds 6 records no trainer should see: 2 empty outputs and 4 whose output is
# Alpaca's "<nooutput>" / "<noinput>" filler. These are dropped whatever too_long says.
ALPACA_UNUSABLE = {"blank_output": 2, "placeholder_output": 4}


@requires_alpaca
def test_real_alpaca_truncate_keeps_every_usable_row(alpaca, qwen2_lengths):
    kept, counts = prepare.clean(alpaca, qwen2_lengths, max_length=512, too_long="truncate")
    assert counts["rows_read"] == 5000
    assert only_drop(counts) == ALPACA_UNUSABLE
    assert counts["rows_kept"] == 4994 and counts["filled_input"] == 0
    if qwen2_lengths is not None:
        assert counts["truncated"] == 2
    prepare.check_drop_share(counts, 0.5, str(ALPACA))
    splits = prepare.sample_and_split(kept, 5000, 0.2, 0.05, 42)
    assert tuple(len(s) for s in splits) == (3745, 250, 999)  # round(4994 * 0.2) = 999, round(4994 * 0.05) = 250
    assert not leaks(*splits)


@requires_alpaca
@requires_qwen2_tokenizer
def test_real_alpaca_drop_removes_the_two_rows_over_512_tokens(alpaca, qwen2_lengths):
    kept, counts = prepare.clean(alpaca, qwen2_lengths, max_length=512, too_long="drop")
    assert only_drop(counts) == {**ALPACA_UNUSABLE, "too_long": 2}
    assert counts["rows_kept"] == 4992 and counts["truncated"] == 0
    assert_counts_add_up(counts, 5000)
