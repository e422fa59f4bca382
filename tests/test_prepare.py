"""prepare: every dropped row counted by reason, a seeded split without prompt leakage."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import ALPACA, QWEN2_TOKENIZER, REPO, make_project, requires_alpaca, requires_qwen2_tokenizer
from stages import ingest, io, params, prepare, prompts

COLUMNS = ["instruction", "input", "output"]
GOOD = ("Define APR.", "", "APR is the yearly cost of a loan.")


def frame_of(*rows) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(COLUMNS, r)) for r in rows], columns=COLUMNS, dtype=object)


def rows_of(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame[COLUMNS].itertuples(index=False)]


def keys_of(frame: pd.DataFrame) -> set[str]:
    return {prompts.prompt_key(i, x) for i, x in zip(frame["instruction"], frame["input"])}


def assert_counts_add_up(counts: dict, n_rows: int) -> None:
    dropped = {k: v for k, v in counts.items() if k.startswith("dropped.")}
    assert set(dropped) == {f"dropped.{r}" for r in prepare.REASONS}
    assert counts["rows_read"] == n_rows
    assert counts["dropped_total"] == sum(dropped.values())
    assert counts["rows_read"] == counts["rows_kept"] + counts["dropped_total"]


def only_drop(counts: dict) -> dict:
    return {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.") and v}


# ---------------------------------------------------------------- clean: one reason at a time


@pytest.mark.parametrize("row, reason", [
    ((None, "", "an answer"), "missing_instruction"),
    (("Say hi.", "", None), "missing_output"),
    ((None, None, None), "missing_instruction"),  # counted once, under its first reason
    (("   ", "", "an answer"), "blank_instruction"),
    (("Say hi.", "", ""), "blank_output"),
    (("Say hi.", "", " \t\n\u3000"), "blank_output"),
    (("Say hi.", "", "<noinput>"), "placeholder_output"),
    (("Say hi.", "", " <nooutput>\n"), "placeholder_output"),
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


def test_too_long_drop_or_truncate_with_a_fake_length():
    seen = []

    def length_of(conversation):  # characters of the user and assistant turns
        seen.append(conversation)
        return len(conversation["prompt"][0]["content"]) + len(conversation["completion"][0]["content"])

    short, long_ = ("Hi.", "", "Hello."), ("Tell me a story.", "dragons", "x" * 100)
    frame = frame_of(short, long_, ("Hi.", "", "Hello."))  # the duplicate is never measured
    kept, counts = prepare.clean(frame, length_of, max_length=50, too_long="drop")
    assert rows_of(kept) == [short]
    assert only_drop(counts) == {"too_long": 1, "duplicate": 1}
    assert counts["truncated"] == 0
    assert seen == [prompts.to_conversation(*short), prompts.to_conversation(*long_)]
    assert_counts_add_up(counts, 3)

    kept, counts = prepare.clean(frame, length_of, max_length=50, too_long="truncate")
    assert rows_of(kept) == [short, long_]  # kept whole: the trainer cuts it at max_length
    assert counts["truncated"] == 1
    assert only_drop(counts) == {"duplicate": 1}
    assert_counts_add_up(counts, 3)

    # Exactly max_length still fits.
    kept, counts = prepare.clean(frame_of(short), length_of, max_length=len("Hi.Hello."), too_long="drop")
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
    kept, counts = prepare.clean(frame_of(*rows), length_of, max_length=limit, too_long="drop")
    assert rows_of(kept) == [r for r, n in zip(rows, lengths) if n <= limit]
    assert only_drop(counts) == {"too_long": 1}
    kept, counts = prepare.clean(frame_of(*rows), length_of, max_length=limit, too_long="truncate")
    assert len(kept) == 3 and counts["truncated"] == 1 and counts["dropped_total"] == 0


def test_every_reason_in_one_frame_counts_add_up():
    frame = frame_of(
        GOOD, (None, "", "x"), ("a", "", None), ("", "", "x"), ("a", "", " "), ("a", "", "N/A"),
        ("a\x00", "", "x"), GOOD, ("Define APR.", "", "Another answer."), ("Long one.", "", "y" * 40),
        ("Add.", None, "3"),
    )
    kept, counts = prepare.clean(frame, lambda c: len(c["completion"][0]["content"]), 35, "drop")
    assert rows_of(kept) == [GOOD, ("Add.", "", "3")]
    assert only_drop(counts) == {reason: 1 for reason in prepare.REASONS}
    assert counts["filled_input"] == 1
    assert_counts_add_up(counts, 11)


# ---------------------------------------------------------------- sample and split


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """The embedded parquet sample after ingest and cleaning (1,168 rows)."""
    path = REPO / "data/raw/finance_alpaca.parquet"
    kept, _ = prepare.clean(ingest.canonicalize(io.read_any(path), str(path), "drop"))
    return kept


def test_same_seed_same_split_other_seed_other_split(sample):
    train, test = prepare.sample_and_split(sample, 1000, 0.2, seed=42)
    again_train, again_test = prepare.sample_and_split(sample, 1000, 0.2, seed=42)
    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(test, again_test)
    other_train, other_test = prepare.sample_and_split(sample, 1000, 0.2, seed=43)
    assert keys_of(other_test) != keys_of(test)
    assert rows_of(other_train) != rows_of(train)


def test_split_does_not_depend_on_row_order(sample):
    shuffled = sample.sample(frac=1, random_state=0).reset_index(drop=True)
    for a, b in zip(prepare.sample_and_split(sample, 500, 0.2, 7), prepare.sample_and_split(shuffled, 500, 0.2, 7)):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("n, fraction", [(5000, 0.2), (1000, 0.25), (101, 0.1), (10, 0.5), (3, 0.01), (2, 0.99)])
def test_split_sizes_and_no_shared_prompt(sample, n, fraction):
    train, test = prepare.sample_and_split(sample, n, fraction, seed=1)
    sampled = min(n, len(sample))
    assert len(train) + len(test) == sampled
    assert len(test) == min(max(1, round(sampled * fraction)), sampled - 1)  # never an empty side
    assert not keys_of(train) & keys_of(test)
    assert len(keys_of(train)) == len(train) and len(keys_of(test)) == len(test)
    assert list(train.columns) == list(sample.columns)
    assert set(rows_of(train)) | set(rows_of(test)) <= set(rows_of(sample))


def test_embedded_parquet_and_csv_give_the_same_split():
    results = {}
    for suffix in ("parquet", "csv"):
        path = REPO / f"data/raw/finance_alpaca.{suffix}"
        kept, counts = prepare.clean(ingest.canonicalize(io.read_any(path), str(path), "drop"))
        results[suffix] = kept, counts, prepare.sample_and_split(kept, 5000, 0.2, 42)
    (kept_p, counts_p, split_p), (kept_c, counts_c, split_c) = results["parquet"], results["csv"]
    pd.testing.assert_frame_equal(kept_p, kept_c)
    for a, b in zip(split_p, split_c):
        pd.testing.assert_frame_equal(a, b)
    # A CSV cannot tell "" from a missing input, so only the fill count may differ.
    assert {k: v for k, v in counts_p.items() if k != "filled_input"} == \
        {k: v for k, v in counts_c.items() if k != "filled_input"}
    assert counts_p["rows_read"] == 1200 and counts_p["dropped_total"] > 0


# ---------------------------------------------------------------- property: clean + split on random rows

TEXT = st.sampled_from(["Define APR.", "define apr.", " Define APR. ", "Add 2 and 3.", "Sum it.", "Q"])
INPUT = st.sampled_from(["", " ", "1, 2", "context\nline", "Q"])
OUTPUT = st.sampled_from(["A cost.", "5", "Five.", "x" * 30, "...", "N/A", "<noinput>", "ok\x00", "Q"])
MAYBE_BLANK = st.sampled_from([None, "", "  ", "\t\n"])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.one_of(TEXT, MAYBE_BLANK), st.one_of(INPUT, st.none()), st.one_of(OUTPUT, MAYBE_BLANK)),
                  min_size=1, max_size=40),
    too_long=st.sampled_from(["drop", "truncate"]),
    n=st.integers(1, 50),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31 - 1),
)
def test_clean_and_split_properties(rows, too_long, n, fraction, seed):
    frame = frame_of(*rows)
    length_of = lambda c: len(c["completion"][0]["content"])  # noqa: E731
    kept, counts = prepare.clean(frame, length_of, max_length=20, too_long=too_long)
    assert_counts_add_up(counts, len(rows))
    assert counts["rows_kept"] == len(kept)
    assert counts["filled_input"] == sum(r[1] is None for r in rows)
    assert counts["dropped.too_long"] == 0 if too_long == "truncate" else counts["truncated"] == 0
    # Each row is counted under the first reason row_problem gives, the rest by prompt / length.
    alone = [prepare.row_problem(i, "" if x is None else x, o) for i, x, o in rows]
    for reason in prepare.REASONS[:6]:
        assert counts[f"dropped.{reason}"] == alone.count(reason)
    # Kept rows are usable, one per prompt, in file order; none had an earlier usable row with its prompt.
    assert all(prepare.row_problem(*r) is None for r in rows_of(kept))
    assert len(keys_of(kept)) == len(kept)
    usable = [(i, "" if x is None else x, o) for (i, x, o), why in zip(rows, alone) if why is None]
    first = {}
    for row in usable:
        first.setdefault(prompts.prompt_key(row[0], row[1]), row)
    assert rows_of(kept) == [r for r in first.values() if r in rows_of(kept)]
    assert all(r in first.values() for r in rows_of(kept))

    if len(kept) < 2:
        with pytest.raises(io.DataError, match="survive cleaning"):
            prepare.check_drop_share(counts, 1.0, "mem")
        return
    train, test = prepare.sample_and_split(kept, n, fraction, seed)
    assert not keys_of(train) & keys_of(test)
    sampled = min(n, len(kept))
    assert len(train) + len(test) == sampled
    assert len(test) == min(max(1, round(sampled * fraction)), sampled - 1)
    again = prepare.sample_and_split(kept, n, fraction, seed)
    pd.testing.assert_frame_equal(train, again[0])
    pd.testing.assert_frame_equal(test, again[1])


# ---------------------------------------------------------------- failing on too much loss


def _counts(read: int, dropped: int) -> dict:
    return {"rows_read": read, "rows_kept": read - dropped, "dropped_total": dropped,
            "dropped.blank_output": dropped}


def test_drop_share_above_the_limit_fails_with_the_numbers():
    prepare.check_drop_share(_counts(10, 5), 0.5, "in.parquet")  # at the limit is fine
    with pytest.raises(io.DataError) as info:
        prepare.check_drop_share(_counts(10, 6), 0.5, "in.parquet")
    message = str(info.value)
    for phrase in ("in.parquet", "dropped 6 of 10 rows", "60% > prepare.max_drop_fraction 50%", "blank_output=6"):
        assert phrase in message


def test_nothing_surviving_fails_clearly():
    with pytest.raises(io.DataError, match=r"in.parquet: 0 row\(s\) survive cleaning .*blank_output=10"):
        prepare.check_drop_share(_counts(10, 10), 1.0, "in.parquet")
    _, counts = prepare.clean(frame_of(("a", "", ""), (None, "", "x")))
    with pytest.raises(io.DataError, match="dropped: missing_instruction=1, blank_output=1"):
        prepare.check_drop_share(counts, 1.0, "in.parquet")


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5, "1e0"])
def test_test_fraction_outside_zero_one_is_a_params_error(fraction):
    with pytest.raises(params.ParamsError, match=r"prepare.test_fraction must be in \(0, 1\)"):
        params.parse({"prepare": {"test_fraction": fraction}}, ["prepare"])
    assert params.parse({"prepare": {"test_fraction": 0.2}}, ["prepare"]).prepare.test_fraction == 0.2


@pytest.fixture
def prepare_project(tmp_path, monkeypatch):
    """A project copy with an ingested file and a fake tokenizer; prepare.main() runs inside it."""
    project = make_project(tmp_path, git=False)
    monkeypatch.chdir(project)
    monkeypatch.delenv("PARAMS_FILE", raising=False)
    monkeypatch.setattr(prepare, "tokenizer_length", lambda base_dir: lambda c: 10)
    return project


def _stage_outputs(project):
    return [p for p in (prepare.TRAIN_OUT, prepare.TEST_OUT, prepare.METRICS_OUT) if (project / p).exists()]


def test_stage_writes_split_and_counts(prepare_project):
    io.write_parquet(prepare.IN, frame_of(*[(f"Question {i}?", "", f"Answer {i}.") for i in range(40)],
                                          ("Q", "", "N/A")).astype("string"))
    prepare.main()
    train, test = pd.read_parquet(prepare.TRAIN_OUT), pd.read_parquet(prepare.TEST_OUT)
    metrics = io.read_json(prepare.METRICS_OUT)
    assert (len(train), len(test)) == (30, 10)  # params: test_fraction 0.25
    assert metrics["rows_read"] == 41 and metrics["dropped.placeholder_output"] == 1
    assert metrics["train"] == 30 and metrics["test"] == 10 and metrics["sampled"] == 40
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
def qwen2_length():
    """Token length with the real Qwen2 vocabulary, memoized: both real-data tests measure once."""
    if not (QWEN2_TOKENIZER / "vocab.json").is_file():
        return None
    from stages import modeling

    tokenizer = modeling.qwen2_tokenizer_from_files(QWEN2_TOKENIZER)
    cache = {}

    def length_of(conversation):
        key = (conversation["prompt"][0]["content"], conversation["completion"][0]["content"])
        if key not in cache:
            cache[key] = prompts.token_length(tokenizer, conversation)
        return cache[key]

    return length_of


# The sample holds 6 records no trainer should see: 2 empty outputs and 4 whose output is
# Alpaca's "<nooutput>" / "<noinput>" filler. These are dropped whatever too_long says.
ALPACA_UNUSABLE = {"blank_output": 2, "placeholder_output": 4}


@requires_alpaca
def test_real_alpaca_truncate_keeps_every_usable_row(alpaca, qwen2_length):
    kept, counts = prepare.clean(alpaca, qwen2_length, max_length=512, too_long="truncate")
    assert counts["rows_read"] == 5000
    assert only_drop(counts) == ALPACA_UNUSABLE
    assert counts["rows_kept"] == 4994 and counts["filled_input"] == 0
    if qwen2_length is not None:
        assert counts["truncated"] == 2
    prepare.check_drop_share(counts, 0.5, str(ALPACA))
    train, test = prepare.sample_and_split(kept, 5000, 0.2, 42)
    assert (len(train), len(test)) == (3995, 999)  # round(4994 * 0.2) = 999
    assert not keys_of(train) & keys_of(test)


@requires_alpaca
@requires_qwen2_tokenizer
def test_real_alpaca_drop_removes_the_two_rows_over_512_tokens(alpaca, qwen2_length):
    kept, counts = prepare.clean(alpaca, qwen2_length, max_length=512, too_long="drop")
    assert only_drop(counts) == {**ALPACA_UNUSABLE, "too_long": 2}
    assert counts["rows_kept"] == 4992 and counts["truncated"] == 0
    assert_counts_add_up(counts, 5000)
    longest = sorted(qwen2_length(prompts.to_conversation(*r)) for r in rows_of(alpaca))[-3:]
    assert longest[0] <= 512 < longest[1]


def test_a_too_long_first_answer_does_not_block_a_usable_one():
    frame = pd.DataFrame({"instruction": ["Define ROI."] * 3, "input": [""] * 3,
                          "output": ["x" * 50, "Return on investment.", "x" * 50]}, dtype=object)
    kept, counts = prepare.clean(frame, lambda c: len(c["completion"][0]["content"]), max_length=30)
    assert kept["output"].tolist() == ["Return on investment."]
    assert counts["dropped.too_long"] == 1 and counts["dropped.conflicting_output"] == 1
