"""Response-token statistics of a model on conversations: loss, perplexity, accuracy, entropy.

The backbone runs on whole batches; the output layer only on the response positions, a chunk of tokens at a
time, so memory stays bounded whatever the vocabulary. Pure functions take tensors, so they are tested
without a model."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from finetune import chat_format

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
    """input_ids and labels with the prompt masked (-100), as TRL's completion-only loss sees them; for a
    conversation (a "messages" key) every assistant turn labelled, as training labels it."""
    if "messages" in conversation:
        ids, mask, _ = chat_format.encode_conversation(tokenizer, conversation["messages"])
        return ids[:max_length], [t if m else -100 for t, m in zip(ids, mask)][:max_length]
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


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """logit_stats per token (fp32 [tokens] each): NLL, entropy, argmax hit."""
    x = logits.float()
    log_probs = torch.log_softmax(x, dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -log_probs.mul_(log_probs.exp()).nansum(-1)
    return {"nll": nll, "entropy": entropy, "correct": (x.argmax(-1) == targets).float()}


def response_metrics(
    model, tokenizer, conversations: list[dict], batch_size: int, max_length: int, chunk: int | None = None
) -> dict:
    """Loss, perplexity, accuracy and entropy over response tokens: the sums of response_rows."""
    return summarize_stats(total_of(response_rows(model, tokenizer, conversations, batch_size, max_length, chunk)))


def total_of(rows: dict[str, list]) -> dict:
    """The sums over rows of response_rows' columns (what summarize_stats reads)."""
    return {
        "nll": math.fsum(rows["nll"]),
        "entropy": math.fsum(rows["entropy"]),
        "correct": int(sum(rows["correct"])),
        "tokens": int(sum(rows["tokens"])),
    }


@torch.inference_mode()
def response_rows(
    model, tokenizer, conversations: list[dict], batch_size: int, max_length: int, chunk: int | None = None
) -> dict[str, list]:
    """Per conversation, in their order: sums of NLL, entropy and argmax hits over its response tokens, and
    their count (0 when max_length cut the whole response); streamed batch by batch.

    The backbone runs on the whole batch; the output layer only on the response positions, `chunk` tokens at
    a time (default chunk_tokens), so memory beyond the model and its activations stays bounded.
    """
    model.eval()
    backbone, head = backbone_and_head(model)
    chunk = chunk or chunk_tokens(head.out_features)
    examples = [encode_example(tokenizer, c, max_length) for c in conversations]
    # Similar lengths together: less padding, same sums.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    sums = {key: torch.zeros(len(examples), dtype=torch.float64) for key in ("nll", "entropy", "correct", "tokens")}
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=None):
        members = order[start : start + batch_size]
        batch = pad_batch([examples[i] for i in members], tokenizer.pad_token_id)
        labels = batch["labels"][:, 1:].to(device)
        mask = labels != -100
        if not mask.any():  # every response was cut off by max_length
            continue
        hidden = backbone(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
        ).last_hidden_state
        # hidden[:, t] predicts labels[:, t + 1]; [response tokens, hidden], the prompt's positions dropped.
        picked = hidden[:, :-1][mask]
        del hidden
        targets = labels[mask]
        owner = torch.tensor(members)[:, None].expand(mask.shape)[mask.cpu()]  # each response token's row
        for begin in range(0, len(targets), chunk):
            stats = token_stats(head(picked[begin : begin + chunk]), targets[begin : begin + chunk])
            rows = owner[begin : begin + chunk]
            for key, value in stats.items():
                sums[key].index_add_(0, rows, value.double().cpu())
        sums["tokens"].index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))
    return {
        "nll": sums["nll"].tolist(),
        "entropy": sums["entropy"].tolist(),
        "correct": [int(v) for v in sums["correct"].tolist()],
        "tokens": [int(v) for v in sums["tokens"].tolist()],
    }
