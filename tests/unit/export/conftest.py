"""Small random models of the three families the export supports, saved as models/merged would be:
Qwen2 (the tiny default: ChatML), Llama-3 style (header tokens, <|eot_id|>, untied head, rope theta 5e5) and
Phi-3 style (fused qkv / gate_up, <|end|>). All share a small BPE trained on the embedded sample (Qwen2's
pre-tokenizer), plus each family's special tokens and chat template. (Own fixtures: issue 18's
tests/families.py had not landed.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import REPO

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def _tokenizer(specials: list[str] | None, template: str | None, eos: str | None, bos: str | None = None):
    import pandas as pd
    from tokenizers import AddedToken

    from finetune import paths, tiny

    texts = tiny.corpus_texts(pd.read_parquet(REPO / paths.EMBEDDED_SAMPLE).head(400))
    tokenizer = tiny.train_bpe_tokenizer(texts, 512)
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in specials]})
        tokenizer.chat_template, tokenizer.eos_token = template, eos
        if bos:
            tokenizer.bos_token = bos
    return tokenizer


def _save(model, tokenizer, out: Path) -> Path:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build(family: str, out: Path) -> Path:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    if family == "qwen2":
        tok = _tokenizer(None, None, None)
        config = Qwen2Config(
            vocab_size=len(tok),
            num_key_value_heads=2,
            tie_word_embeddings=True,
            **SHAPE,
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return _save(Qwen2ForCausalLM(config), tok, out)
    if family == "llama3":
        specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok = _tokenizer(specials, LLAMA3_TEMPLATE, "<|eot_id|>", bos="<|begin_of_text|>")
        config = LlamaConfig(
            vocab_size=len(tok),
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_theta=5e5,
            **SHAPE,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return _save(LlamaForCausalLM(config), tok, out)
    specials = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = _tokenizer(specials, PHI3_TEMPLATE, "<|end|>")
    config = Phi3Config(
        vocab_size=len(tok),
        num_key_value_heads=4,
        tie_word_embeddings=False,
        **SHAPE,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return _save(Phi3ForCausalLM(config), tok, out)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """family -> a merged-model directory (built on first use, once per session)."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def exported(family_dir, tmp_path_factory):
    """(family, type) -> a GGUF written by the export's converter (once per session)."""
    from finetune.export import gguf

    files: dict[tuple[str, str], Path] = {}

    def get(family: str, kind: str = "q8_0") -> Path:
        if (family, kind) not in files:
            path = tmp_path_factory.mktemp("gguf") / f"{family}-{kind}.gguf"
            gguf.write(kind, family_dir(family), path, "test-model")
            files[family, kind] = path
        return files[family, kind]

    return get
