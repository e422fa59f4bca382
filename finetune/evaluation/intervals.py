"""Paired bootstrap 95% intervals of a difference between two models scored on the same test rows.

Each resample draws n of the n test rows with replacement (the same draw for both models: paired) and
recomputes each metric from the drawn rows as the headline computes it from all of them:
- per-token metrics are ratios of sums (eval_loss = sum nll / sum tokens; accuracy, entropy likewise),
  so the rows' sums are resampled, not a mean of per-row ratios; perplexity is exp(eval_loss);
- chrF is a corpus metric: the rows' character n-gram statistics are summed and the score computed
  from the sums, as sacrebleu's corpus_score does (chrf_from_stats);
- ROUGE-L, exact match, stopped and generated tokens are means over the answered rows.
Resamples are drawn as multinomial counts [samples, rows], so every statistic is one matrix product.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

LEVEL = 0.95
TOKEN_SUMS = ("nll", "entropy", "correct", "tokens")  # per-row sums, from scoring.response_rows
RATIOS = {"eval_loss": "nll", "mean_token_accuracy": "correct", "entropy": "entropy"}  # / tokens
ANSWER_MEANS = ("rougeL_f1", "exact_match", "stopped", "generated_tokens")  # per answered row
MEAN_NAMES = {"stopped": "stopped_fraction", "generated_tokens": "generated_tokens_mean"}
CHRF_ORDER, CHRF_BETA = 6, 2  # sacrebleu CHRF() defaults: chrF2, character 6-grams, no word n-grams


def resample_counts(n_rows: int, samples: int, seed: int) -> np.ndarray:
    """[samples, n_rows] times each row is drawn in each resample (each row sums to n_rows)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=samples).astype(np.float64)


def chrf_from_stats(stats: np.ndarray) -> np.ndarray:
    """chrF (0-100) from summed [..., 3 * order] (hyp, ref, match) n-gram counts, as sacrebleu's CHRF() does."""
    stats = np.asarray(stats, dtype=np.float64)
    hyp, ref, match = stats[..., 0::3], stats[..., 1::3], stats[..., 2::3]
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(hyp > 0, match / np.where(hyp > 0, hyp, 1), 0.0)
        rec = np.where(ref > 0, match / np.where(ref > 0, ref, 1), 0.0)
    effective = (hyp > 0) & (ref > 0)
    k = effective.sum(-1)
    avg_prec = np.where(k > 0, (prec * effective).sum(-1) / np.maximum(k, 1), 0.0)
    avg_rec = np.where(k > 0, (rec * effective).sum(-1) / np.maximum(k, 1), 0.0)
    factor = CHRF_BETA**2
    denom = factor * avg_prec + avg_rec
    return np.where(denom > 0, 100 * (1 + factor) * avg_prec * avg_rec / np.where(denom > 0, denom, 1), 0.0)


