"""finetune.tiny: the embedded default base's tokenizer follows Qwen2's conventions; the real Qwen2 vocabulary
from files; the tiny model's size rules."""

from __future__ import annotations

import pytest

from finetune import chat_format, config, tiny
from finetune.errors import ModelError, ParamsError
from helpers import QWEN2_TOKENIZER, requires_qwen2_tokenizer

CHAT = [{"role": "user", "content": "What is a bond?"}, {"role": "assistant", "content": "A loan."}]


def test_tiny_tokenizer_follows_qwen2_conventions(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for special in chat_format.SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(special) is not None
        assert tok.encode(special, add_special_tokens=False) == [tok.convert_tokens_to_ids(special)]
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is a bond?<|im_end|>\n<|im_start|>assistant\nA loan.<|im_end|>\n"
    )
    ids = tok("Interest of $1,234.56 at 5%")["input_ids"]
    assert tok.decode(ids) == "Interest of $1,234.56 at 5%"


@requires_qwen2_tokenizer
def test_real_qwen2_vocabulary_from_files():
    tok = tiny.qwen2_tokenizer_from_files(QWEN2_TOKENIZER)
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.apply_chat_template(CHAT, tokenize=False).startswith("<|im_start|>system\n")


def test_missing_vocabulary_files_are_named(tmp_path):
    with pytest.raises(ModelError, match="lacks vocab.json, merges.txt"):
        tiny.qwen2_tokenizer_from_files(tmp_path)


def test_4bit_tiny_model_must_be_wide_enough():
    with pytest.raises(
        ParamsError,
        match="model.quantization 4bit needs model.tiny.hidden_size and "
        "intermediate_size >= 64 .the bitsandbytes block size., got 32",
    ):
        config.parse({"model": {"quantization": "4bit", "tiny": {"hidden_size": 32}}}, ["model"])
    config.parse({"model": {"quantization": "4bit"}}, ["model"])  # the default tiny model is wide enough
