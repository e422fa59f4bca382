"""finetune.evaluation.generation: batched greedy generation equal to one prompt at a time (fp32 and 8-bit), every
decoding knob set from params whatever the model's generation_config, stopping at the end of a turn, and the seeded
rows sampled."""

from __future__ import annotations

import contextlib

import pytest
import torch

from finetune import chat_format, config, modeling
from finetune.errors import DataError
from finetune.evaluation import comparison, generation, suite

from .common import prompt_ids, raw_rows


def greedy_without_cache(model, tokenizer, conversation, max_new_tokens):
    """Reference: the whole sequence through the model at every step, argmax, stop at <|im_end|>."""
    end_id = tokenizer.convert_tokens_to_ids(chat_format.END_OF_TURN)
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
    batched = generation.generate(lively_model, tok, convs, batch_size=4, max_new_tokens=16)
    alone = generation.generate(lively_model, tok, convs, batch_size=1, max_new_tokens=16)
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
        batched = generation.generate(model, tiny_tokenizer, prompts_of_six_lengths, 4, 16)
    finally:
        for hook in hooks:
            hook.remove()
    assert max(largest) < layers[0].state.threshold, "test model has outliers: batching may change 8-bit tokens"
    alone = generation.generate(model, tiny_tokenizer, prompts_of_six_lengths, 1, 16)
    assert batched == alone
    assert len({r["text"] for r in batched}) == 6


def test_greedy_ignores_the_models_generation_config(qwen_configured_base, tiny_tokenizer, prompts_of_six_lengths):
    """qwen_configured_base carries Qwen2-0.5B-Instruct's sampling settings (conftest.QWEN_GENERATION)."""
    model = modeling.load_model(qwen_configured_base, "none")
    assert model.generation_config.repetition_penalty == 1.1 and model.generation_config.do_sample
    convs = prompts_of_six_lengths
    got = generation.generate(model, tiny_tokenizer, convs, batch_size=3, max_new_tokens=24)
    assert got == [greedy_without_cache(model, tiny_tokenizer, c, 24) for c in convs]

    # Negative control, the old call: do_sample=False, top_p/top_k cleared, but the model's
    # repetition_penalty still applies, and the answers change.
    tiny_tokenizer.padding_side = "left"
    try:
        old = []
        for c in convs:
            text = tiny_tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True)
            batch = tiny_tokenizer([text], return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **batch,
                max_new_tokens=24,
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
                eos_token_id=chat_format.stop_token_ids(tiny_tokenizer, model.generation_config),
            )
            old.append(out[0, batch["input_ids"].shape[1] :].tolist())
    finally:
        tiny_tokenizer.padding_side = "right"
    new = [tiny_tokenizer(r["text"])["input_ids"] for r in got]
    assert sum(o[: len(n)] != n for o, n in zip(old, new)) >= 2


@pytest.mark.parametrize("do_sample", [False, True])
def test_settings_report_is_what_generate_uses(qwen_configured_base, tiny_tokenizer, do_sample):
    """Every reported knob is the value transformers' generate() ends up with, though the model's own
    generation_config says otherwise."""
    model = modeling.load_model(qwen_configured_base, "none")
    cfg = config.EvaluateParams(max_new_tokens=9, do_sample=do_sample, temperature=0.5, seed=4)
    report = generation.settings_report(
        tiny_tokenizer, cfg, modeling.stop_token_ids(qwen_configured_base, tiny_tokenizer)
    )
    for prefix, sample in [("generation.", False)] + [("generation.sampled.", True)] * do_sample:
        asked = generation.generation_config(
            max_new_tokens=9,
            eos_token_id=chat_format.stop_token_ids(tiny_tokenizer, model.generation_config),
            pad_token_id=tiny_tokenizer.pad_token_id,
            do_sample=sample,
            temperature=0.5,
        )
        effective, _ = model._prepare_generation_config(asked)
        settings = {
            k.removeprefix(prefix): v
            for k, v in report.items()
            if k.startswith(prefix) and "." not in k.removeprefix(prefix) and k != "generation.sampled.seed"
        }
        assert settings["repetition_penalty"] == 1.0 and settings["do_sample"] is sample
        assert settings["max_new_tokens"] == 9 and settings["num_beams"] == 1
        for key, value in settings.items():
            assert getattr(effective, key) == value, key
        if sample:
            assert (effective.temperature, effective.top_k, effective.top_p) == (0.5, 0, 1.0)
    assert ("generation.sampled.seed" in report) is do_sample


@contextlib.contextmanager
def configs_seen_by_generate(model):
    """A copy of the GenerationConfig each model.generate() call receives, taken inside the call."""
    import copy

    seen, original = [], model.generate

    def spy(*args, **kwargs):
        seen.append(copy.deepcopy(kwargs["generation_config"]))
        return original(*args, **kwargs)

    model.generate = spy
    try:
        yield seen
    finally:
        del model.generate


def assert_report_is(report: dict, prefix: str, seen: list) -> None:
    """Every field of every config generate() saw that is set (differs from a fresh GenerationConfig) is in the
    report under `prefix` with the value generate() saw, and the report holds no other field."""
    from transformers import GenerationConfig

    default = GenerationConfig()
    reported = {
        k.removeprefix(prefix): v
        for k, v in report.items()
        if k.startswith(prefix) and "." not in k.removeprefix(prefix) and k != "generation.sampled.seed"
    }
    assert seen
    for passed in seen:
        fields = {k for k in vars(passed) if not k.startswith("_") and k != "transformers_version"}
        set_fields = {k for k in fields if getattr(passed, k) != getattr(default, k, None)}
        assert set(reported) - fields == set(), "reported knobs generate() was not given"
        assert set_fields <= set(reported), f"set on the config, not reported: {set_fields - set(reported)}"
        assert {k: getattr(passed, k) for k in reported} == reported


