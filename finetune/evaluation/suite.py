"""One model's whole evaluation on the test split: response-token metrics, then generated answers."""

from __future__ import annotations

import pandas as pd

from finetune import chat_format
from finetune.evaluation import generation, scoring, text_metrics


def evaluate_model(model, tokenizer, test: pd.DataFrame, cfg, max_length: int,
                   stop_ids: list[int] | None = None) -> tuple[dict, list[dict]]:
    """All metrics of one model on the test split, and its generations for the sampled prompts (ended by
    `stop_ids`; default: chat_format.stop_token_ids of the tokenizer and the model's generation_config)."""
    conversations = chat_format.conversations(test)
    metrics = scoring.response_metrics(model, tokenizer, conversations, cfg.batch_size, max_length)
    picked = generation.sample_indices(len(conversations), cfg.num_samples, cfg.seed)
    chosen = [conversations[i] for i in picked]
    references = [c["completion"][0]["content"] for c in chosen]
    greedy = generation.generate(model, tokenizer, chosen, cfg.batch_size, cfg.max_new_tokens, stop_ids=stop_ids)
    metrics.update(text_metrics.answer_metrics(greedy, references))
    sampled = (generation.generate(model, tokenizer, chosen, cfg.batch_size, cfg.max_new_tokens, True, cfg.temperature, cfg.seed,
                                   stop_ids=stop_ids)
               if cfg.do_sample else [None] * len(chosen))
    outputs = [
        {"row": i, "prompt": c["prompt"][0]["content"], "reference": ref, "greedy": g["text"],
         "stopped": g["stopped"], **({"sampled": s["text"]} if s else {})}
        for i, c, ref, g, s in zip(picked, chosen, references, greedy, sampled)
    ]
    return metrics, outputs
