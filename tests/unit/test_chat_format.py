"""finetune.chat_format: the chat template's token counts, in batches, without tokenizing rows that surely fit."""

from __future__ import annotations

import families
import pandas as pd
import pytest
from frames import frame_of
from helpers import QWEN2_TOKENIZER, requires_qwen2_tokenizer

from finetune import chat_format, modeling, tiny

TRICKY = [
    ("Define APR.", None, "APR is the yearly cost of a loan."),
    ("Quote the stop marker.", "It is <|im_end|> here.", "It reads <|im_end|>."),  # special tokens in content
    ("Translate.", "café, s'il vous plaît ÄÖÜ 株式", "Coffee, please."),
    (" Spaces around ", "  ", "\nnewlines\n"),
    ("Long.", "", "word " * 400),
]


def test_batched_lengths_are_the_chat_templates_token_counts(tiny_tokenizer, sample):
    frame = pd.concat([frame_of(*TRICKY), sample.head(300)], ignore_index=True)
    one_by_one = [chat_format.token_length(tiny_tokenizer, c) for c in chat_format.conversations(frame)]
    assert chat_format.token_lengths(tiny_tokenizer, frame, batch_size=64).tolist() == one_by_one
    # With a limit: exact above it, any bound at or below it for rows that surely fit.
    limit = 256  # the tests' max_length; a byte-level token is >= 1 byte, so rows of <= 256 bytes surely fit
    bounded = chat_format.token_lengths(tiny_tokenizer, frame, fits=limit).tolist()
    assert [b == n if n > limit else b <= limit for b, n in zip(bounded, one_by_one)] == [True] * len(frame)
    assert sum(b != n for b, n in zip(bounded, one_by_one)) > len(frame) // 10  # those were not tokenized


def test_lengths_ignore_the_padding_a_padded_call_left_behind(tiny_tokenizer, sample):
    frame = sample.head(8)
    one_by_one = [chat_format.token_length(tiny_tokenizer, c) for c in chat_format.conversations(frame)]
    tiny_tokenizer(["a", "a much longer text " * 20], padding="longest", truncation=True, max_length=16)
    assert tiny_tokenizer.backend_tokenizer.padding is not None  # what transformers leaves set: the control
    assert chat_format.token_lengths(tiny_tokenizer, frame).tolist() == one_by_one
    assert len(set(one_by_one)) > 1


def test_only_byte_level_bpe_gets_the_byte_bound(tiny_tokenizer):
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    assert chat_format._one_byte_per_token(tiny_tokenizer)
    word_piece = Tokenizer(models.WordPiece({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word_piece.pre_tokenizer = pre_tokenizers.Whitespace()  # one [UNK] can stand for many bytes, or none
    byte_bpe = Tokenizer(models.BPE())
    byte_bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    byte_bpe.normalizer = normalizers.Replace("a", "aaa")  # lengthens ASCII: tokens may exceed bytes
    for backend in (word_piece, byte_bpe):
        assert not chat_format._one_byte_per_token(SimpleNamespace(backend_tokenizer=backend))


@requires_qwen2_tokenizer
def test_batched_lengths_with_the_real_qwen2_tokenizer():
    tokenizer = tiny.qwen2_tokenizer_from_files(QWEN2_TOKENIZER)
    assert chat_format._one_byte_per_token(tokenizer)
    frame = frame_of(*TRICKY)
    assert chat_format.token_lengths(tokenizer, frame).tolist() == [
        chat_format.token_length(tokenizer, c) for c in chat_format.conversations(frame)
    ]


def test_a_template_that_changes_the_content_is_rendered_row_by_row(tiny_base, tiny_tokenizer):
    """Negative control for the rendered-once template: one that trims the content is detected."""
    trimming = modeling.load_tokenizer(tiny_base)
    trimming.chat_template = chat_format.CHATML_TEMPLATE.replace("message['content']", "message['content'] | trim")
    assert chat_format.template_parts(tiny_tokenizer) is not None
    assert chat_format.template_parts(trimming) is None
    frame = frame_of(*TRICKY)
    assert chat_format.token_lengths(trimming, frame).tolist() == [
        chat_format.token_length(trimming, c) for c in chat_format.conversations(frame)
    ]
    assert (
        chat_format.token_lengths(trimming, frame).tolist() != chat_format.token_lengths(tiny_tokenizer, frame).tolist()
    )


def test_token_lengths_count_the_chat_template(tiny_tokenizer):
    frame = pd.DataFrame(
        {
            "instruction": ["What is a bond?", "Define equity."],
            "input": ["", "in finance"],
            "output": ["A loan to an issuer.", "Ownership."],
        }
    )
    lengths = chat_format.token_lengths(tiny_tokenizer, frame).tolist()  # what the report plots
    expected, plain = [], []
    for c in chat_format.conversations(frame):
        text = tiny_tokenizer.apply_chat_template(c["prompt"] + c["completion"], tokenize=False)
        expected.append(len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]))
        plain.append(len(tiny_tokenizer(c["prompt"][0]["content"] + c["completion"][0]["content"])["input_ids"]))
    assert lengths == expected
    assert all(a > b for a, b in zip(lengths, plain))  # the template's turns are counted


# ---------------------------------------------------------------- end of turn, from the model


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_stop_ids_are_the_familys_end_of_turn_then_eos(family_dir, name):
    family = families.FAMILIES[name]
    directory = family_dir(name)
    tokenizer = modeling.load_tokenizer(directory)
    ids = chat_format.stop_token_ids(tokenizer, modeling.generation_config(directory))
    assert tokenizer.convert_ids_to_tokens(ids) == list(family.stop_tokens)
    assert chat_format.end_of_turn(tokenizer)[0] == tokenizer.convert_tokens_to_ids(family.end_of_turn)
    # control: the ChatML literals the old lookup used are no tokens of the other families' vocabularies
    chatml_ids = [tokenizer.convert_tokens_to_ids(t) for t in chat_format.CHATML_MARKERS]
    assert (None not in chatml_ids) is (family is families.QWEN2)


def test_stop_ids_take_every_generation_config_id_once():
    from types import SimpleNamespace

    from transformers import GenerationConfig

    tokenizer = tiny.train_bpe_tokenizer(["a b c"], 300)
    end, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert chat_format.stop_token_ids(tokenizer) == [end]  # eos is the end of turn here
    assert chat_format.stop_token_ids(tokenizer, GenerationConfig(eos_token_id=pad)) == [end, pad]
    assert chat_format.stop_token_ids(tokenizer, SimpleNamespace(eos_token_id=[pad, end, 7])) == [end, pad, 7]


def test_a_turn_ending_in_plain_text_has_no_end_of_turn_token():
    tokenizer = tiny.train_bpe_tokenizer(["a b c"], 300)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
    tokenizer.eos_token = "<|endoftext|>"
    assert chat_format.end_of_turn(tokenizer) == (None, "\n\n")
    assert tokenizer.convert_ids_to_tokens(chat_format.stop_token_ids(tokenizer)) == ["<|endoftext|>"]
