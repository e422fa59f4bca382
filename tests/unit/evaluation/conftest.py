"""Models for the evaluation tests: the tiny base as it is, and with larger random weights (varied answers)."""

from __future__ import annotations

import pytest

from finetune import chat_format, config, modeling, tiny

from .common import prompt_ids, randomize, raw_rows


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


@pytest.fixture(scope="module")
def lively_base_64(tiny_tokenizer, tmp_path_factory):
    """Like lively_base, 64 wide: bitsandbytes' 4-bit blocks need it."""
    cfg = config.TinyModelParams(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1)
    out = tmp_path_factory.mktemp("lively_base_64")
    randomize(tiny.build_model(cfg, tiny_tokenizer)).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lively_model(lively_base):
    return modeling.load_model(lively_base, "none")


@pytest.fixture(scope="module")
def prompts_of_six_lengths(tiny_tokenizer):
    conversations = chat_format.conversations(raw_rows(40))
    by_length = {len(prompt_ids(tiny_tokenizer, c)): c for c in conversations}
    lengths = sorted(by_length)
    picked = [by_length[lengths[i * (len(lengths) - 1) // 5]] for i in range(6)]  # shortest .. longest
    # Interleaved so every batch of 4 mixes lengths (left padding differs row by row).
    return [picked[i] for i in (0, 5, 2, 3, 1, 4)]


# Qwen2-0.5B-Instruct's generation_config.json: sampling settings a greedy evaluation must not inherit.
QWEN_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}


@pytest.fixture(scope="module")
def qwen_configured_base(lively_base, tmp_path_factory):
    """lively_base with Qwen2-0.5B-Instruct's generation_config.json, as a local model directory."""
    from transformers import GenerationConfig

    out = tmp_path_factory.mktemp("qwen_configured")
    model = modeling.load_model(lively_base, "none")
    model.generation_config = GenerationConfig(
        **QWEN_GENERATION,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.pad_token_id,
    )
    model.save_pretrained(out)
    modeling.load_tokenizer(lively_base).save_pretrained(out)
    return out
