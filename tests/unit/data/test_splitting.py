"""finetune.data.splitting: a seeded sample of prompts, split train / val / test with no prompt in two splits."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune import config
from finetune.data import cleaning, identity, readers, schema, splitting
from finetune.errors import DataError, ParamsError
from frames import BASES, frame_of, keys_of, leaks, prompt_rows, rows_of
from helpers import REPO


def expected_sizes(prompts_sampled: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """Test and val are shares of all sampled prompts, at least one each, and train keeps at least one."""
    test = min(max(1, round(prompts_sampled * test_fraction)), prompts_sampled - 2)
    val = min(max(1, round(prompts_sampled * val_fraction)), prompts_sampled - 1 - test)
    return prompts_sampled - test - val, val, test


def test_same_seed_same_split_other_seed_other_split(sample):
    first = splitting.sample_and_split(sample, 1000, 0.2, 0.05, seed=42)
    for a, b in zip(first, splitting.sample_and_split(sample, 1000, 0.2, 0.05, seed=42)):
        pd.testing.assert_frame_equal(a, b)
    other = splitting.sample_and_split(sample, 1000, 0.2, 0.05, seed=43)
    for a, b in zip(first, other):
        assert set(keys_of(a)) != set(keys_of(b))
    assert rows_of(other[0]) != rows_of(first[0])


def test_split_does_not_depend_on_row_order(sample):
    shuffled = sample.sample(frac=1, random_state=0).reset_index(drop=True)
    for a, b in zip(
        splitting.sample_and_split(sample, 500, 0.2, 0.05, 7), splitting.sample_and_split(shuffled, 500, 0.2, 0.05, 7)
    ):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    "n, test_fraction, val_fraction",
    [(5000, 0.2, 0.05), (1000, 0.25, 0.1), (101, 0.1, 0.3), (10, 0.5, 0.45), (3, 0.01, 0.01), (3, 0.9, 0.05)],
)
def test_split_sizes_and_no_shared_prompt(sample, n, test_fraction, val_fraction):
    splits = splitting.sample_and_split(sample, n, test_fraction, val_fraction, seed=1)
    sampled = min(n, len(sample))
    assert tuple(len(s) for s in splits) == expected_sizes(sampled, test_fraction, val_fraction)
    assert not leaks(*splits)
    for split in splits:
        assert len(set(keys_of(split))) == len(split)
        assert list(split.columns) == list(sample.columns)
        assert set(rows_of(split)) <= set(rows_of(sample))


def test_val_comes_out_of_train_and_test_stays_the_same(sample):
    """A bigger val_fraction takes rows from train only: test is the same prompts, in the same order."""
    small = splitting.sample_and_split(sample, 1000, 0.2, 0.05, seed=3)
    big = splitting.sample_and_split(sample, 1000, 0.2, 0.15, seed=3)
    pd.testing.assert_frame_equal(small[2], big[2])
    assert set(rows_of(small[1])) < set(rows_of(big[1]))
    assert set(rows_of(big[0])) < set(rows_of(small[0]))


def test_too_few_prompts_to_split_is_a_data_error():
    frame = frame_of(("a", "", "1"), ("A.", "", "2"), ("b", "", "3"))
    with pytest.raises(DataError, match=r"2 prompt\(s\) to split .* need at least 3"):
        splitting.sample_and_split(frame, 5, 0.2, 0.05, 0)
    with pytest.raises(DataError, match=r"2 prompt\(s\) to split \(prepare.n 2"):
        splitting.sample_and_split(frame_of(("a", "", "1"), ("b", "", "2"), ("c", "", "3")), 2, 0.2, 0.05, 0)


def test_embedded_parquet_and_csv_give_the_same_split():
    results = {}
    for suffix in ("parquet", "csv"):
        path = REPO / f"data/raw/finance_alpaca.{suffix}"
        kept, counts = cleaning.clean(schema.canonicalize(readers.read_any(path), str(path), "drop"))
        results[suffix] = kept, counts, splitting.sample_and_split(kept, 5000, 0.2, 0.05, 42)
    (kept_p, counts_p, split_p), (kept_c, counts_c, split_c) = results["parquet"], results["csv"]
    pd.testing.assert_frame_equal(kept_p, kept_c)
    for a, b in zip(split_p, split_c):
        pd.testing.assert_frame_equal(a, b)
    # A CSV cannot tell "" from a missing input, so only the fill count may differ.
    assert {k: v for k, v in counts_p.items() if k != "filled_input"} == {
        k: v for k, v in counts_c.items() if k != "filled_input"
    }
    assert counts_p["rows_read"] == 1200 and counts_p["dropped_total"] > 0


# ---------------------------------------------------------------- property: no prompt in two splits

# Distinct prompts, and what can make two spellings of one of them look different.


@settings(max_examples=50, deadline=None)
@given(
    rows=prompt_rows(),
    n=st.integers(1, 10),
    test_fraction=st.floats(0.05, 0.6),
    val_fraction=st.floats(0.05, 0.3),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_never_puts_one_prompt_in_two_splits(rows, n, test_fraction, val_fraction, seed):
    frame = frame_of(*rows)
    distinct = set(keys_of(frame))
    if min(n, len(distinct)) < 3:
        with pytest.raises(DataError, match="need at least 3"):
            splitting.sample_and_split(frame, n, test_fraction, val_fraction, seed)
        return
    splits = splitting.sample_and_split(frame, n, test_fraction, val_fraction, seed)
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
    assert not leaks(*splitting.sample_and_split(frame, 100, 0.3, 0.2, seed=0))
    monkeypatch.setattr(identity, "normalise", str.strip)
    assert leaks(*splitting.sample_and_split(frame, 100, 0.3, 0.2, seed=0))


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5, "1e0"])
def test_test_fraction_outside_zero_one_is_a_params_error(fraction):
    with pytest.raises(ParamsError, match=r"prepare.test_fraction must be in \(0, 1\)"):
        config.parse({"prepare": {"test_fraction": fraction}}, ["prepare"])
    assert config.parse({"prepare": {"test_fraction": 0.2}}, ["prepare"]).prepare.test_fraction == 0.2


@pytest.mark.parametrize(
    "fractions, message",
    [
        (
            {"val_fraction": 0},
            r"prepare.val_fraction must be in \(0, 1\) \(training evaluates on the val split\), got 0$",
        ),
        ({"val_fraction": -0.1}, r"prepare.val_fraction must be in \(0, 1\) .*got -0.1$"),
        ({"val_fraction": 1}, r"prepare.val_fraction must be in \(0, 1\) .*got 1$"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            r"prepare.val_fraction \+ prepare.test_fraction must be < 1 \(the rest is train\), got 0.5 \+ 0.5$",
        ),
    ],
)
def test_val_fraction_that_leaves_no_val_or_no_train_is_a_params_error(fractions, message):
    with pytest.raises(ParamsError, match=message):
        config.parse({"prepare": fractions}, ["prepare"])
    ok = config.parse({"prepare": {"val_fraction": 0.1, "test_fraction": 0.85}}, ["prepare"])
    assert ok.prepare.val_fraction == 0.1
