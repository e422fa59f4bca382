"""finetune.evaluation.comparison: base next to tuned as flat metric keys, answers side by side, and the same
generation settings for both."""

from __future__ import annotations

import pytest

from finetune import config, paths
from finetune.evaluation import comparison, generation

BASE = paths.BASE_RESULTS  # the file named in the errors


def test_compare_gives_flat_base_tuned_delta_keys():
    base = {"eval_loss": 2.0, "response_tokens": 10, "rougeL_f1": 0.25}
    tuned = {"eval_loss": 1.5, "response_tokens": 10, "rougeL_f1": 0.5, "chrf": 30.0}
    assert comparison.compare(base, tuned) == {
        "base.chrf": None,
        "tuned.chrf": 30.0,  # no delta where one side lacks the metric
        "base.eval_loss": 2.0,
        "tuned.eval_loss": 1.5,
        "delta.eval_loss": -0.5,
        "base.response_tokens": 10,
        "tuned.response_tokens": 10,
        "delta.response_tokens": 0,
        "base.rougeL_f1": 0.25,
        "tuned.rougeL_f1": 0.5,
        "delta.rougeL_f1": 0.25,
    }


def test_side_by_side_pairs_rows_and_refuses_other_rows():
    def outputs(rows, sampled=False):
        return [
            {
                "row": r,
                "prompt": f"p{r}",
                "reference": f"r{r}",
                "greedy": f"g{r}",
                "stopped": True,
                **({"sampled": f"s{r}"} if sampled else {}),
            }
            for r in rows
        ]

    base, tuned = outputs([3, 7]), outputs([3, 7])
    for row in tuned:
        row["greedy"] = "tuned " + row["greedy"]
    assert comparison.side_by_side(base, tuned, BASE) == [
        {"row": 3, "prompt": "p3", "reference": "r3", "base_output": "g3", "tuned_output": "tuned g3"},
        {"row": 7, "prompt": "p7", "reference": "r7", "base_output": "g7", "tuned_output": "tuned g7"},
    ]
    with_samples = comparison.side_by_side(outputs([3], True), outputs([3], True), BASE)
    assert with_samples[0]["base_sampled"] == with_samples[0]["tuned_sampled"] == "s3"
    with pytest.raises(ValueError, match=rf"^{BASE} was made for other test rows; .*evaluate_base"):
        comparison.side_by_side(outputs([3, 7]), outputs([3, 8]), BASE)
    with pytest.raises(ValueError):
        comparison.side_by_side(outputs([3, 7]), outputs([3]), BASE)


def test_same_generation_refuses_base_answers_made_otherwise(tiny_tokenizer):
    cfg = config.EvaluateParams(max_new_tokens=8)
    settings = generation.settings_report(tiny_tokenizer, cfg, [2, 0])
    assert comparison.same_generation(dict(settings), settings, BASE) == settings
    other = generation.settings_report(tiny_tokenizer, config.EvaluateParams(max_new_tokens=9), [2, 0])
    with pytest.raises(ValueError, match=rf"^{BASE} .*other settings \(generation.max_new_tokens\).*evaluate_base"):
        comparison.same_generation(other, settings, BASE)
    with pytest.raises(ValueError, match="evaluate_base"):  # a base.json from before settings were recorded
        comparison.same_generation({}, settings, BASE)
