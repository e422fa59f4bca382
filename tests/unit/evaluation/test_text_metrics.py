"""finetune.evaluation.text_metrics: exact match, ROUGE-L and chrF of answers, on hand-computed examples."""

from __future__ import annotations

import pytest

from finetune.evaluation import text_metrics


def test_exact_match_normalises_case_whitespace_and_surrounding_punctuation():
    assert text_metrics.exact_match_form("  The  Answer\tis\n42. ") == "the answer is 42"
    assert text_metrics.exact_match("The answer is 42.", "the answer   is 42") == 1.0
    assert text_metrics.exact_match('"Yes!"', "yes") == 1.0
    assert text_metrics.exact_match("9.6 years", "9.6 YEARS...") == 1.0
    assert text_metrics.exact_match("a, b", "a b") == 0.0  # punctuation inside counts
    assert text_metrics.exact_match("42", "42.0") == 0.0
    assert text_metrics.exact_match("", "") == 1.0


def test_rouge_l_f1_on_known_strings():
    # LCS "the cat on the mat": 5 of 6 tokens on each side -> P = R = F = 5/6
    assert text_metrics.rouge_l_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "the cat" = 2: P = 2/2, R = 2/6 -> F = 2PR / (P + R) = 1/2; case and punctuation ignored
    assert text_metrics.rouge_l_f1("The cat!", "the cat sat on the mat") == pytest.approx(0.5)
    # order matters: LCS of "a b c d" and "d c b a" is 1 -> F = 1/4
    assert text_metrics.rouge_l_f1("a b c d", "d c b a") == pytest.approx(0.25)
    assert text_metrics.rouge_l_f1("x y", "p q") == 0.0
    assert text_metrics.rouge_l_f1("Same words here", "same words here") == 1.0


def test_text_metrics_on_hand_computed_generations():
    generations = [
        {"text": "The cat sat on the mat", "tokens": 6, "stopped": True},
        {"text": "Yes.", "tokens": 2, "stopped": False},
        {"text": "a b c d", "tokens": 4, "stopped": True},
        {"text": "x y", "tokens": 8, "stopped": True},
    ]
    references = ["the cat is on the mat", "yes", "d c b a", "p q"]
    metrics = text_metrics.answer_metrics(generations, references)
    assert metrics["rougeL_f1"] == pytest.approx((5 / 6 + 1.0 + 0.25 + 0.0) / 4)
    assert metrics["exact_match"] == pytest.approx(1 / 4)
    assert metrics["generated_tokens_mean"] == pytest.approx(5.0)
    assert metrics["stopped_fraction"] == pytest.approx(3 / 4)
    assert 0 < metrics["chrf"] < 100

    same = [{"text": r, "tokens": 1, "stopped": True} for r in references]
    assert text_metrics.answer_metrics(same, references)["chrf"] == pytest.approx(100.0)
    assert text_metrics.answer_metrics(same, references)["rougeL_f1"] == pytest.approx(1.0)
    assert text_metrics.answer_metrics([], []) == {}
