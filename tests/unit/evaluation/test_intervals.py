"""The paired bootstrap against known cases: identical runs, a fixed shift, noise, a fixed seed, corpus chrF."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.evaluation import intervals, text_metrics


def scored_rows(n: int = 200, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 60, n)
    return {
        "nll": (rng.gamma(2.0, 1.0, n) * tokens).tolist(),
        "entropy": (rng.random(n) * tokens).tolist(),
        "correct": rng.binomial(tokens, 0.3).tolist(),
        "tokens": tokens.tolist(),
    }


def shifted(rows: dict, per_token: float, noise: float = 0.0, seed: int = 1) -> dict:
    """Every row's loss moved by `per_token` per token, plus zero-mean noise per row of scale `noise` per token."""
    rng = np.random.default_rng(seed)
    tokens = np.asarray(rows["tokens"], dtype=float)
    jitter = rng.normal(0, noise, len(tokens)) * tokens
    jitter -= jitter.sum() * tokens / tokens.sum()  # the noise adds nothing to the total: the shift stays exact
    return {**rows, "nll": (np.asarray(rows["nll"]) + per_token * tokens + jitter).tolist()}


def test_identical_runs_give_zero_zero():
    rows = scored_rows()
    found = intervals.paired(rows, rows, 1000, 0)
    assert set(found) == {"eval_loss", "perplexity", "mean_token_accuracy", "entropy"}
    assert all(value == (0.0, 0.0, 0.0) for value in found.values()), found
    different = intervals.paired(rows, shifted(rows, 0.0, noise=0.3), 1000, 0)["eval_loss"]  # control
    assert different[2] - different[1] > 0.01


def test_a_fixed_shift_gives_an_interval_around_it():
    rows = scored_rows()
    exact = intervals.paired(rows, shifted(rows, -0.25), 1000, 0)["eval_loss"]
    assert exact == pytest.approx((-0.25, -0.25, -0.25))  # every resample sees the same shift
    point, low, high = intervals.paired(rows, shifted(rows, -0.25, noise=0.2), 1000, 0)["eval_loss"]
    assert point == pytest.approx(-0.25)
    assert low < -0.25 < high and high < 0  # around the shift, and a real difference (0 excluded)


def test_the_interval_widens_with_noise():
    rows = scored_rows()
    widths = [
        np.subtract(*intervals.paired(rows, shifted(rows, 0.1, noise), 1000, 0)["eval_loss"][2:0:-1])
        for noise in (0.05, 0.2, 0.8)
    ]
    assert widths[0] < widths[1] < widths[2]


def test_reproducible_with_a_fixed_seed():
    rows, other = scored_rows(), shifted(scored_rows(), 0.1, noise=0.3)
    assert intervals.paired(rows, other, 500, 7) == intervals.paired(rows, other, 500, 7)
    assert intervals.paired(rows, other, 500, 7) != intervals.paired(rows, other, 500, 8)  # control


def test_ratio_metrics_resample_rows_not_ratios():
    """eval_loss is sum nll / sum tokens over the drawn rows: the point estimate is the headline's."""
    rows, other = scored_rows(), shifted(scored_rows(), 0.1, noise=0.3)
    point = intervals.paired(rows, other, 100, 0)["eval_loss"][0]
    assert point == pytest.approx(sum(other["nll"]) / sum(other["tokens"]) - sum(rows["nll"]) / sum(rows["tokens"]))
    mean_of_ratios = np.mean(np.divide(other["nll"], other["tokens"])) - np.mean(np.divide(rows["nll"], rows["tokens"]))
    assert point != pytest.approx(mean_of_ratios)  # control: the two estimators differ on these rows


def test_chrf_from_summed_stats_is_sacrebleus_corpus_chrf():
    from sacrebleu.metrics import CHRF

    refs = ["A bond is a loan to a company.", "Stocks are shares of ownership.", "Inflation erodes savings.", "Yes."]
    hyps = ["A bond is a loan.", "Shares are stocks.", "", "No, not at all."]
    answers = [{"text": h, "stopped": True, "tokens": 3} for h in hyps]
    rows = text_metrics.answer_rows(answers, refs)
    assert intervals.chrf_from_stats(np.sum(rows["chrf_stats"], 0)) == pytest.approx(
        CHRF().corpus_score(hyps, [refs]).score
    )
    assert intervals.chrf_from_stats(np.sum(rows["chrf_stats"][:2], 0)) == pytest.approx(
        CHRF().corpus_score(hyps[:2], [refs[:2]]).score
    )
    found = intervals.paired(text_metrics.answer_rows(answers[::-1], refs), rows, 200, 0)
    assert {"chrf", "rougeL_f1", "exact_match", "stopped_fraction", "generated_tokens_mean"} == set(found)


