"""Evaluation: batched vs one-at-a-time generation, response-token scoring speed, and the scoring's peak
memory at Qwen2's 151,936-token vocabulary, before (full logits) and after (hidden states, chunked).

- generation: params.yaml's tiny model (model.tiny) with larger random weights (the default init
  answers "\\n" forever), fp32, evaluate.num_samples real Alpaca prompts, evaluate.batch_size and
  evaluate.max_new_tokens. The outputs of both ways are asserted equal; the speed-up is the ratio of
  the two medians measured in this run.
- scoring: response tokens per second through scoring.response_metrics, next to the old
  full-logits scoring (kept below as `full_logits_metrics`), same model and rows.
- memory: a Qwen2 with the real vocabulary (small hidden size: the output layer is what grows with
  the vocabulary), the Qwen2 tokenizer from ../shared when present, batch 16, real Alpaca rows;
  each way in a fresh process (common.isolated), so each peak is its own.
"""

from __future__ import annotations

import math

import torch

from benchmarks import common
from finetune import chat_format, config, tiny
from finetune.data import readers
from finetune.evaluation import generation as generating
from finetune.evaluation import scoring as scorer

QWEN2_VOCAB = 151_936
MEMORY_BATCH = 16
SEED = 0


# ---------------------------------------------------------------- the old scoring, as a reference


