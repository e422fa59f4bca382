"""finetune.evaluation.scoring: response-token statistics on hand-computed logits, streamed from hidden states in
chunks, equal to the model's own loss whatever the batch, quantization or adapter."""

from __future__ import annotations

import math

import pytest
import torch

from finetune import chat_format, modeling
from finetune.evaluation import scoring

from .common import prompt_ids, raw_rows


def test_batch_stats_and_summary_on_hand_computed_logits():
    ln = math.log
    p_a, p_b, p_c = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.2, 0.2, 0.6]
    decoy = [20.0, -20.0, 0.0]  # logits of unscored positions: would change every figure if read
    logits = torch.tensor(
        [
            [decoy, [ln(p) for p in p_b], [ln(p) for p in p_a], decoy],
            [[ln(p) for p in p_c], [ln(p) for p in p_a], decoy, decoy],
        ]
    )
    labels = torch.tensor(
        [
            [-100, -100, 1, 2],  # prompt, prompt, response, response
            [-100, 0, 0, -100],  # prompt, response, response, padding
        ]
    )
    # logits[:, t] predicts labels[:, t + 1]:
    #   row 0: t=1 (p_b) -> 1, argmax 1, right; t=2 (p_a) -> 2, argmax 0, wrong
    #   row 1: t=0 (p_c) -> 0, argmax 2, wrong; t=1 (p_a) -> 0, argmax 0, right
    h_ab = -(0.5 * ln(0.5) + 2 * 0.25 * ln(0.25))  # entropy of p_a and of p_b
    h_c = -(2 * 0.2 * ln(0.2) + 0.6 * ln(0.6))
    stats = scoring.batch_stats(logits, labels)
    assert stats["tokens"] == 4 and stats["correct"] == 2
    assert stats["nll"] == pytest.approx(-(ln(0.5) + ln(0.25) + ln(0.2) + ln(0.5)), rel=1e-6)
    assert stats["entropy"] == pytest.approx(3 * h_ab + h_c, rel=1e-6)

    # Sums: the two rows as two batches add up to the one batch.
    halves = [scoring.batch_stats(logits[i : i + 1], labels[i : i + 1]) for i in (0, 1)]
    for key in stats:
        assert halves[0][key] + halves[1][key] == pytest.approx(stats[key], rel=1e-6)

    summary = scoring.summarize_stats(stats)
    assert summary["eval_loss"] == pytest.approx(ln(80) / 4, rel=1e-6)  # 2 * 4 * 5 * 2 = 80
    assert summary["perplexity"] == pytest.approx(80**0.25, rel=1e-6)
    assert summary["mean_token_accuracy"] == 0.5
    assert summary["entropy"] == pytest.approx((3 * h_ab + h_c) / 4, rel=1e-6)
    assert summary["response_tokens"] == 4


def test_batch_stats_ignores_masked_vocabulary_and_fp16_logits():
    logits = torch.tensor([[[0.0, 0.0, -math.inf], [0.0, 0.0, -math.inf]]])
    stats = scoring.batch_stats(logits.half(), torch.tensor([[-100, 1]]))
    assert stats["entropy"] == pytest.approx(math.log(2))  # 0 * log 0 counts 0, not NaN
    assert stats["nll"] == pytest.approx(math.log(2)) and stats["tokens"] == 1


def random_logits_with_inf(tokens=53, vocab=301, seed=0):
    """fp32 logits with a masked (-inf) part of the vocabulary in every row, and finite targets."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, vocab, generator=gen) * 4
    logits[torch.rand(tokens, vocab, generator=gen) < 0.3] = -math.inf
    logits[:5, 7:] = -math.inf  # rows with only a few allowed tokens: low entropy
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    targets[:5] = torch.randint(0, 7, (5,), generator=gen)
    logits[torch.arange(tokens), targets] = torch.randn(tokens, generator=gen)
    return logits, targets


def naive_stats(logits, targets):
    """Independent reference: torch's cross-entropy, softmax entropy with 0 * log 0 taken as 0."""
    log_probs = torch.log_softmax(logits.double(), -1)
    probs = log_probs.exp()
    return {
        "nll": torch.nn.functional.cross_entropy(logits.double(), targets, reduction="sum").item(),
        "entropy": -(probs * log_probs.nan_to_num(neginf=0.0)).sum().item(),
        "correct": int((logits.argmax(-1) == targets).sum()),
        "tokens": len(targets),
    }