@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_report_is_the_config_passed_to_generate(lively_model, tiny_tokenizer, do_sample):
    """suite.evaluate_rows' `used` (what stages.evaluate writes to metrics/generation.json and evaluate_base to
    base.json) is the GenerationConfig model.generate() received, greedy and sampled."""
    cfg = config.EvaluateParams(
        batch_size=2, num_samples=3, max_new_tokens=5, do_sample=do_sample, temperature=0.5, seed=4
    )
    used = {}
    with configs_seen_by_generate(lively_model) as seen:
        suite.evaluate_rows(lively_model, tiny_tokenizer, raw_rows(6), cfg, 512, used=used)
    assert len(seen) == 2 * (1 + do_sample)  # 3 prompts in batches of 2, once per mode
    assert_report_is(used, "generation.", seen[:2])
    assert (used["generation.do_sample"], used["generation.max_new_tokens"], used["generation.num_beams"]) == (
        False,
        5,
        1,
    )
    if do_sample:
        assert_report_is(used, "generation.sampled.", seen[2:])
        assert (used["generation.sampled.do_sample"], used["generation.sampled.temperature"]) == (True, 0.5)
        assert used["generation.sampled.seed"] == 4
    else:
        assert not any(k.startswith("generation.sampled.") for k in used)
    # The description stages.evaluate checks base.json against before loading a model is what was measured.
    stop_ids = chat_format.stop_token_ids(tiny_tokenizer, lively_model.generation_config)
    assert generation.settings_report(tiny_tokenizer, cfg, stop_ids) == used


@pytest.mark.parametrize("do_sample", [False, True])
def test_a_report_unlike_the_config_passed_is_caught(lively_model, tiny_tokenizer, monkeypatch, do_sample):
    """Negative control: the settings change after the report was made (generate() is passed a repetition
    penalty): the described report fails assert_report_is, the measured one does not, and stages.evaluate's
    check of the measured settings against a base made with the described ones refuses."""
    cfg = config.EvaluateParams(
        batch_size=2, num_samples=3, max_new_tokens=5, do_sample=do_sample, temperature=0.5, seed=4
    )
    stop_ids = chat_format.stop_token_ids(tiny_tokenizer, lively_model.generation_config)
    described = generation.settings_report(tiny_tokenizer, cfg, stop_ids)
    original = generation.generation_settings
    monkeypatch.setattr(
        generation, "generation_settings", lambda *a, **k: {**original(*a, **k), "repetition_penalty": 1.3}
    )
    used = {}
    with configs_seen_by_generate(lively_model) as seen:
        suite.evaluate_rows(lively_model, tiny_tokenizer, raw_rows(6), cfg, 512, used=used)
    assert_report_is(used, "generation.", seen[:2])
    assert used["generation.repetition_penalty"] == 1.3
    for prefix, calls in [("generation.", seen[:2])] + [("generation.sampled.", seen[2:])] * do_sample:
        with pytest.raises(AssertionError):
            assert_report_is(described, prefix, calls)
    with pytest.raises(DataError, match="repetition_penalty"):
        comparison.same_generation(described, used, "data/eval/base.json")


@contextlib.contextmanager
def forced_replies(model, tokenizer, reply_length, filler="a"):
    """Whatever its weights, `model` answers `filler` * reply_length(prompt tokens), then <|im_end|>."""
    end_id = tokenizer.convert_tokens_to_ids(chat_format.END_OF_TURN)
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

    hooks = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.get_output_embeddings().register_forward_hook(after),
    ]
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
        results = generation.generate(tiny_model, tok, convs, batch_size, max_new)
    for k, result in zip(wanted, results):
        if k < max_new:
            assert result == {"text": "a" * k, "tokens": k, "stopped": True}
        else:
            assert result == {"text": "a" * max_new, "tokens": max_new, "stopped": False}
    assert "<|im_end|>" not in "".join(r["text"] for r in results)


def test_generation_without_end_of_turn_runs_to_max_new_tokens(tiny_model, tiny_tokenizer, prompts_of_six_lengths):
    with forced_replies(tiny_model, tiny_tokenizer, lambda n: 10**9):
        results = generation.generate(tiny_model, tiny_tokenizer, prompts_of_six_lengths, 4, 5)
    assert results == [{"text": "aaaaa", "tokens": 5, "stopped": False}] * 6


def test_sample_indices_are_seeded_sorted_and_stable():
    # Pinned: base.json and the tuned run must answer the same rows, release after release.
    assert generation.sample_indices(1000, 5, seed=0) == [394, 430, 776, 864, 911]
    assert generation.sample_indices(10, 4, seed=42) == [0, 1, 4, 9]
    assert generation.sample_indices(1000, 50, 0) == generation.sample_indices(1000, 50, 0)
    assert generation.sample_indices(1000, 50, 0) != generation.sample_indices(1000, 50, 1)
    picked = generation.sample_indices(1000, 50, 7)
    assert picked == sorted(set(picked)) and len(picked) == 50 and 0 <= picked[0] and picked[-1] < 1000
    assert generation.sample_indices(3, 50, 0) == [0, 1, 2]
    assert generation.sample_indices(3, 0, 0) == []
