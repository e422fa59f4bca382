"""Evaluation: metrics on hand-computed examples, streamed response stats, batched generation, compare."""

from __future__ import annotations

import contextlib
import math

import pandas as pd
import pytest
import torch

from helpers import REPO
from stages import evaluate, evaluation, modeling, params, prompts

RAW = REPO / "data" / "raw" / "finance_alpaca.parquet"


def raw_rows(n: int) -> pd.DataFrame:
    frame = pd.read_parquet(RAW).dropna(subset=["instruction", "output"])
    return frame.head(n).reset_index(drop=True).astype("string")


def prompt_ids(tokenizer, conversation: dict) -> list[int]:
    return list(tokenizer.apply_chat_template(conversation["prompt"], tokenize=True,
                                              add_generation_prompt=True)["input_ids"])


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny_model(tiny_base):
    return modeling.load_model(tiny_base, "none")


@pytest.fixture(scope="module")
def lively_base(tiny_base, tmp_path_factory):
    """tiny_base with larger random layer weights, saved like a base model.

    The default init makes a model that echoes its last prompt token ("\\n" forever), so batching
    mistakes would go unseen; this one answers varied tokens. Its activations stay under LLM.int8's
    outlier threshold (6.0), where 8-bit quantization is row by row and cannot depend on the batch.
    """
    model = randomize(modeling.load_model(tiny_base, "none"))
    out = tmp_path_factory.mktemp("lively_base")
    model.save_pretrained(out)
    modeling.load_tokenizer(tiny_base).save_pretrained(out)
    return out


def randomize(model, seed: int = 0):
    """Larger random layer weights: varied answers instead of the default init's echo (see lively_base)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=gen) * (0.25 if "self_attn" in name else 0.1))
    return model


@pytest.fixture(scope="module")
def lively_base_64(tiny_tokenizer, tmp_path_factory):
    """Like lively_base, 64 wide: bitsandbytes' 4-bit blocks need it."""
    from stages.params import TinyModelParams

    cfg = TinyModelParams(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1)
    out = tmp_path_factory.mktemp("lively_base_64")
    randomize(modeling.build_tiny_model(cfg, tiny_tokenizer)).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lively_model(lively_base):
    return modeling.load_model(lively_base, "none")


