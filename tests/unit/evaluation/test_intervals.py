"""The paired bootstrap against known cases: identical runs, a fixed shift, noise, a fixed seed, corpus chrF."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.evaluation import intervals, text_metrics


def scored_rows(n: int = 200, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 60, n)
    return {"nll": (rng.gamma(2.0, 1.0, n) * tokens).tolist(), "entropy": (rng.random(n) * tokens).tolist(),
            "correct": rng.binomial(tokens, 0.3).tolist(), "tokens": tokens.tolist()}


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
    widths = [np.subtract(*intervals.paired(rows, shifted(rows, 0.1, noise), 1000, 0)["eval_loss"][2:0:-1])
              for noise in (0.05, 0.2, 0.8)]
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
    assert intervals.chrf_from_stats(np.sum(rows["chrf_stats"], 0)) == pytest.approx(CHRF().corpus_score(hyps, [refs]).score)
    assert intervals.chrf_from_stats(np.sum(rows["chrf_stats"][:2], 0)) == pytest.approx(
        CHRF().corpus_score(hyps[:2], [refs[:2]]).score)
    found = intervals.paired(text_metrics.answer_rows(answers[::-1], refs), rows, 200, 0)
    assert {"chrf", "rougeL_f1", "exact_match", "stopped_fraction", "generated_tokens_mean"} == set(found)


def test_rows_of_other_lengths_are_refused():
    rows = scored_rows(10)
    with pytest.raises(ValueError, match="not scored on the same rows"):
        intervals.paired(rows, scored_rows(11), 100, 0)