@pytest.mark.parametrize("chunk", [1, 7, 52, 53, 1000])
def test_chunked_stats_equal_unchunked_on_logits_with_inf(chunk):
    logits, targets = random_logits_with_inf()
    probs = logits.softmax(-1)
    assert torch.isnan(-(probs * probs.log()).sum(-1)).any()  # the -inf entries bite a careless entropy
    whole = scoring.logit_stats(logits, targets)
    chunked = scoring.chunked_stats(logits, targets, lambda rows: rows, chunk)
    assert chunked["tokens"] == whole["tokens"] == len(targets) and chunked["correct"] == whole["correct"]
    for key in ("nll", "entropy"):
        assert math.isfinite(chunked[key])
        assert chunked[key] == pytest.approx(whole[key], abs=1e-5 * len(targets)), key
    reference = naive_stats(logits, targets)
    assert whole["correct"] == reference["correct"]
    for key in ("nll", "entropy"):
        assert whole[key] / len(targets) == pytest.approx(reference[key] / len(targets), abs=1e-5), key


def test_chunked_stats_comparison_sees_a_lost_token():
    """Negative control for the test above: a chunking that skips one token is far outside 1e-5."""
    logits, targets = random_logits_with_inf()
    whole = scoring.logit_stats(logits, targets)
    lossy = scoring.chunked_stats(logits[:-1], targets[:-1], lambda rows: rows, 7)
    assert abs(lossy["nll"] - whole["nll"]) > 1e-3 and abs(lossy["entropy"] - whole["entropy"]) > 1e-3


def test_chunk_tokens_bounds_the_memory_of_a_chunk():
    per_token = 151_936 * 4 * 4  # Qwen2's vocabulary, four fp32 [tokens, vocab] tensors
    tokens = scoring.chunk_tokens(151_936)
    assert tokens * per_token <= scoring.CHUNK_BYTES < (tokens + 1) * per_token
    assert scoring.chunk_tokens(10**9) == 1


