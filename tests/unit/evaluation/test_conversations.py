"""Evaluation on conversations: loss, accuracy and entropy over every assistant turn's tokens; generation answers
the last assistant turn from the history before it, and is scored against that turn."""

from __future__ import annotations

import json

import pandas as pd
import torch

from finetune import config
from finetune.evaluation import scoring, suite

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is APR?"},
    {"role": "assistant", "content": "A yearly rate."},
    {"role": "user", "content": "And APY?"},
    {"role": "assistant", "content": "Compounded yearly."},
]


def frame(*rows):
    return pd.DataFrame({"messages": [json.dumps(r) for r in rows]}, dtype="string")


def manual_sums(model, tokenizer, messages, scored_turns):
    """NLL summed over the tokens of the assistant turns `scored_turns` (their text, <|im_end|>, newline),
    computed on the full logits, apart from scoring's masking."""
    ids, labelled = [], []
    for k, t in enumerate(messages):
        head = tokenizer(f"<|im_start|>{t['role']}\n", add_special_tokens=False)["input_ids"]
        body = tokenizer(f"{t['content']}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids += head + body
        labelled += [False] * len(head) + [k in scored_turns] * len(body)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    log_probs = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    keep = torch.tensor(labelled[1:])
    return -log_probs[keep].sum().item(), int(keep.sum())


def test_scores_cover_every_assistant_turn(lively_model, tiny_tokenizer):
    metrics = scoring.response_metrics(lively_model, tiny_tokenizer, [{"messages": CHAT}], 2, 512)
    nll, tokens = manual_sums(lively_model, tiny_tokenizer, CHAT, {2, 4})
    assert metrics["response_tokens"] == tokens
    assert abs(metrics["eval_loss"] - nll / tokens) < 1e-4
    # control: the last turn alone (what a prompt-completion reading of the row would score) is fewer tokens
    _, last_only = manual_sums(lively_model, tiny_tokenizer, CHAT, {4})
    assert last_only < tokens


def test_generation_answers_the_last_turn_from_the_history(lively_model, tiny_tokenizer):
    cfg = config.EvaluateParams(batch_size=2, num_samples=2, max_new_tokens=4, seed=0)
    trailing_user = [*CHAT, {"role": "user", "content": "Bye"}]  # nothing to answer after the last assistant turn
    metrics, outputs = suite.evaluate_model(lively_model, tiny_tokenizer, frame(CHAT, trailing_user), cfg, 512)
    assert [o["reference"] for o in outputs] == ["Compounded yearly."] * 2
    assert [o["prompt"] for o in outputs] == ["And APY?"] * 2
    assert outputs[0]["greedy"] == outputs[1]["greedy"]  # the same history, so the same answer
    assert metrics["response_tokens"] > 0 and "rougeL_f1" in metrics