def token_metrics(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """eval_loss, perplexity, mean_token_accuracy, entropy from (resampled) sums of the rows' token statistics."""
    tokens = np.maximum(sums["tokens"], 1)
    out = {name: sums[column] / tokens for name, column in RATIOS.items()}
    out["perplexity"] = np.exp(np.minimum(out["eval_loss"], 50.0))  # capped as scoring.summarize_stats does
    return out


def answer_metrics(sums: dict[str, np.ndarray], n_rows: int) -> dict[str, np.ndarray]:
    out = {MEAN_NAMES.get(c, c): sums[c] / n_rows for c in ANSWER_MEANS if c in sums}
    if "chrf_stats" in sums:
        out["chrf"] = chrf_from_stats(sums["chrf_stats"])
    return out


def _column(rows: dict, name: str) -> np.ndarray:
    values = rows[name]
    return (
        np.asarray([np.asarray(v, dtype=np.float64) for v in values])
        if name == "chrf_stats"
        else np.asarray(values, dtype=np.float64)
    )


def _resampled(rows: dict, columns, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each column's sum over every resample (counts @ column), and over all rows (the point estimate)."""
    return {c: counts @ _column(rows, c) for c in columns if c in rows}


def paired(a: dict, b: dict, samples: int, seed: int, level: float = LEVEL) -> dict[str, tuple[float, float, float]]:
    """{metric: (b - a on all rows, low, high)}: the paired bootstrap interval of b minus a.

    `a` and `b` are per-row columns ({"nll": [...], "tokens": [...], ...} for scored rows; {"rougeL_f1": [...],
    "chrf_stats": [[...]], ...} for answered rows) over the same rows in the same order."""
    columns = [c for c in (*TOKEN_SUMS, *ANSWER_MEANS, "chrf_stats") if c in a and c in b]
    if not columns:
        return {}
    n = len(a[columns[0]])
    if any(len(side[c]) != n for side in (a, b) for c in columns):
        raise ValueError("paired rows differ in length: the two models were not scored on the same rows")
    if n == 0:
        return {}
    counts = resample_counts(n, samples, seed)
    full = np.ones((1, n))
    metrics = token_metrics if "tokens" in columns else (lambda sums: answer_metrics(sums, n))
    point_a, point_b = metrics(_resampled(a, columns, full)), metrics(_resampled(b, columns, full))
    boot_a, boot_b = metrics(_resampled(a, columns, counts)), metrics(_resampled(b, columns, counts))
    tail = (1 - level) / 2 * 100
    out = {}
    for name in point_b:
        diff = boot_b[name] - boot_a[name]
        low, high = np.percentile(diff, [tail, 100 - tail])
        out[name] = (float(point_b[name][0] - point_a[name][0]), float(low), float(high))
    return out


def interval_keys(prefix: str, found: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    """Flat scalar keys for `dvc metrics diff`: {prefix.eval_loss_low: ..., prefix.eval_loss_high: ...}."""
    out = {}
    for name, (_, low, high) in sorted(found.items()):
        out[f"{prefix}.{name}_low"], out[f"{prefix}.{name}_high"] = low, high
    return out


def contains_zero(low: float, high: float) -> bool:
    return low <= 0 <= high or (math.isclose(low, 0, abs_tol=1e-12) and math.isclose(high, 0, abs_tol=1e-12))


def delta_intervals(a_rows: dict, b_rows: dict, prefix: str, samples: int, seed: int) -> dict[str, float]:
    """{prefix.METRIC_low, prefix.METRIC_high} of b minus a for every metric, from evaluate's per-row results
    ({"scored": ..., "answered": ...}); the answered rows are resampled apart from the scored ones."""
    out = {}
    for part in ("scored", "answered"):
        if part in a_rows and part in b_rows:
            out |= interval_keys(prefix, paired(a_rows[part], b_rows[part], samples, seed))
    return out


# ---------------------------------------------------------------- two runs (report --compare)

NO_DIFFERENCE = "no detectable difference"


def pair_by_key(a: dict, b: dict) -> tuple[dict, dict, dict[str, int]]:
    """Two runs' per-row columns restricted to the rows both have, matched by "key" (evaluate's row_key: the
    prompt and its reference) in a's order; and the rows left out, by reason: only_in_a, only_in_b, and
    repeated_key (a key on more than one row of a run: which of them pairs with which is unknown)."""
    for side, name in ((a, "a"), (b, "b")):
        if "key" not in side:
            raise ValueError(
                f"run {name}'s per-row results have no row keys (made by an older evaluate); "
                "rerun `dvc repro evaluate` there"
            )
    seen_a, seen_b = Counter(a["key"]), Counter(b["key"])
    where_b = {key: i for i, key in enumerate(b["key"]) if seen_b[key] == 1}
    pairs = [(i, where_b[key]) for i, key in enumerate(a["key"]) if seen_a[key] == 1 and key in where_b]
    dropped = {
        "only_in_a": sum(n for key, n in seen_a.items() if key not in seen_b),
        "only_in_b": sum(n for key, n in seen_b.items() if key not in seen_a),
        "repeated_key": sum(
            n
            for key, n in (seen_a + seen_b).items()
            if key in seen_a and key in seen_b and (seen_a[key] > 1 or seen_b[key] > 1)
        ),
    }
    columns = [c for c in a if c in b and c != "key"]
    a_paired = {c: [a[c][i] for i, _ in pairs] for c in columns}
    b_paired = {c: [b[c][j] for _, j in pairs] for c in columns}
    return a_paired, b_paired, dropped


def compare_runs(a_rows: dict, b_rows: dict, samples: int, seed: int) -> tuple[dict, dict]:
    """({metric: (b - a, low, high)}, {part: rows dropped by reason}): the paired bootstrap interval of run b's
    tuned metrics minus run a's, over the test rows both runs scored ("scored") and answered ("answered")."""
    found, dropped = {}, {}
    for part in ("scored", "answered"):
        if part in a_rows and part in b_rows:
            pa, pb, dropped[part] = pair_by_key(a_rows[part], b_rows[part])
            found |= paired(pa, pb, samples, seed)
    return found, dropped


def verdict(low: float, high: float, a: str = "a", b: str = "b") -> str:
    """What an interval of b - a says: "no detectable difference" when it contains 0, else the direction."""
    if contains_zero(low, high):
        return NO_DIFFERENCE
    return f"{b} higher than {a}" if low > 0 else f"{b} lower than {a}"
