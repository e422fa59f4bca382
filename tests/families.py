"""Small random local model directories of three chat-model families, shared by unit and integration tests.

Each is what a user brings as `model.base`: config, weights, generation_config and a tokenizer with the family's
own chat template, special tokens and end of turn. The vocabulary is a byte-level BPE trained on the embedded
sample (finetune.tiny.train_bpe) plus the family's special tokens only, so a ChatML marker is no token of a
Llama-3 or Phi-3 vocabulary, as in the real ones.

- qwen2: Qwen2ForCausalLM, ChatML (<|im_start|>role\\n...<|im_end|>\\n), the tiny default's conventions.
- llama3: LlamaForCausalLM, <|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>; eos <|eot_id|>, no pad token,
  generation_config eos [<|eot_id|>, <|end_of_text|>] (Llama-3.2-Instruct's).
- phi3: Phi3ForCausalLM (fused qkv_proj and gate_up_proj), <|user|>\\n...<|end|>\\n<|assistant|>\\n...<|end|>\\n;
  eos <|endoftext|>, generation_config eos [<|endoftext|>, <|end|>].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers import REPO

from benchmarks import check_real

# The families' chat templates, one copy each, shared with make check-real's ~0.5B models.
LLAMA3_TEMPLATE, PHI3_TEMPLATE = check_real.LLAMA_TEMPLATE, check_real.PHI3_TEMPLATE
SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
VOCAB = 1024


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    specials: tuple[str, ...]  # the family's special tokens (the first ids of its vocabulary)
    end_of_turn: str  # the token that closes an assistant turn in its template
    stop_tokens: tuple[str, ...]  # what stop_token_ids must give: end of turn, eos, generation_config's
    linear_layers: tuple[str, ...]  # leaf names of the linear layers in each block


QWEN2 = Family(
    "qwen2",
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "<|im_end|>",
    ("<|im_end|>", "<|endoftext|>"),
    ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"),
)
LLAMA3 = Family(
    "llama3",
    ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "<|eot_id|>",
    ("<|eot_id|>", "<|end_of_text|>"),
    ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"),
)
PHI3 = Family(
    "phi3",
    ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "<|end|>",
    ("<|end|>", "<|endoftext|>"),
    ("down_proj", "gate_up_proj", "o_proj", "qkv_proj"),
)
FAMILIES = {f.name: f for f in (QWEN2, LLAMA3, PHI3)}


def _corpus() -> list[str]:
    import pandas as pd

    from finetune import paths, tiny

    return tiny.corpus_texts(pd.read_parquet(REPO / paths.EMBEDDED_SAMPLE))


def tokenizer(family: Family):
    """The family's tokenizer: its special tokens, chat template, eos and pad as its real models ship them."""
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    from finetune import tiny

    if family is QWEN2:
        return tiny.train_bpe_tokenizer(_corpus(), VOCAB)
    bpe = tiny.train_bpe(_corpus(), VOCAB, family.specials)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    tok.add_special_tokens({"additional_special_tokens": list(family.specials)})
    if family is LLAMA3:
        tok.bos_token, tok.eos_token, tok.chat_template = "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE
    else:
        tok.eos_token = tok.pad_token = "<|endoftext|>"
        tok.chat_template = PHI3_TEMPLATE
    return tok


def build(family: Family, out: Path, seed: int = 0) -> Path:
    """A random model of the family with its tokenizer and generation_config, saved in `out` (a local model dir)."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
    )

    from finetune import config, tiny

    tok = tokenizer(family)
    ids = tok.convert_tokens_to_ids
    torch.manual_seed(seed)
    if family is QWEN2:
        cfg = config.TinyModelParams(
            hidden_size=SIZE["hidden_size"],
            intermediate_size=SIZE["intermediate_size"],
            num_layers=SIZE["num_hidden_layers"],
            num_heads=SIZE["num_attention_heads"],
            num_kv_heads=SIZE["num_key_value_heads"],
            seed=seed,
        )
        model = tiny.build_model(cfg, tok)
    elif family is LLAMA3:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                tie_word_embeddings=True,
                rope_theta=5e5,  # Llama-3's, unlike the transformers default: the GGUF check reads it
                bos_token_id=ids("<|begin_of_text|>"),
                eos_token_id=[ids("<|eot_id|>"), ids("<|end_of_text|>")],
                max_position_embeddings=2048,
                **SIZE,
            )
        )
        model.generation_config = GenerationConfig(
            bos_token_id=ids("<|begin_of_text|>"),
            eos_token_id=[ids("<|eot_id|>"), ids("<|end_of_text|>")],
            do_sample=True,
            temperature=0.6,
            top_p=0.9,
        )
    else:
        model = Phi3ForCausalLM(
            Phi3Config(
                vocab_size=len(tok),
                tie_word_embeddings=False,
                bos_token_id=None,
                eos_token_id=ids("<|endoftext|>"),
                pad_token_id=ids("<|endoftext|>"),
                max_position_embeddings=2048,
                original_max_position_embeddings=2048,
                **SIZE,
            )
        )
        model.generation_config = GenerationConfig(
            eos_token_id=[ids("<|endoftext|>"), ids("<|end|>")], pad_token_id=ids("<|endoftext|>")
        )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def expected_stop_ids(family: Family, tok) -> list[int]:
    return tok.convert_tokens_to_ids(list(family.stop_tokens))