def test_summarize_stats_caps_perplexity_and_survives_no_tokens():
    huge = scoring.summarize_stats({"nll": 1000.0, "entropy": 1.0, "correct": 0, "tokens": 10})
    assert huge["eval_loss"] == 100.0 and huge["perplexity"] == math.exp(50.0)
    empty = scoring.summarize_stats({"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0})
    assert empty["response_tokens"] == 0 and math.isfinite(empty["eval_loss"])


def test_encode_example_masks_exactly_the_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    conversation = chat_format.to_conversation("What is a bond?", "Context here.", "A bond is a loan to an issuer.")
    ids, labels = scoring.encode_example(tok, conversation, max_length=512)
    rendered = tok.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\nA bond is a loan to an issuer.<|im_end|>\n")
    assert tok.decode(ids) == rendered
    assert len(ids) == len(labels)
    n_prompt = len(prompt_ids(tok, conversation))
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]  # every response token is scored, as itself
    assert tok.decode(labels[n_prompt:]) == "A bond is a loan to an issuer.<|im_end|>\n"
    assert tok.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")

    short_ids, short_labels = scoring.encode_example(tok, conversation, max_length=n_prompt + 3)
    assert short_ids == ids[: n_prompt + 3] and short_labels == labels[: n_prompt + 3]


def test_pad_batch_pads_on_the_right_with_masked_labels():
    batch = scoring.pad_batch([([5, 6, 7], [-100, 6, 7]), ([8], [-100])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_response_metrics_does_not_depend_on_batch_size(tiny_model, tiny_tokenizer):
    conversations = chat_format.conversations(raw_rows(20))
    results = [scoring.response_metrics(tiny_model, tiny_tokenizer, conversations, bs, 512) for bs in (1, 3, 16)]
    tokens = sum(sum(l != -100 for l in scoring.encode_example(tiny_tokenizer, c, 512)[1][1:]) for c in conversations)
    for result in results:
        assert result["response_tokens"] == results[0]["response_tokens"] == tokens
        for key in ("eval_loss", "mean_token_accuracy", "entropy"):
            assert result[key] == pytest.approx(results[0][key], abs=1e-5), key
    # Truncated responses are scored up to max_length, the same in any batch.
    cut = [scoring.response_metrics(tiny_model, tiny_tokenizer, conversations, bs, 80) for bs in (1, 16)]
    assert 0 < cut[0]["response_tokens"] == cut[1]["response_tokens"] < tokens
    assert cut[0]["eval_loss"] == pytest.approx(cut[1]["eval_loss"], abs=1e-5)


def test_response_metrics_matches_the_models_own_loss(lively_model, tiny_tokenizer):
    """One example: the mean NLL equals the shifted cross-entropy transformers computes from labels."""
    conversation = chat_format.conversations(raw_rows(1))[0]
    ids, labels = scoring.encode_example(tiny_tokenizer, conversation, 512)
    with torch.no_grad():
        loss = lively_model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    result = scoring.response_metrics(lively_model, tiny_tokenizer, [conversation], 4, 512)
    assert result["eval_loss"] == pytest.approx(loss, abs=1e-5)


def test_response_metrics_through_a_fresh_lora_adapter_equals_the_base(lively_model, tiny_tokenizer):
    """evaluate scores a PeftModel; a new adapter (B = 0) changes nothing, so the figures must not move."""
    from peft import LoraConfig, get_peft_model

    conversations = chat_format.conversations(raw_rows(6))
    base = scoring.response_metrics(lively_model, tiny_tokenizer, conversations, 4, 512)
    tuned_model = get_peft_model(lively_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    try:
        tuned = scoring.response_metrics(tuned_model, tiny_tokenizer, conversations, 4, 512)
    finally:
        tuned_model.unload()  # the module-scoped model goes back as it was
    for key in base:
        assert tuned[key] == pytest.approx(base[key], abs=1e-6), key


def full_logits_metrics(model, tokenizer, conversations, batch_size, max_length):
    """The old way: the model's own [batch, length, vocab] logits, then batch_stats. Same batches."""
    examples = [scoring.encode_example(tokenizer, c, max_length) for c in conversations]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total = {"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = scoring.pad_batch([examples[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for key, value in scoring.batch_stats(logits, batch["labels"]).items():
                total[key] += value
    return scoring.summarize_stats(total)


@pytest.mark.parametrize("kind", ["none", "8bit", "4bit", "lora on 8bit"])
def test_response_metrics_from_hidden_states_equal_the_full_logits(lively_base_64, tiny_tokenizer, kind):
    """Backbone + output layer in chunks gives the model's own logits' figures, for plain, quantized and
    peft-wrapped models; a LoRA adapter with random B must change them (it is applied, not bypassed)."""
    conversations = chat_format.conversations(raw_rows(10))
    model = modeling.load_model(lively_base_64, kind.split()[-1])
    if kind.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        before = scoring.response_metrics(model, tiny_tokenizer, conversations, 4, 512)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a trained-looking adapter: B is 0 at initialisation
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    weight.copy_(torch.randn(weight.shape, generator=gen) * 0.5)
    got = scoring.response_metrics(model, tiny_tokenizer, conversations, 4, 512)
    expected = full_logits_metrics(model, tiny_tokenizer, conversations, 4, 512)
    assert got["response_tokens"] == expected["response_tokens"] > 100
    for key in ("eval_loss", "mean_token_accuracy", "entropy"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key
    if kind.startswith("lora"):
        assert abs(got["eval_loss"] - before["eval_loss"]) > 1e-3  # 100x the tolerance above


def test_response_metrics_never_builds_batch_by_vocab_logits(lively_model, tiny_tokenizer, monkeypatch):
    """The output layer only ever sees one chunk of response positions, never [batch, length, hidden]."""
    monkeypatch.setattr(scoring, "CHUNK_BYTES", 16 * 2**10)  # a few tokens per chunk at this vocabulary
    chunk = scoring.chunk_tokens(lively_model.get_output_embeddings().out_features)
    seen = []
    hook = lively_model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        scoring.response_metrics(lively_model, tiny_tokenizer, chat_format.conversations(raw_rows(6)), 6, 512)
    finally:
        hook.remove()
    assert 1 < chunk < 8 and len(seen) > 10
    assert all(len(shape) == 2 and shape[0] <= chunk for shape in seen), seen[:3]


def test_per_row_results_are_the_same_in_one_chunk_or_many(lively_model, tiny_tokenizer):
    """A chunk of 3 tokens splits every response (and crosses rows): per-row sums and the totals equal one chunk's,
    and each row's sums are that row's own (scored alone)."""
    conversations = chat_format.conversations(raw_rows(8))
    one = scoring.response_rows(lively_model, tiny_tokenizer, conversations, 4, 512, chunk=10**6)
    many = scoring.response_rows(lively_model, tiny_tokenizer, conversations, 4, 512, chunk=3)
    assert max(one["tokens"]) > 3 and one["tokens"] == many["tokens"] and one["correct"] == many["correct"]
    for key in ("nll", "entropy"):
        assert many[key] == pytest.approx(one[key], rel=1e-5), key
    alone = [scoring.response_rows(lively_model, tiny_tokenizer, [c], 1, 512, chunk=3) for c in conversations[:3]]
    assert [a["nll"][0] for a in alone] == pytest.approx(many["nll"][:3], rel=1e-5)
    assert len(set(one["nll"])) == len(conversations)  # control: rows differ, so a mix-up would show
    totals = scoring.summarize_stats(scoring.total_of(many))
    assert totals["eval_loss"] == pytest.approx(sum(one["nll"]) / sum(one["tokens"]), rel=1e-6)
    assert totals == scoring.response_metrics(lively_model, tiny_tokenizer, conversations, 4, 512, chunk=3)