def test_rows_of_other_lengths_are_refused():
    rows = scored_rows(10)
    with pytest.raises(ValueError, match="not scored on the same rows"):
        intervals.paired(rows, scored_rows(11), 100, 0)


# ---------------------------------------------------------------- two runs paired by row key (report --compare)


def keyed(rows: dict, keys: list[str]) -> dict:
    return {"key": keys, **rows}


def take(rows: dict, order: list[int]) -> dict:
    return {c: [values[i] for i in order] for c, values in rows.items()}


def test_two_runs_pair_rows_by_key_and_count_the_unpaired():
    rows = keyed(scored_rows(40), [f"k{i}" for i in range(40)])
    moved = shifted({c: v for c, v in rows.items() if c != "key"}, -0.25)
    # b: another order, two of a's rows missing, three rows a does not have (other prompts)
    b = take(keyed(moved, rows["key"]), list(range(39, 1, -1)))
    extra = keyed(scored_rows(3, seed=9), ["x0", "x1", "x2"])
    b = {c: b[c] + extra[c] for c in b}
    pa, pb, dropped = intervals.pair_by_key(rows, b)
    assert dropped == {"only_in_a": 2, "only_in_b": 3, "repeated_key": 0}
    assert "key" not in pa and len(pa["nll"]) == len(pb["nll"]) == 38
    found, parts = intervals.compare_runs({"scored": rows}, {"scored": b}, 500, 0)
    assert parts == {"scored": dropped}
    assert found["eval_loss"] == pytest.approx((-0.25, -0.25, -0.25))  # every paired row moved by exactly -0.25
    # Negative control: the same rows paired by position (as if keys were ignored) give no such interval.
    by_position = intervals.paired(
        {c: v[:38] for c, v in rows.items() if c != "key"}, {c: v[:38] for c, v in b.items() if c != "key"}, 500, 0
    )["eval_loss"]
    assert by_position[2] - by_position[1] > 0.05


def test_a_repeated_key_is_dropped_and_counted_and_rows_without_keys_are_refused():
    rows = keyed(scored_rows(5), ["a", "b", "b", "c", "d"])
    other = keyed(scored_rows(4, seed=3), ["d", "c", "b", "a"])
    pa, pb, dropped = intervals.pair_by_key(rows, other)
    assert dropped == {"only_in_a": 0, "only_in_b": 0, "repeated_key": 3}  # both of a's "b" rows and b's one
    assert pa["nll"] == [rows["nll"][0], rows["nll"][3], rows["nll"][4]]
    assert pb["nll"] == [other["nll"][3], other["nll"][1], other["nll"][0]]
    with pytest.raises(ValueError, match="run b's per-row results have no row keys"):
        intervals.pair_by_key(rows, scored_rows(4))


def test_the_verdict_says_no_detectable_difference_when_the_interval_contains_zero():
    rows = keyed(scored_rows(), [str(i) for i in range(200)])
    found, _ = intervals.compare_runs({"scored": rows}, {"scored": rows}, 500, 0)
    assert (
        intervals.verdict(*found["eval_loss"][1:], "main", "exp")
        == intervals.NO_DIFFERENCE
        == "no detectable difference"
    )
    noisy = keyed(shifted(scored_rows(), 0.0, noise=0.3), rows["key"])
    _, low, high = intervals.compare_runs({"scored": rows}, {"scored": noisy}, 500, 0)[0]["eval_loss"]
    assert low < 0 < high and intervals.verdict(low, high) == "no detectable difference"
    # Control: a real shift is called, with its direction.
    lower = keyed(shifted(scored_rows(), -0.25, noise=0.2), rows["key"])
    _, low, high = intervals.compare_runs({"scored": rows}, {"scored": lower}, 500, 0)[0]["eval_loss"]
    assert intervals.verdict(low, high, "main", "exp") == "exp lower than main"
    assert intervals.verdict(0.1, 0.2, "main", "exp") == "exp higher than main"
