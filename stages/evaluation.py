"""Evaluation shared by the base and tuned stages: streamed response-token stats, batched generation,
text metrics. Pure functions take tensors/strings, so they are tested without a model."""

from __future__ import annotations

import functools
import math
import random
import string

import pandas as pd
import torch
from tqdm import tqdm

from stages import prompts

# ---------------------------------------------------------------- response-token statistics

# Memory for one chunk of response tokens' logits and their fp32 temporaries: the output layer is applied
# a chunk at a time, so scoring never holds [batch, length, vocab] logits (2.4 GB for Qwen2's 151,936-token
# vocabulary at batch 16), whatever the batch size and vocabulary.
CHUNK_BYTES = 256 * 2**20
_TENSORS_PER_CHUNK = 4  # the output layer's logits, their fp32 copy, log-probabilities, probabilities


def chunk_tokens(vocab_size: int) -> int:
    """Response tokens per chunk so that a chunk's [tokens, vocab] tensors fit in CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (vocab_size * 4 * _TENSORS_PER_CHUNK))


def logit_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Sums of NLL, entropy and argmax hits for rows of logits [tokens, vocab] against targets [tokens].

    In fp32 whatever the model's dtype. A logit of -inf (masked vocabulary) has probability 0 and adds
    0 to the entropy: p * log p is 0 * -inf = NaN there, which nansum skips.
    """
    x = logits.float()
    log_probs = torch.log_softmax(x, dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -log_probs.mul_(log_probs.exp()).nansum(-1)  # in place: one [tokens, vocab] temporary fewer
    return {
        "nll": nll.sum().item(),
        "entropy": entropy.sum().item(),
        "correct": int((x.argmax(-1) == targets).sum().item()),
        "tokens": int(targets.numel()),
    }


def chunked_stats(hidden: torch.Tensor, targets: torch.Tensor, head, chunk: int) -> dict:
    """logit_stats of head(hidden) [tokens, vocab], `chunk` tokens at a time: only one chunk's logits live."""
    total = {"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0}
    for start in range(0, len(targets), chunk):
        stats = logit_stats(head(hidden[start : start + chunk]), targets[start : start + chunk])
        for key, value in stats.items():
            total[key] += value
    return total


def batch_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Sums over the response tokens of one batch (labels == -100 elsewhere), shifted for next-token.

    logits[:, t] predicts labels[:, t + 1]. The unchunked reference (in tests) for scoring from hidden states.
    """
    labels = labels[:, 1:]
    mask = labels != -100
    picked = logits[:, :-1][mask]  # [response tokens, vocab]
    return chunked_stats(picked, labels[mask], lambda rows: rows, max(len(picked), 1))


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


def backbone_and_head(model):
    """The decoder (last hidden states) and the output layer of a causal LM: a plain transformers model,
    a bitsandbytes-quantized one, or a peft model wrapping either (peft forwards both calls to the model
    whose layers it has wrapped, so the adapter applies). logits = head(hidden) holds for Qwen2/Llama-style
    models, which neither scale nor soft-cap their logits.
    """
    return model.get_decoder(), model.get_output_embeddings()


@torch.inference_mode()
def response_metrics(model, tokenizer, conversations: list[dict], batch_size: int, max_length: int) -> dict:
    """Loss, perplexity, accuracy and entropy over response tokens, streamed batch by batch.

    The backbone runs on the whole batch; the output layer only on the response positions, a chunk of
    tokens at a time (chunk_tokens), so memory beyond the model and its activations stays bounded.
    """
    model.eval()
    backbone, head = backbone_and_head(model)
    chunk = chunk_tokens(head.out_features)
    examples = [encode_example(tokenizer, c, max_length) for c in conversations]
    # Similar lengths together: less padding, same sums.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total = {"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0}
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=None):
        batch = pad_batch([examples[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id)
        labels = batch["labels"][:, 1:].to(device)
        mask = labels != -100
        if not mask.any():  # every response was cut off by max_length
            continue
        hidden = backbone(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                          use_cache=False).last_hidden_state
        # hidden[:, t] predicts labels[:, t + 1]; [response tokens, hidden], the prompt's positions dropped.
        picked = hidden[:, :-1][mask]
        del hidden
        for key, value in chunked_stats(picked, labels[mask], head, chunk).items():
            total[key] += value
    return summarize_stats(total)


# ---------------------------------------------------------------- generation


def sample_indices(n_rows: int, k: int, seed: int) -> list[int]:
    """A fixed, seeded subset of test rows, in row order."""
    return sorted(random.Random(seed).sample(range(n_rows), min(k, n_rows)))


def end_token_ids(tokenizer) -> list[int]:
    """<|im_end|> ends a turn; <|endoftext|>, which Qwen2's generation config also lists, ends too."""
    return [tokenizer.convert_tokens_to_ids(t) for t in (prompts.END_OF_TURN, "<|endoftext|>")]


def generation_settings(max_new_tokens: int, eos_token_id: list[int] | None = None, pad_token_id: int | None = None,
                        do_sample: bool = False, temperature: float = 1.0) -> dict:
    """Every decoding knob of transformers' generate(), from the arguments alone (JSON-ready).

    A fresh GenerationConfig is not enough: generate() fills each field left None from the model's own
    generation_config (Qwen2-0.5B-Instruct's: repetition_penalty 1.1, top_p 0.8, top_k 20, temperature
    0.7, do_sample true). So every knob that changes the tokens is set here, to its neutral value unless
    an argument says otherwise. Greedy: argmax at every step. Sampling: temperature only, no top-k/top-p.
    eos_token_id None keeps the model's end tokens.
    """
    settings = {
        "max_new_tokens": max_new_tokens, "min_new_tokens": 0, "do_sample": do_sample, "num_beams": 1,
        "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "renormalize_logits": False,
        "eos_token_id": eos_token_id, "pad_token_id": pad_token_id, "use_cache": True,
    }
    if do_sample:
        settings.update(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
                        epsilon_cutoff=0.0, eta_cutoff=0.0)
    else:  # unused by greedy decoding; set so the model's values are not copied in (and warned about)
        settings.update(temperature=1.0, top_p=1.0, top_k=50, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    return settings


def generation_config(**settings):
    """A fresh transformers GenerationConfig from generation_settings(**settings): evaluation, merge and chat."""
    from transformers import GenerationConfig

    return GenerationConfig(**generation_settings(**settings))


@torch.inference_mode()
def generate(model, tokenizer, conversations: list[dict], batch_size: int, max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """Responses for the prompts of `conversations`: left-padded batches, KV cache, stop at an end token."""
    model.eval()
    end_ids = end_token_ids(tokenizer)
    config = generation_config(max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                               pad_token_id=tokenizer.pad_token_id, do_sample=do_sample, temperature=temperature)
    device = next(model.parameters()).device
    results = []
    for start in tqdm(range(0, len(conversations), batch_size), desc="sampling" if do_sample else "generating",
                      unit="batch", disable=None):
        batch = prompt_batch(tokenizer, conversations[start : start + batch_size], device)
        if do_sample:
            torch.manual_seed(seed + start)
        output = model.generate(**batch, generation_config=config)
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            end = next((i for i, token in enumerate(row) if token in end_ids), None)
            stopped = end is not None
            tokens = row[:end] if stopped else row
            results.append({"text": tokenizer.decode(tokens, skip_special_tokens=True),
                            "tokens": len(tokens), "stopped": stopped})
    return results


def prompt_batch(tokenizer, conversations: list[dict], device):
    """The conversations' prompts (chat template, generation prompt) as one batch, left-padded: generation
    continues from the last position of every row."""
    texts = [tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True) for c in conversations]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)


def settings_report(tokenizer, cfg) -> dict:
    """How evaluate_model's answers were produced, every knob, as flat generation.* keys
    (generation.sampled.* too when evaluate.do_sample)."""
    ends, pad = end_token_ids(tokenizer), tokenizer.pad_token_id
    report = {f"generation.{k}": v for k, v in generation_settings(cfg.max_new_tokens, ends, pad).items()}
    if cfg.do_sample:
        sampled = generation_settings(cfg.max_new_tokens, ends, pad, do_sample=True, temperature=cfg.temperature)
        report.update({f"generation.sampled.{k}": v for k, v in sampled.items()}, **{"generation.sampled.seed": cfg.seed})
    return report


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
