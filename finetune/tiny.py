"""The embedded default base: a small random Qwen2 and a byte-level BPE tokenizer trained on the sample,
built offline from params (model.tiny), with Qwen2-Instruct's ChatML conventions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import torch

from finetune import chat_format
from finetune.errors import ModelError


def corpus_texts(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in ("instruction", "input", "output") if c in frame.columns]
    return [str(v) for c in columns for v in frame[c].dropna().tolist()]


def build(cfg, corpus_path: str, local_dir: str | os.PathLike | None = None):
    """(model, tokenizer) of model.tiny: the tokenizer trained on `corpus_path` ('bpe') or read from `local_dir`
    (model.local_dir, with tokenizer 'local')."""
    if cfg.tokenizer == "bpe":
        tokenizer = train_bpe_tokenizer(corpus_texts(pd.read_parquet(corpus_path)), cfg.vocab_size)
    else:
        tokenizer = qwen2_tokenizer_from_files(local_dir)
    return build_model(cfg, tokenizer), tokenizer


def _finish_tokenizer(tokenizer):
    """Qwen2-Instruct conventions: ChatML template, <|im_end|> ends a turn, <|endoftext|> pads."""
    from tokenizers import AddedToken

    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in chat_format.SPECIAL_TOKENS[1:]]}
    )
    tokenizer.eos_token = chat_format.END_OF_TURN
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = chat_format.CHATML_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def train_bpe_tokenizer(texts, vocab_size: int):
    """Byte-level BPE with Qwen2's pre-tokenizer, trained on `texts`: a small Qwen2-style vocabulary."""
    from transformers import Qwen2Tokenizer

    model = json.loads(train_bpe(texts, vocab_size, chat_format.SPECIAL_TOKENS).to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return _finish_tokenizer(Qwen2Tokenizer(vocab=model["vocab"], merges=merges))


def train_bpe(texts, vocab_size: int, special_tokens):
    """A tokenizers.Tokenizer: byte-level BPE with Qwen2's pre-tokenizer, trained on `texts`, `special_tokens` first."""
    from tokenizers import (
        Regex,
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return bpe


def qwen2_tokenizer_from_files(directory: str | os.PathLike):
    """The real Qwen2 vocabulary from vocab.json + merges.txt (no hub needed)."""
    from transformers import Qwen2Tokenizer

    directory = Path(directory)
    missing = [n for n in ("vocab.json", "merges.txt") if not (directory / n).is_file()]
    if missing:
        raise ModelError(f"model.local_dir: {directory} lacks {', '.join(missing)} (model.tiny.tokenizer is 'local')")
    return _finish_tokenizer(Qwen2Tokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt")))


def build_model(cfg, tokenizer):
    """A random Qwen2ForCausalLM sized by params (model.tiny), reproducible from its seed."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model
