"""Evaluation shared by the base and tuned stages: streamed response-token stats, batched generation,
text metrics. Pure functions take tensors/strings, so they are tested without a model."""

from __future__ import annotations

import functools
import math
import random
import string

import pandas as pd
import torch

from stages import prompts

# ---------------------------------------------------------------- response-token statistics


def batch_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Sums over the response tokens of one batch (labels == -100 elsewhere), shifted for next-token.

    logits[:, t] predicts labels[:, t + 1]. Only the response positions are turned into fp32
    log-probabilities ([tokens, vocab], not [batch, length, vocab]). Returned as sums so batches
    add up; nothing of the logits outlives the batch.
    """
    labels = labels[:, 1:]
    mask = labels != -100
    picked = logits[:, :-1][mask].float()  # [response tokens, vocab]
    targets = labels[mask]
    log_probs = torch.log_softmax(picked, dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    # 0 * log 0 = 0: a token with logit -inf (masked vocabulary) must not turn the entropy into NaN
    entropy = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)
    correct = picked.argmax(-1) == targets
    return {
        "nll": nll.sum().item(),
        "entropy": entropy.sum().item(),
        "correct": int(correct.sum().item()),
        "tokens": int(mask.sum().item()),
    }


def summarize_stats(total: dict) -> dict:
    n = max(total["tokens"], 1)
    loss = total["nll"] / n
    return {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),  # capped: exp overflows for a random model's loss
        "mean_token_accuracy": total["correct"] / n,
        "entropy": total["entropy"] / n,
        "response_tokens": total["tokens"],
    }


def encode_example(tokenizer, conversation: dict, max_length: int) -> tuple[list[int], list[int]]:
    """input_ids and labels with the prompt masked (-100), as TRL's completion-only loss sees them."""
    prompt_ids = _ids(tokenizer.apply_chat_template(conversation["prompt"], tokenize=True, add_generation_prompt=True))
    full_ids = _ids(tokenizer.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=True))
    prefix = 0
    while prefix < min(len(prompt_ids), len(full_ids)) and prompt_ids[prefix] == full_ids[prefix]:
        prefix += 1
    labels = [-100] * prefix + full_ids[prefix:]
    return full_ids[:max_length], labels[:max_length]


def _ids(encoded):
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


@torch.inference_mode()
def response_metrics(model, tokenizer, conversations: list[dict], batch_size: int, max_length: int) -> dict:
    """Loss, perplexity, accuracy and entropy over response tokens, streamed batch by batch."""
    model.eval()
    examples = [encode_example(tokenizer, c, max_length) for c in conversations]
    # Similar lengths together: less padding, same sums.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total = {"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0}
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = pad_batch([examples[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id)
        scored = (batch["labels"][:, 1:] != -100).any(0).nonzero()
        if len(scored) == 0:  # every response was cut off by max_length
            continue
        # Logits only from the first position that predicts a response token: the prompt's are never
        # scored, and the output layer with its [batch, length, vocab] logits is a large share of the time
        # and memory (151k-token vocabulary for Qwen2). Rows are right-padded, so one cut fits all.
        first = int(scored[0])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       use_cache=False, logits_to_keep=batch["input_ids"].shape[1] - first).logits
        for key, value in batch_stats(logits, batch["labels"][:, first:].to(device)).items():
            total[key] += value
        del logits
    return summarize_stats(total)


# ---------------------------------------------------------------- generation


def sample_indices(n_rows: int, k: int, seed: int) -> list[int]:
    """A fixed, seeded subset of test rows, in row order."""
    return sorted(random.Random(seed).sample(range(n_rows), min(k, n_rows)))


@torch.inference_mode()
def generate(model, tokenizer, conversations: list[dict], batch_size: int, max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """Responses for the prompts of `conversations`: left-padded batches, KV cache, stop at <|im_end|>
    (or <|endoftext|>, which Qwen2's generation config also lists as an end)."""
    model.eval()
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in (prompts.END_OF_TURN, "<|endoftext|>")]
    device = next(model.parameters()).device
    texts = [tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True) for c in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    results = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            if do_sample:
                torch.manual_seed(seed + start)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=None,
                top_k=None,
                eos_token_id=end_ids,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                end = next((i for i, token in enumerate(row) if token in end_ids), None)
                stopped = end is not None
                tokens = row[:end] if stopped else row
                results.append({"text": tokenizer.decode(tokens, skip_special_tokens=True),
                                "tokens": len(tokens), "stopped": stopped})
    finally:
        tokenizer.padding_side = side
    return results


# ---------------------------------------------------------------- text metrics


def normalize(text: str) -> str:
    """For exact match: case, surrounding punctuation and runs of whitespace do not count."""
    text = " ".join(text.lower().split())
    return text.strip(string.punctuation + " ")


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


@functools.lru_cache(maxsize=1)
def _rouge_l():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l_f1(prediction: str, reference: str) -> float:
    return _rouge_l().score(reference, prediction)["rougeL"].fmeasure


def text_metrics(generations: list[dict], references: list[str]) -> dict:
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


# ---------------------------------------------------------------- one model, the whole evaluation


def evaluate_model(model, tokenizer, test: pd.DataFrame, cfg, max_length: int) -> tuple[dict, list[dict]]:
    """All metrics of one model on the test split, and its generations for the sampled prompts."""
    conversations = prompts.conversations(test)
    metrics = response_metrics(model, tokenizer, conversations, cfg.batch_size, max_length)
    picked = sample_indices(len(conversations), cfg.num_samples, cfg.seed)
    chosen = [conversations[i] for i in picked]
    references = [c["completion"][0]["content"] for c in chosen]
    greedy = generate(model, tokenizer, chosen, cfg.batch_size, cfg.max_new_tokens)
    metrics.update(text_metrics(greedy, references))
    sampled = (generate(model, tokenizer, chosen, cfg.batch_size, cfg.max_new_tokens, True, cfg.temperature, cfg.seed)
               if cfg.do_sample else [None] * len(chosen))
    outputs = [
        {"row": i, "prompt": c["prompt"][0]["content"], "reference": ref, "greedy": g["text"],
         "stopped": g["stopped"], **({"sampled": s["text"]} if s else {})}
        for i, c, ref, g, s in zip(picked, chosen, references, greedy, sampled)
    ]
    return metrics, outputs
