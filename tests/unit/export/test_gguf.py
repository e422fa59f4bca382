"""The export's GGUF checks: files of the three families pass them and hold the model (logits of the
dequantized weights, read back independently), and each broken file (a tensor swapped, missing or mis-shaped,
a wrong head count, rope theta or pre-tokenizer) fails them with a message naming what is wrong."""

from __future__ import annotations

import shutil
import types

import numpy as np
import pytest
import torch

from finetune import chat_format
from finetune.errors import ModelError
from finetune.export import gguf
from gguf_faults import swap_two_layers

FAMILIES = ["qwen2", "llama3", "phi3"]


def _load(model_dir):
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stops = chat_format.stop_token_ids(tokenizer, GenerationConfig.from_pretrained(model_dir))
    return AutoConfig.from_pretrained(model_dir), tokenizer, stops, AutoModelForCausalLM.from_pretrained(model_dir)


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["q8_0", "f16"])
def test_a_file_passes_and_holds_the_model(family, kind, family_dir, exported):
    model_dir, path = family_dir(family), exported(family, kind)
    config, tokenizer, stops, merged = _load(model_dir)
    _, model = gguf.check_file(path, config, tokenizer, model_dir, stops)
    # read back here, not through the code under test: every merged tensor is in the file, as its type
    import gguf as gguf_py

    reader = gguf_py.GGUFReader(path)
    types_seen = {t.tensor_type.name for t in reader.tensors}
    assert types_seen == {kind.upper(), "F32"}
    n_hf = len(merged.state_dict()) - (1 if config.tie_word_embeddings else 0)
    assert len(reader.tensors) == n_hf
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    # the dequantized weights compute what the merged model computes, up to the type's rounding
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is a bond?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    want, got = _logits(merged, ids), _logits(model, ids)
    diff = (got - want).abs().max().item()
    assert diff < {"f16": 1e-3, "q8_0": 3e-2}[kind] * (want.max() - want.min()).item()
    assert diff > 0  # a rounded copy, not the merged model itself


def _copy(path, tmp_path):
    target = tmp_path / path.name
    shutil.copy(path, target)
    return target


def _set_field(path, key, value):
    import gguf as gguf_py

    reader = gguf_py.GGUFReader(path, "r+")
    part = reader.fields[key].parts[-1]
    if isinstance(value, str):
        assert len(value.encode()) == len(part), "same length: the file is edited in place"
        part[:] = np.frombuffer(value.encode(), dtype=np.uint8)
    else:
        part[0] = value
    reader.data.flush()


def _check(path, model_dir):
    config, tokenizer, stops, _ = _load(model_dir)
    return gguf.check_file(path, config, tokenizer, model_dir, stops)


@pytest.mark.parametrize(
    ("family", "key", "value", "message"),
    [
        ("qwen2", "qwen2.attention.head_count", 8, "qwen2.attention.head_count is 8, expected 4"),
        ("llama3", "llama.attention.head_count_kv", 4, "llama.attention.head_count_kv is 4, expected 2"),
        ("llama3", "llama.rope.freq_base", 10000.0, "llama.rope.freq_base is 10000.0, expected 500000.0"),
        ("qwen2", "tokenizer.ggml.pre", "llama", "tokenizer.ggml.pre is 'llama', expected 'qwen2'"),
        ("phi3", "tokenizer.ggml.eos_token_id", 3, "tokenizer.ggml.eos_token_id is 3, expected 0"),
    ],
)
def test_wrong_metadata_fails(family, key, value, message, family_dir, exported, tmp_path):
    path = _copy(exported(family), tmp_path)
    _check(path, family_dir(family))  # the unedited copy passes
    _set_field(path, key, value)
    with pytest.raises(ModelError, match="metadata does not match") as error:
        _check(path, family_dir(family))
    assert message in str(error.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_layers_swapped_fails(family, family_dir, exported, tmp_path):
    path = _copy(exported(family), tmp_path)
    swap_two_layers(path)
    with pytest.raises(ModelError, match=r"layers\.0\.self_attn\.o_proj\.weight \(Q8_0\) differs"):
        _check(path, family_dir(family))


def _without(path, model_dir, edit):
    """check_tensors on the file as read, with its tensor list edited (a file missing or mis-shaping one)."""
    from transformers import AutoConfig

    reader = gguf.read(path)
    edited = types.SimpleNamespace(fields=reader.fields, tensors=edit(list(reader.tensors)))
    return gguf.check_tensors(edited, path.name, AutoConfig.from_pretrained(model_dir), model_dir)


def test_a_missing_tensor_fails(family_dir, exported):
    model_dir, path = family_dir("llama3"), exported("llama3")
    _without(path, model_dir, lambda ts: ts)  # the control: the whole list passes
    with pytest.raises(ModelError, match=r"missing from the file: model\.layers\.1\.mlp\.down_proj\.weight"):
        _without(path, model_dir, lambda ts: [t for t in ts if t.name != "blk.1.ffn_down.weight"])


def test_a_mis_shaped_tensor_fails(family_dir, exported):
    model_dir, path = family_dir("qwen2"), exported("qwen2")

    def cut(ts):
        return [t._replace(data=t.data[:-1]) if t.name == "blk.0.attn_norm.weight" else t for t in ts]

    with pytest.raises(
        ModelError, match=r"model\.layers\.0\.input_layernorm\.weight has shape \(63,\), expected \(64,\)"
    ):
        _without(path, model_dir, cut)


def test_an_unknown_tensor_fails(family_dir, exported):
    model_dir, path = family_dir("phi3"), exported("phi3")

    def rename(ts):
        return [t._replace(name="blk.9.attn_qkv.weight") if t.name == "blk.1.attn_qkv.weight" else t for t in ts]

    with pytest.raises(ModelError, match=r"no HF counterpart: blk\.9\.attn_qkv\.weight"):
        _without(path, model_dir, rename)


def test_the_q8_0_bound_is_tight_and_holds():
    """The derived bound (d/2 + 127|d - fp16(d)| per block of 32) holds for gguf-py's quantizer and is nearly
    reached; an error twice as large (a wrong scale) breaks it."""
    import gguf as gguf_py

    x = np.random.default_rng(0).normal(0, 0.05, (64, 256)).astype(np.float32)
    q = gguf_py.quants.quantize(x, gguf_py.GGMLQuantizationType.Q8_0)
    back = gguf_py.quants.dequantize(q, gguf_py.GGMLQuantizationType.Q8_0)
    ratio = gguf._ratio("Q8_0", x, np.abs(back - x))
    assert 0.9 < ratio <= 1
    assert gguf._ratio("Q8_0", x, 2.2 * np.abs(back - x)) > 1
