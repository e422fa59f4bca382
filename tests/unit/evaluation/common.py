"""What the evaluation tests share: rows of the embedded sample, and a prompt's token ids."""

from __future__ import annotations

import pandas as pd
import torch

from helpers import REPO

RAW = REPO / "data" / "raw" / "finance_alpaca.parquet"


def raw_rows(n: int) -> pd.DataFrame:
    frame = pd.read_parquet(RAW).dropna(subset=["instruction", "output"])
    return frame.head(n).reset_index(drop=True).astype("string")


def prompt_ids(tokenizer, conversation: dict) -> list[int]:
    return list(
        tokenizer.apply_chat_template(conversation["prompt"], tokenize=True, add_generation_prompt=True)["input_ids"]
    )


def randomize(model, seed: int = 0):
    """Larger random layer weights: varied answers instead of the default init's echo (see lively_base)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=gen) * (0.25 if "self_attn" in name else 0.1))
    return model