def full_logits_batch_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Before: several fp32 [response tokens, vocab] tensors at once."""
    labels = labels[:, 1:]
    mask = labels != -100
    picked = logits[:, :-1][mask].float()
    targets = labels[mask]
    log_probs = torch.log_softmax(picked, dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    entropy = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)
    correct = picked.argmax(-1) == targets
    return {
        "nll": nll.sum().item(),
        "entropy": entropy.sum().item(),
        "correct": int(correct.sum().item()),
        "tokens": int(mask.sum().item()),
    }


@torch.inference_mode()
def full_logits_metrics(model, tokenizer, conversations, batch_size: int, max_length: int) -> dict:
    """Before: the model's own [batch, length, vocab] logits from the first scored position on."""
    model.eval()
    examples = [scorer.encode_example(tokenizer, c, max_length) for c in conversations]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total = {"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0}
    for start in range(0, len(order), batch_size):
        batch = scorer.pad_batch([examples[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id)
        scored = (batch["labels"][:, 1:] != -100).any(0).nonzero()
        if len(scored) == 0:
            continue
        first = int(scored[0])
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            use_cache=False,
            logits_to_keep=batch["input_ids"].shape[1] - first,
        ).logits
        for key, value in full_logits_batch_stats(logits, batch["labels"][:, first:]).items():
            total[key] += value
        del logits
    return scorer.summarize_stats(total)


# ---------------------------------------------------------------- data and models


def alpaca_conversations(n: int) -> list[dict]:
    """A seeded sample of n real Alpaca rows (the embedded sample where ../shared is absent)."""
    frame = readers.read_any(common.data_source())
    frame = frame.astype(object).where(frame.notna(), "")
    frame = frame[(frame["instruction"].str.strip() != "") & (frame["output"].str.strip() != "")]
    return chat_format.conversations(frame.sample(n=min(n, len(frame)), random_state=SEED))


def lively(model):
    """Larger random layer weights: varied answers that stop at different lengths (tests do the same)."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=gen) * (0.25 if "self_attn" in name else 0.1))
    return model.eval()


def tiny_model():
    model, tokenizer = tiny.build(config.load("model").model.tiny, str(common.EMBEDDED_SAMPLE))
    return lively(model), tokenizer


def qwen2_vocab_model():
    """A Qwen2 with the real 151,936-token vocabulary and a small body; the Qwen2 tokenizer when present."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer_dir = common.qwen2_tokenizer_dir()
    tokenizer = (
        tiny.qwen2_tokenizer_from_files(tokenizer_dir) if tokenizer_dir else tiny_model()[1]
    )  # embedded sample's BPE: same vocabulary-sized output layer
    config = Qwen2Config(
        vocab_size=QWEN2_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(SEED)
    return Qwen2ForCausalLM(config).eval(), tokenizer, bool(tokenizer_dir)


# ---------------------------------------------------------------- measurements


def generation(quick: bool) -> dict:
    cfg = config.load("evaluate").evaluate
    model, tokenizer = tiny_model()
    conversations = alpaca_conversations(8 if quick else cfg.num_samples)
    repeats, warmup = (1, 0) if quick else (3, 1)

    def run(batch_size):
        return generating.generate(model, tokenizer, conversations, batch_size, cfg.max_new_tokens)

    batched_s, batched = common.median_seconds(lambda: run(cfg.batch_size), repeats, warmup)
    alone_s, alone = common.median_seconds(lambda: run(1), repeats, warmup)
    assert batched == alone, "batched generation changed the answers"
    tokens = sum(r["tokens"] for r in batched)
    return {
        "prompts": len(conversations),
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens,
        "generated_tokens": tokens,
        "stopped": sum(r["stopped"] for r in batched),
        "distinct_answers": len({r["text"] for r in batched}),
        "same_outputs": True,
        "batched_seconds": round(batched_s, 3),
        "one_at_a_time_seconds": round(alone_s, 3),
        "speedup": round(alone_s / batched_s, 2),
        "batched_tokens_per_second": round(tokens / batched_s, 1),
    }


def scoring(quick: bool) -> dict:
    p = config.load("evaluate", "prepare")
    model, tokenizer = tiny_model()
    conversations = alpaca_conversations(32 if quick else 256)
    repeats, warmup = (1, 0) if quick else (3, 1)
    args = (model, tokenizer, conversations, p.evaluate.batch_size, p.prepare.max_length)
    chunked_s, after = common.median_seconds(lambda: scorer.response_metrics(*args), repeats, warmup)
    full_s, before = common.median_seconds(lambda: full_logits_metrics(*args), repeats, warmup)
    _check_same(before, after)
    tokens = after["response_tokens"]
    return {
        "rows": len(conversations),
        "vocab": model.config.vocab_size,
        "response_tokens": tokens,
        "tokens_per_second": round(tokens / chunked_s, 1),
        "full_logits_tokens_per_second": round(tokens / full_s, 1),
    }


def scoring_peak_memory(way: str, rows: int, batch_size: int, max_length: int) -> dict:
    """Run in a fresh process: one way of scoring at vocabulary 151,936, and the memory it took.

    Linux resets the peak (VmHWM) on writing 5 to /proc/self/clear_refs: the peak after scoring minus
    the resident size before it is what the scoring alone added to the loaded model and data.
    """
    model, tokenizer, real_tokenizer = qwen2_vocab_model()
    conversations = alpaca_conversations(rows)
    score = {"before": full_logits_metrics, "after": scorer.response_metrics}[way]
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    start_mb = common.status_mb("VmRSS")
    metrics = score(model, tokenizer, conversations, batch_size, max_length)
    return {
        "metrics": metrics,
        "rss_before_scoring_mb": round(start_mb, 1),
        "scoring_peak_rss_mb": round(common.status_mb("VmHWM"), 1),
        "scoring_peak_above_start_mb": round(common.status_mb("VmHWM") - start_mb, 1),
        "qwen2_tokenizer": real_tokenizer,
        "longest_batch": _longest_batch(tokenizer, conversations, batch_size, max_length),
    }


def _longest_batch(tokenizer, conversations, batch_size, max_length) -> dict:
    lengths = sorted((scorer.encode_example(tokenizer, c, max_length) for c in conversations), key=lambda e: len(e[0]))
    last = lengths[-batch_size:]
    return {
        "rows": len(last),
        "width": len(last[-1][0]),
        "response_tokens": sum(sum(label != -100 for label in labels[1:]) for _, labels in last),
    }


def memory(quick: bool) -> dict:
    max_length = config.load("prepare").prepare.max_length
    rows, batch = (8, 4) if quick else (48, MEMORY_BATCH)
    result = {
        "vocab": QWEN2_VOCAB,
        "batch_size": batch,
        "rows": rows,
        "chunk_tokens": scorer.chunk_tokens(QWEN2_VOCAB),
        "chunk_mb": scorer.CHUNK_BYTES // 2**20,
    }
    for way in ("before", "after"):
        measured = common.isolated(scoring_peak_memory, way, rows, batch, max_length)
        result[way] = {**measured["result"], "process_peak_rss_mb": measured["peak_rss_mb"]}
    _check_same(result["before"].pop("metrics"), result["after"].pop("metrics"))
    return result


def _check_same(before: dict, after: dict) -> None:
    assert before["response_tokens"] == after["response_tokens"]
    for key in ("eval_loss", "mean_token_accuracy", "entropy"):
        assert math.isclose(before[key], after[key], abs_tol=1e-4), (key, before[key], after[key])


def run(quick: bool) -> dict:
    torch.manual_seed(SEED)
    gen, score, mem = generation(quick), scoring(quick), memory(quick)
    before, after = mem["before"], mem["after"]
    table = [
        [
            f"generation: {gen['prompts']} prompts x {gen['max_new_tokens']} new tokens, batch {gen['batch_size']}",
            f"{gen['batched_seconds']} s batched, {gen['one_at_a_time_seconds']} s one at a time",
        ],
        ["generation speed-up (target >= 5x), same outputs", f"{gen['speedup']}x, {gen['same_outputs']}"],
        [
            f"scoring: {score['response_tokens']} response tokens, vocab {score['vocab']}",
            f"{score['tokens_per_second']} tokens/s (full logits: {score['full_logits_tokens_per_second']})",
        ],
        [
            f"scoring peak RSS, vocab {mem['vocab']}, batch {mem['batch_size']}, {mem['rows']} Alpaca rows",
            f"before {before['scoring_peak_rss_mb']:.0f} MB, after {after['scoring_peak_rss_mb']:.0f} MB",
        ],
        [
            "  of which the scoring added to the loaded model and data",
            f"before {before['scoring_peak_above_start_mb']:.0f} MB, after {after['scoring_peak_above_start_mb']:.0f} MB"
            f" (chunks of {mem['chunk_tokens']} tokens, <= {mem['chunk_mb']} MB)",
        ],
    ]
    return {"table": table, "generation": gen, "scoring": score, "memory": mem, "data": common.data_source()}
