"""Text metrics of generated answers against references: ROUGE-L, chrF, exact match, length, stopped."""

from __future__ import annotations

import functools
import string


def exact_match_form(text: str) -> str:
    """For exact match: case, surrounding punctuation and runs of whitespace do not count."""
    text = " ".join(text.lower().split())
    return text.strip(string.punctuation + " ")


def exact_match(prediction: str, reference: str) -> float:
    return float(exact_match_form(prediction) == exact_match_form(reference))


@functools.lru_cache(maxsize=1)
def _rouge_l():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l_f1(prediction: str, reference: str) -> float:
    return _rouge_l().score(reference, prediction)["rougeL"].fmeasure


def answer_rows(generations: list[dict], references: list[str]) -> dict[str, list]:
    """Per answer: ROUGE-L F1, exact match, stopped, generated tokens, and its chrF n-gram statistics
    (sacrebleu's [hyp, ref, match] counts per order, which corpus chrF sums: intervals.chrf_from_stats)."""
    from sacrebleu.metrics import CHRF

    predictions = [g["text"] for g in generations]
    stats = CHRF()._extract_corpus_statistics(predictions, [references]) if predictions else []
    return {
        "rougeL_f1": [rouge_l_f1(p, r) for p, r in zip(predictions, references)],
        "exact_match": [exact_match(p, r) for p, r in zip(predictions, references)],
        "stopped": [float(g["stopped"]) for g in generations],
        "generated_tokens": [g["tokens"] for g in generations],
        "chrf_stats": [[int(x) for x in s] for s in stats],
    }


def answer_metrics(generations: list[dict], references: list[str]) -> dict:
    """ROUGE-L F1 (mean), corpus chrF, exact match, mean length, share that stopped by itself."""
    from sacrebleu.metrics import CHRF

    if not generations:
        return {}
    predictions = [g["text"] for g in generations]
    rouge = [rouge_l_f1(p, r) for p, r in zip(predictions, references)]
    n = len(predictions)
    return {
        "rougeL_f1": sum(rouge) / n,
        "chrf": CHRF().corpus_score(predictions, [references]).score,
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
        "generated_tokens_mean": sum(g["tokens"] for g in generations) / n,
        "stopped_fraction": sum(g["stopped"] for g in generations) / n,
    }