@pytest.fixture(scope="module")
def prompts_of_six_lengths(tiny_tokenizer):
    conversations = prompts.conversations(raw_rows(40))
    by_length = {len(prompt_ids(tiny_tokenizer, c)): c for c in conversations}
    lengths = sorted(by_length)
    picked = [by_length[lengths[i * (len(lengths) - 1) // 5]] for i in range(6)]  # shortest .. longest
    # Interleaved so every batch of 4 mixes lengths (left padding differs row by row).
    return [picked[i] for i in (0, 5, 2, 3, 1, 4)]


# ---------------------------------------------------------------- response-token statistics


def test_batch_stats_and_summary_on_hand_computed_logits():
    ln = math.log
    p_a, p_b, p_c = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.2, 0.2, 0.6]
    decoy = [20.0, -20.0, 0.0]  # logits of unscored positions: would change every figure if read
    logits = torch.tensor([
        [decoy, [ln(p) for p in p_b], [ln(p) for p in p_a], decoy],
        [[ln(p) for p in p_c], [ln(p) for p in p_a], decoy, decoy],
    ])
    labels = torch.tensor([
        [-100, -100, 1, 2],     # prompt, prompt, response, response
        [-100, 0, 0, -100],     # prompt, response, response, padding
    ])
    # logits[:, t] predicts labels[:, t + 1]:
    #   row 0: t=1 (p_b) -> 1, argmax 1, right; t=2 (p_a) -> 2, argmax 0, wrong
    #   row 1: t=0 (p_c) -> 0, argmax 2, wrong; t=1 (p_a) -> 0, argmax 0, right
    h_ab = -(0.5 * ln(0.5) + 2 * 0.25 * ln(0.25))  # entropy of p_a and of p_b
    h_c = -(2 * 0.2 * ln(0.2) + 0.6 * ln(0.6))
    stats = evaluation.batch_stats(logits, labels)
    assert stats["tokens"] == 4 and stats["correct"] == 2
    assert stats["nll"] == pytest.approx(-(ln(0.5) + ln(0.25) + ln(0.2) + ln(0.5)), rel=1e-6)
    assert stats["entropy"] == pytest.approx(3 * h_ab + h_c, rel=1e-6)

    # Sums: the two rows as two batches add up to the one batch.
    halves = [evaluation.batch_stats(logits[i : i + 1], labels[i : i + 1]) for i in (0, 1)]
    for key in stats:
        assert halves[0][key] + halves[1][key] == pytest.approx(stats[key], rel=1e-6)

    summary = evaluation.summarize_stats(stats)
    assert summary["eval_loss"] == pytest.approx(ln(80) / 4, rel=1e-6)  # 2 * 4 * 5 * 2 = 80
    assert summary["perplexity"] == pytest.approx(80 ** 0.25, rel=1e-6)
    assert summary["mean_token_accuracy"] == 0.5
    assert summary["entropy"] == pytest.approx((3 * h_ab + h_c) / 4, rel=1e-6)
    assert summary["response_tokens"] == 4


def test_batch_stats_ignores_masked_vocabulary_and_fp16_logits():
    logits = torch.tensor([[[0.0, 0.0, -math.inf], [0.0, 0.0, -math.inf]]])
    stats = evaluation.batch_stats(logits.half(), torch.tensor([[-100, 1]]))
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
    return {"nll": torch.nn.functional.cross_entropy(logits.double(), targets, reduction="sum").item(),
            "entropy": -(probs * log_probs.nan_to_num(neginf=0.0)).sum().item(),
            "correct": int((logits.argmax(-1) == targets).sum()), "tokens": len(targets)}


@pytest.mark.parametrize("chunk", [1, 7, 52, 53, 1000])
def test_chunked_stats_equal_unchunked_on_logits_with_inf(chunk):
    logits, targets = random_logits_with_inf()
    probs = logits.softmax(-1)
    assert torch.isnan(-(probs * probs.log()).sum(-1)).any()  # the -inf entries bite a careless entropy
    whole = evaluation.logit_stats(logits, targets)
    chunked = evaluation.chunked_stats(logits, targets, lambda rows: rows, chunk)
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
    whole = evaluation.logit_stats(logits, targets)
    lossy = evaluation.chunked_stats(logits[:-1], targets[:-1], lambda rows: rows, 7)
    assert abs(lossy["nll"] - whole["nll"]) > 1e-3 and abs(lossy["entropy"] - whole["entropy"]) > 1e-3


def test_chunk_tokens_bounds_the_memory_of_a_chunk():
    per_token = 151_936 * 4 * 4  # Qwen2's vocabulary, four fp32 [tokens, vocab] tensors
    tokens = evaluation.chunk_tokens(151_936)
    assert tokens * per_token <= evaluation.CHUNK_BYTES < (tokens + 1) * per_token
    assert evaluation.chunk_tokens(10**9) == 1


def test_summarize_stats_caps_perplexity_and_survives_no_tokens():
    huge = evaluation.summarize_stats({"nll": 1000.0, "entropy": 1.0, "correct": 0, "tokens": 10})
    assert huge["eval_loss"] == 100.0 and huge["perplexity"] == math.exp(50.0)
    empty = evaluation.summarize_stats({"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0})
    assert empty["response_tokens"] == 0 and math.isfinite(empty["eval_loss"])


def test_encode_example_masks_exactly_the_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    conversation = prompts.to_conversation("What is a bond?", "Context here.", "A bond is a loan to an issuer.")
    ids, labels = evaluation.encode_example(tok, conversation, max_length=512)
    rendered = tok.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\nA bond is a loan to an issuer.<|im_end|>\n")
    assert tok.decode(ids) == rendered
    assert len(ids) == len(labels)
    n_prompt = len(prompt_ids(tok, conversation))
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]  # every response token is scored, as itself
    assert tok.decode(labels[n_prompt:]) == "A bond is a loan to an issuer.<|im_end|>\n"
    assert tok.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")

    short_ids, short_labels = evaluation.encode_example(tok, conversation, max_length=n_prompt + 3)
    assert short_ids == ids[: n_prompt + 3] and short_labels == labels[: n_prompt + 3]


def test_pad_batch_pads_on_the_right_with_masked_labels():
    batch = evaluation.pad_batch([([5, 6, 7], [-100, 6, 7]), ([8], [-100])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_response_metrics_does_not_depend_on_batch_size(tiny_model, tiny_tokenizer):
    conversations = prompts.conversations(raw_rows(20))
    results = [evaluation.response_metrics(tiny_model, tiny_tokenizer, conversations, bs, 512) for bs in (1, 3, 16)]
    tokens = sum(sum(l != -100 for l in evaluation.encode_example(tiny_tokenizer, c, 512)[1][1:])
                 for c in conversations)
    for result in results:
        assert result["response_tokens"] == results[0]["response_tokens"] == tokens
        for key in ("eval_loss", "mean_token_accuracy", "entropy"):
            assert result[key] == pytest.approx(results[0][key], abs=1e-5), key
    # Truncated responses are scored up to max_length, the same in any batch.
    cut = [evaluation.response_metrics(tiny_model, tiny_tokenizer, conversations, bs, 80) for bs in (1, 16)]
    assert 0 < cut[0]["response_tokens"] == cut[1]["response_tokens"] < tokens
    assert cut[0]["eval_loss"] == pytest.approx(cut[1]["eval_loss"], abs=1e-5)


def test_response_metrics_matches_the_models_own_loss(lively_model, tiny_tokenizer):
    """One example: the mean NLL equals the shifted cross-entropy transformers computes from labels."""
    conversation = prompts.conversations(raw_rows(1))[0]
    ids, labels = evaluation.encode_example(tiny_tokenizer, conversation, 512)
    with torch.no_grad():
        loss = lively_model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    result = evaluation.response_metrics(lively_model, tiny_tokenizer, [conversation], 4, 512)
    assert result["eval_loss"] == pytest.approx(loss, abs=1e-5)


def test_response_metrics_through_a_fresh_lora_adapter_equals_the_base(lively_model, tiny_tokenizer):
    """evaluate scores a PeftModel; a new adapter (B = 0) changes nothing, so the figures must not move."""
    from peft import LoraConfig, get_peft_model

    conversations = prompts.conversations(raw_rows(6))
    base = evaluation.response_metrics(lively_model, tiny_tokenizer, conversations, 4, 512)
    tuned_model = get_peft_model(lively_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    try:
        tuned = evaluation.response_metrics(tuned_model, tiny_tokenizer, conversations, 4, 512)
    finally:
        tuned_model.unload()  # the module-scoped model goes back as it was
    for key in base:
        assert tuned[key] == pytest.approx(base[key], abs=1e-6), key


def full_logits_metrics(model, tokenizer, conversations, batch_size, max_length):
    """The old way: the model's own [batch, length, vocab] logits, then batch_stats. Same batches."""
    examples = [evaluation.encode_example(tokenizer, c, max_length) for c in conversations]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    total = {"nll": 0.0, "entropy": 0.0, "correct": 0, "tokens": 0}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = evaluation.pad_batch([examples[i] for i in order[start : start + batch_size]],
                                         tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for key, value in evaluation.batch_stats(logits, batch["labels"]).items():
                total[key] += value
    return evaluation.summarize_stats(total)


@pytest.mark.parametrize("kind", ["none", "8bit", "4bit", "lora on 8bit"])
def test_response_metrics_from_hidden_states_equal_the_full_logits(lively_base_64, tiny_tokenizer, kind):
    """Backbone + output layer in chunks gives the model's own logits' figures, for plain, quantized and
    peft-wrapped models; a LoRA adapter with random B must change them (it is applied, not bypassed)."""
    conversations = prompts.conversations(raw_rows(10))
    model = modeling.load_model(lively_base_64, kind.split()[-1])
    if kind.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        before = evaluation.response_metrics(model, tiny_tokenizer, conversations, 4, 512)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a trained-looking adapter: B is 0 at initialisation
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    weight.copy_(torch.randn(weight.shape, generator=gen) * 0.5)
    got = evaluation.response_metrics(model, tiny_tokenizer, conversations, 4, 512)
    expected = full_logits_metrics(model, tiny_tokenizer, conversations, 4, 512)
    assert got["response_tokens"] == expected["response_tokens"] > 100
    for key in ("eval_loss", "mean_token_accuracy", "entropy"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key
    if kind.startswith("lora"):
        assert abs(got["eval_loss"] - before["eval_loss"]) > 1e-3  # 100x the tolerance above


def test_response_metrics_never_builds_batch_by_vocab_logits(lively_model, tiny_tokenizer, monkeypatch):
    """The output layer only ever sees one chunk of response positions, never [batch, length, hidden]."""
    monkeypatch.setattr(evaluation, "CHUNK_BYTES", 16 * 2**10)  # a few tokens per chunk at this vocabulary
    chunk = evaluation.chunk_tokens(lively_model.get_output_embeddings().out_features)
    seen = []
    hook = lively_model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        evaluation.response_metrics(lively_model, tiny_tokenizer, prompts.conversations(raw_rows(6)), 6, 512)
    finally:
        hook.remove()
    assert 1 < chunk < 8 and len(seen) > 10
    assert all(len(shape) == 2 and shape[0] <= chunk for shape in seen), seen[:3]


# ---------------------------------------------------------------- generation


def greedy_without_cache(model, tokenizer, conversation, max_new_tokens):
    """Reference: the whole sequence through the model at every step, argmax, stop at <|im_end|>."""
    end_id = tokenizer.convert_tokens_to_ids(prompts.END_OF_TURN)
    ids, new = prompt_ids(tokenizer, conversation), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == end_id:
                return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new), "stopped": True}
            new.append(token)
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new), "stopped": False}


def test_batched_generation_equals_one_by_one_fp32(lively_model, tiny_tokenizer, prompts_of_six_lengths):
    tok, convs = tiny_tokenizer, prompts_of_six_lengths
    assert len({len(prompt_ids(tok, c)) for c in convs}) == 6
    batched = evaluation.generate(lively_model, tok, convs, batch_size=4, max_new_tokens=16)
    alone = evaluation.generate(lively_model, tok, convs, batch_size=1, max_new_tokens=16)
    assert batched == alone
    assert tok.padding_side == "right"  # generate's left padding does not leak into later encodes
    # Not a degenerate model: varied tokens, different answers.
    assert len({r["text"] for r in batched}) == 6
    assert len({t for r in batched for t in tok(r["text"])["input_ids"]}) >= 15
    for conversation, result in zip(convs[:2], batched):
        assert result == greedy_without_cache(lively_model, tok, conversation, 16)


def test_batched_generation_equals_one_by_one_8bit(lively_base, tiny_tokenizer, prompts_of_six_lengths):
    """LLM.int8 quantizes activations row by row, except outlier columns (|x| > threshold), which it
    picks per batch; under the threshold a batch must give exactly the one-by-one tokens."""
    import bitsandbytes as bnb

    model = modeling.load_model(lively_base, "8bit")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert layers, "not an 8-bit model"
    largest = []
    hooks = [m.register_forward_pre_hook(lambda m, args: largest.append(args[0].abs().max().item())) for m in layers]
    try:
        batched = evaluation.generate(model, tiny_tokenizer, prompts_of_six_lengths, 4, 16)
    finally:
        for hook in hooks:
            hook.remove()
    assert max(largest) < layers[0].state.threshold, "test model has outliers: batching may change 8-bit tokens"
    alone = evaluation.generate(model, tiny_tokenizer, prompts_of_six_lengths, 1, 16)
    assert batched == alone
    assert len({r["text"] for r in batched}) == 6


# Qwen2-0.5B-Instruct's generation_config.json: sampling settings a greedy evaluation must not inherit.
QWEN_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}


@pytest.fixture(scope="module")
def qwen_configured_base(lively_base, tmp_path_factory):
    """lively_base with Qwen2-0.5B-Instruct's generation_config.json, as a local model directory."""
    from transformers import GenerationConfig

    out = tmp_path_factory.mktemp("qwen_configured")
    model = modeling.load_model(lively_base, "none")
    model.generation_config = GenerationConfig(**QWEN_GENERATION, eos_token_id=model.generation_config.eos_token_id,
                                               pad_token_id=model.generation_config.pad_token_id)
    model.save_pretrained(out)
    modeling.load_tokenizer(lively_base).save_pretrained(out)
    return out


def test_greedy_ignores_the_models_generation_config(qwen_configured_base, tiny_tokenizer, prompts_of_six_lengths):
    model = modeling.load_model(qwen_configured_base, "none")
    assert model.generation_config.repetition_penalty == 1.1 and model.generation_config.do_sample
    convs = prompts_of_six_lengths
    got = evaluation.generate(model, tiny_tokenizer, convs, batch_size=3, max_new_tokens=24)
    assert got == [greedy_without_cache(model, tiny_tokenizer, c, 24) for c in convs]

    # Negative control, the old call: do_sample=False, top_p/top_k cleared, but the model's
    # repetition_penalty still applies, and the answers change.
    tiny_tokenizer.padding_side = "left"
    try:
        old = []
        for c in convs:
            text = tiny_tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True)
            batch = tiny_tokenizer([text], return_tensors="pt", add_special_tokens=False)
            out = model.generate(**batch, max_new_tokens=24, do_sample=False, top_p=None, top_k=None, temperature=None,
                                 eos_token_id=evaluation.end_token_ids(tiny_tokenizer))
            old.append(out[0, batch["input_ids"].shape[1]:].tolist())
    finally:
        tiny_tokenizer.padding_side = "right"
    new = [tiny_tokenizer(r["text"])["input_ids"] for r in got]
    assert sum(o[: len(n)] != n for o, n in zip(old, new)) >= 2


@pytest.mark.parametrize("do_sample", [False, True])
def test_settings_report_is_what_generate_uses(qwen_configured_base, tiny_tokenizer, do_sample):
    """Every reported knob is the value transformers' generate() ends up with, though the model's own
    generation_config says otherwise."""
    model = modeling.load_model(qwen_configured_base, "none")
    cfg = params.EvaluateParams(max_new_tokens=9, do_sample=do_sample, temperature=0.5, seed=4)
    report = evaluation.settings_report(tiny_tokenizer, cfg)
    for prefix, sample in [("generation.", False)] + [("generation.sampled.", True)] * do_sample:
        config = evaluation.generation_config(max_new_tokens=9, eos_token_id=evaluation.end_token_ids(tiny_tokenizer),
                                              pad_token_id=tiny_tokenizer.pad_token_id, do_sample=sample,
                                              temperature=0.5)
        effective, _ = model._prepare_generation_config(config)
        settings = {k.removeprefix(prefix): v for k, v in report.items()
                    if k.startswith(prefix) and "." not in k.removeprefix(prefix) and k != "generation.sampled.seed"}
        assert settings["repetition_penalty"] == 1.0 and settings["do_sample"] is sample
        assert settings["max_new_tokens"] == 9 and settings["num_beams"] == 1
        for key, value in settings.items():
            assert getattr(effective, key) == value, key
        if sample:
            assert (effective.temperature, effective.top_k, effective.top_p) == (0.5, 0, 1.0)
    assert ("generation.sampled.seed" in report) is do_sample


@contextlib.contextmanager
def forced_replies(model, tokenizer, reply_length, filler="a"):
    """Whatever its weights, `model` answers `filler` * reply_length(prompt tokens), then <|im_end|>."""
    end_id = tokenizer.convert_tokens_to_ids(prompts.END_OF_TURN)
    filler_id = tokenizer.convert_tokens_to_ids(filler)
    state = {}

    def before(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")  # no mask: one unpadded row
        if ids.shape[1] > 1:  # the prompt pass of a new batch
            state.update(lengths=(mask.sum(1) if mask is not None else [ids.shape[1]] * len(ids)), step=0)
        else:
            state["step"] += 1

    def after(module, args, logits):
        forced = torch.full_like(logits, -10.0)
        for row, length in enumerate(state["lengths"]):
            forced[row, :, filler_id if state["step"] < reply_length(int(length)) else end_id] = 10.0
        return forced

    hooks = [model.register_forward_pre_hook(before, with_kwargs=True),
             model.get_output_embeddings().register_forward_hook(after)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_generation_stops_at_end_of_turn(tiny_model, tiny_tokenizer, prompts_of_six_lengths, batch_size):
    tok, convs, max_new = tiny_tokenizer, prompts_of_six_lengths, 6
    reply_length = lambda n: n % 8  # noqa: E731  rows of one batch stop at different steps
    wanted = [reply_length(len(prompt_ids(tok, c))) for c in convs]
    assert len(set(wanted)) > 2 and any(k < max_new for k in wanted)
    with forced_replies(tiny_model, tok, reply_length):
        results = evaluation.generate(tiny_model, tok, convs, batch_size, max_new)
    for k, result in zip(wanted, results):
        if k < max_new:
            assert result == {"text": "a" * k, "tokens": k, "stopped": True}
        else:
            assert result == {"text": "a" * max_new, "tokens": max_new, "stopped": False}
    assert "<|im_end|>" not in "".join(r["text"] for r in results)


def test_generation_without_end_of_turn_runs_to_max_new_tokens(tiny_model, tiny_tokenizer, prompts_of_six_lengths):
    with forced_replies(tiny_model, tiny_tokenizer, lambda n: 10**9):
        results = evaluation.generate(tiny_model, tiny_tokenizer, prompts_of_six_lengths, 4, 5)
    assert results == [{"text": "aaaaa", "tokens": 5, "stopped": False}] * 6


# ---------------------------------------------------------------- text metrics


def test_exact_match_normalises_case_whitespace_and_surrounding_punctuation():
    assert evaluation.normalize("  The  Answer\tis\n42. ") == "the answer is 42"
    assert evaluation.exact_match("The answer is 42.", "the answer   is 42") == 1.0
    assert evaluation.exact_match('"Yes!"', "yes") == 1.0
    assert evaluation.exact_match("9.6 years", "9.6 YEARS...") == 1.0
    assert evaluation.exact_match("a, b", "a b") == 0.0  # punctuation inside counts
    assert evaluation.exact_match("42", "42.0") == 0.0
    assert evaluation.exact_match("", "") == 1.0


def test_rouge_l_f1_on_known_strings():
    # LCS "the cat on the mat": 5 of 6 tokens on each side -> P = R = F = 5/6
    assert evaluation.rouge_l_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "the cat" = 2: P = 2/2, R = 2/6 -> F = 2PR / (P + R) = 1/2; case and punctuation ignored
    assert evaluation.rouge_l_f1("The cat!", "the cat sat on the mat") == pytest.approx(0.5)
    # order matters: LCS of "a b c d" and "d c b a" is 1 -> F = 1/4
    assert evaluation.rouge_l_f1("a b c d", "d c b a") == pytest.approx(0.25)
    assert evaluation.rouge_l_f1("x y", "p q") == 0.0
    assert evaluation.rouge_l_f1("Same words here", "same words here") == 1.0


def test_text_metrics_on_hand_computed_generations():
    generations = [
        {"text": "The cat sat on the mat", "tokens": 6, "stopped": True},
        {"text": "Yes.", "tokens": 2, "stopped": False},
        {"text": "a b c d", "tokens": 4, "stopped": True},
        {"text": "x y", "tokens": 8, "stopped": True},
    ]
    references = ["the cat is on the mat", "yes", "d c b a", "p q"]
    metrics = evaluation.text_metrics(generations, references)
    assert metrics["rougeL_f1"] == pytest.approx((5 / 6 + 1.0 + 0.25 + 0.0) / 4)
    assert metrics["exact_match"] == pytest.approx(1 / 4)
    assert metrics["generated_tokens_mean"] == pytest.approx(5.0)
    assert metrics["stopped_fraction"] == pytest.approx(3 / 4)
    assert 0 < metrics["chrf"] < 100

    same = [{"text": r, "tokens": 1, "stopped": True} for r in references]
    assert evaluation.text_metrics(same, references)["chrf"] == pytest.approx(100.0)
    assert evaluation.text_metrics(same, references)["rougeL_f1"] == pytest.approx(1.0)
    assert evaluation.text_metrics([], []) == {}


# ---------------------------------------------------------------- sampling rows, comparing models


def test_sample_indices_are_seeded_sorted_and_stable():
    # Pinned: base.json and the tuned run must answer the same rows, release after release.
    assert evaluation.sample_indices(1000, 5, seed=0) == [394, 430, 776, 864, 911]
    assert evaluation.sample_indices(10, 4, seed=42) == [0, 1, 4, 9]
    assert evaluation.sample_indices(1000, 50, 0) == evaluation.sample_indices(1000, 50, 0)
    assert evaluation.sample_indices(1000, 50, 0) != evaluation.sample_indices(1000, 50, 1)
    picked = evaluation.sample_indices(1000, 50, 7)
    assert picked == sorted(set(picked)) and len(picked) == 50 and 0 <= picked[0] and picked[-1] < 1000
    assert evaluation.sample_indices(3, 50, 0) == [0, 1, 2]
    assert evaluation.sample_indices(3, 0, 0) == []


def test_compare_gives_flat_base_tuned_delta_keys():
    base = {"eval_loss": 2.0, "response_tokens": 10, "rougeL_f1": 0.25}
    tuned = {"eval_loss": 1.5, "response_tokens": 10, "rougeL_f1": 0.5, "chrf": 30.0}
    assert evaluate.compare(base, tuned) == {
        "base.chrf": None, "tuned.chrf": 30.0,  # no delta where one side lacks the metric
        "base.eval_loss": 2.0, "tuned.eval_loss": 1.5, "delta.eval_loss": -0.5,
        "base.response_tokens": 10, "tuned.response_tokens": 10, "delta.response_tokens": 0,
        "base.rougeL_f1": 0.25, "tuned.rougeL_f1": 0.5, "delta.rougeL_f1": 0.25,
    }


def test_side_by_side_pairs_rows_and_refuses_other_rows():
    def outputs(rows, sampled=False):
        return [{"row": r, "prompt": f"p{r}", "reference": f"r{r}", "greedy": f"g{r}", "stopped": True,
                 **({"sampled": f"s{r}"} if sampled else {})} for r in rows]

    base, tuned = outputs([3, 7]), outputs([3, 7])
    for row in tuned:
        row["greedy"] = "tuned " + row["greedy"]
    assert evaluate.side_by_side(base, tuned) == [
        {"row": 3, "prompt": "p3", "reference": "r3", "base_output": "g3", "tuned_output": "tuned g3"},
        {"row": 7, "prompt": "p7", "reference": "r7", "base_output": "g7", "tuned_output": "tuned g7"},
    ]
    with_samples = evaluate.side_by_side(outputs([3], True), outputs([3], True))
    assert with_samples[0]["base_sampled"] == with_samples[0]["tuned_sampled"] == "s3"
    with pytest.raises(ValueError, match="evaluate_base"):
        evaluate.side_by_side(outputs([3, 7]), outputs([3, 8]))
    with pytest.raises(ValueError):
        evaluate.side_by_side(outputs([3, 7]), outputs([3]))


def test_same_generation_refuses_base_answers_made_otherwise(tiny_tokenizer):
    cfg = params.EvaluateParams(max_new_tokens=8)
    settings = evaluation.settings_report(tiny_tokenizer, cfg)
    assert evaluate.same_generation(dict(settings), settings) == settings
    other = evaluation.settings_report(tiny_tokenizer, params.EvaluateParams(max_new_tokens=9))
    with pytest.raises(ValueError, match=r"other settings \(generation.max_new_tokens\).*evaluate_base"):
        evaluate.same_generation(other, settings)
    with pytest.raises(ValueError, match="evaluate_base"):  # a base.json from before settings were recorded
        evaluate.same_generation({}, settings)


# ---------------------------------------------------------------- one model, the whole evaluation


def test_evaluate_model_with_sampling_is_reproducible(lively_model, tiny_tokenizer):
    test = raw_rows(8)
    cfg = params.EvaluateParams(batch_size=4, num_samples=3, max_new_tokens=6, do_sample=True, temperature=1.0, seed=3)
    metrics, outputs = evaluation.evaluate_model(lively_model, tiny_tokenizer, test, cfg, 512)
    torch.manual_seed(12345)
    torch.rand(100)  # the global generator moved on: sampling must not care
    again = evaluation.evaluate_model(lively_model, tiny_tokenizer, test, cfg, 512)
    assert again == (metrics, outputs)

    assert [o["row"] for o in outputs] == evaluation.sample_indices(8, 3, 3)
    filled = test.fillna("")
    for o in outputs:
        assert set(o) == {"row", "prompt", "reference", "greedy", "stopped", "sampled"}
        assert o["reference"] == filled.loc[o["row"], "output"]
        assert o["prompt"] == prompts.user_text(filled.loc[o["row"], "instruction"], filled.loc[o["row"], "input"])
    assert set(metrics) == {"eval_loss", "perplexity", "mean_token_accuracy", "entropy", "response_tokens",
                            "rougeL_f1", "chrf", "exact_match", "generated_tokens_mean", "stopped_fraction"}
    assert any(o["sampled"] != o["greedy"] for o in outputs)

    chosen = [prompts.conversations(test)[o["row"]] for o in outputs]
    seeded = [evaluation.generate(lively_model, tiny_tokenizer, chosen, 4, 6, True, 1.0, seed) for seed in (3, 4)]
    assert [g["text"] for g in seeded[0]] == [o["sampled"] for o in outputs]
    assert seeded[0] != seeded[1]  # the seed is what makes the samples

    greedy_only = params.EvaluateParams(**{**cfg.__dict__, "do_sample": False})
    greedy_metrics, greedy_outputs = evaluation.evaluate_model(lively_model, tiny_tokenizer, test, greedy_only, 512)
    assert all("sampled" not in o for o in greedy_outputs)
    assert [o["greedy"] for o in greedy_outputs] == [o["greedy"] for o in outputs]
    assert greedy_metrics == metrics
