"""One model's whole evaluation on the test split: response-token metrics, then generated answers."""

from __future__ import annotations

import hashlib

import pandas as pd

from finetune import chat_format
from finetune.evaluation import generation, scoring, text_metrics


def evaluate_model(
    model, tokenizer, test: pd.DataFrame, cfg, max_length: int, stop_ids: list[int] | None = None
) -> tuple[dict, list[dict]]:
    """All metrics of one model on the test split, and its generations for the sampled prompts (ended by
    `stop_ids`; default: chat_format.stop_token_ids of the tokenizer and the model's generation_config)."""
    metrics, outputs, _ = evaluate_rows(model, tokenizer, test, cfg, max_length, stop_ids)
    return metrics, outputs


def evaluate_rows(
    model,
    tokenizer,
    test: pd.DataFrame,
    cfg,
    max_length: int,
    stop_ids: list[int] | None = None,
    used: dict | None = None,
) -> tuple[dict, list[dict], dict]:
    """evaluate_model, and the per-row results the metrics are made of (for intervals.paired):
    {"scored": every test row's token sums, "answered": each sampled prompt's answer scores; "row": test row numbers,
    "key": row_key of each row, which pairs the rows of two runs (report --compare)}.

    `used`, when given, is filled with the generation settings the answers were made with, as captured at
    model.generate() (generation.flat_report keys: generation.*, generation.sampled.*)."""
    conversations = chat_format.conversations(test)
    keys = [row_key(c) for c in conversations]
    scored = scoring.response_rows(model, tokenizer, conversations, cfg.batch_size, max_length)
    metrics = scoring.summarize_stats(scoring.total_of(scored))
    picked = generation.sample_indices(len(conversations), cfg.num_samples, cfg.seed)
    chosen = [conversations[i] for i in picked]
    references = [c["completion"][0]["content"] for c in chosen]
    greedy_used, sampled_used = {}, {}
    greedy = generation.generate(
        model, tokenizer, chosen, cfg.batch_size, cfg.max_new_tokens, stop_ids=stop_ids, used=greedy_used
    )
    metrics.update(text_metrics.answer_metrics(greedy, references))
    answered = {"row": list(picked), "key": [keys[i] for i in picked], **text_metrics.answer_rows(greedy, references)}
    sampled = (
        generation.generate(
            model,
            tokenizer,
            chosen,
            cfg.batch_size,
            cfg.max_new_tokens,
            True,
            cfg.temperature,
            cfg.seed,
            stop_ids=stop_ids,
            used=sampled_used,
        )
        if cfg.do_sample
        else [None] * len(chosen)
    )
    if used is not None:
        used.update(generation.flat_report(greedy_used, sampled_used))
    outputs = [
        # prompt: the last turn before the answer (a conversation's history is longer; an Alpaca prompt is one turn)
        {
            "row": i,
            "prompt": c["prompt"][-1]["content"],
            "reference": ref,
            "greedy": g["text"],
            "stopped": g["stopped"],
            **({"sampled": s["text"]} if s else {}),
        }
        for i, c, ref, g, s in zip(picked, chosen, references, greedy, sampled)
    ]
    return (
        metrics,
        outputs,
        {"scored": {"row": list(range(len(conversations))), "key": keys, **scored}, "answered": answered},
    )


def row_key(conversation: dict) -> str:
    """A test row's identity across runs: sha256 (16 hex digits) of its prompt and reference answer, as the
    chat template sees them; two runs' rows are paired by it (a row number differs when the split does)."""
    text = conversation["prompt"][0]["content"] + "\0" + conversation["completion"][0]["content"]
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
