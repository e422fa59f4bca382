"""finetune.evaluation.suite: one model's whole evaluation, reproducible with sampling."""

from __future__ import annotations

import torch

from finetune import chat_format, config
from finetune.evaluation import generation, suite

from .common import raw_rows


def test_evaluate_model_with_sampling_is_reproducible(lively_model, tiny_tokenizer):
    test = raw_rows(8)
    cfg = config.EvaluateParams(batch_size=4, num_samples=3, max_new_tokens=6, do_sample=True, temperature=1.0, seed=3)
    metrics, outputs = suite.evaluate_model(lively_model, tiny_tokenizer, test, cfg, 512)
    torch.manual_seed(12345)
    torch.rand(100)  # the global generator moved on: sampling must not care
    again = suite.evaluate_model(lively_model, tiny_tokenizer, test, cfg, 512)
    assert again == (metrics, outputs)

    assert [o["row"] for o in outputs] == generation.sample_indices(8, 3, 3)
    filled = test.fillna("")
    for o in outputs:
        assert set(o) == {"row", "prompt", "reference", "greedy", "stopped", "sampled"}
        assert o["reference"] == filled.loc[o["row"], "output"]
        assert o["prompt"] == chat_format.user_text(filled.loc[o["row"], "instruction"], filled.loc[o["row"], "input"])
    assert set(metrics) == {
        "eval_loss",
        "perplexity",
        "mean_token_accuracy",
        "entropy",
        "response_tokens",
        "rougeL_f1",
        "chrf",
        "exact_match",
        "generated_tokens_mean",
        "stopped_fraction",
    }
    assert any(o["sampled"] != o["greedy"] for o in outputs)

    chosen = [chat_format.conversations(test)[o["row"]] for o in outputs]
    seeded = [generation.generate(lively_model, tiny_tokenizer, chosen, 4, 6, True, 1.0, seed) for seed in (3, 4)]
    assert [g["text"] for g in seeded[0]] == [o["sampled"] for o in outputs]
    assert seeded[0] != seeded[1]  # the seed is what makes the samples

    greedy_only = config.EvaluateParams(**{**cfg.__dict__, "do_sample": False})
    greedy_metrics, greedy_outputs = suite.evaluate_model(lively_model, tiny_tokenizer, test, greedy_only, 512)
    assert all("sampled" not in o for o in greedy_outputs)
    assert [o["greedy"] for o in greedy_outputs] == [o["greedy"] for o in outputs]
    assert greedy_metrics == metrics


def test_row_keys_follow_the_prompt_and_reference_not_the_row_number(lively_model, tiny_tokenizer):
    test = raw_rows(6)
    cfg = config.EvaluateParams(batch_size=4, num_samples=3, max_new_tokens=2, seed=3)
    _, _, rows = suite.evaluate_rows(lively_model, tiny_tokenizer, test, cfg, 512)
    _, _, reversed_rows = suite.evaluate_rows(
        lively_model, tiny_tokenizer, test.iloc[::-1].reset_index(drop=True), cfg, 512
    )
    keys = rows["scored"]["key"]
    assert len(set(keys)) == 6 and reversed_rows["scored"]["key"] == keys[::-1]  # same rows, same keys
    assert rows["answered"]["key"] == [keys[i] for i in rows["answered"]["row"]]
    edited = test.copy()
    edited.loc[0, "output"] = str(edited.loc[0, "output"]) + " (edited)"
    _, _, other = suite.evaluate_rows(lively_model, tiny_tokenizer, edited, cfg, 512)
    assert other["scored"]["key"][0] != keys[0] and other["scored"]["key"][1:] == keys[1:]  # control: another answer
