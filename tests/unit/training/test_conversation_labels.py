"""Conversations train on every assistant turn and nothing else: the labels in the batches the train stage's
trainer makes (sft.dataset, sft.sft_config, TRL's preparation and collator), padding-free and padded."""

from __future__ import annotations

import itertools
import json

import frames
import pandas as pd
import pytest
import torch

from finetune import config, modeling
from finetune.training import sft

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is APR?"},
    {"role": "assistant", "content": "A yearly rate."},
    {"role": "user", "content": "And APY?"},
    {"role": "assistant", "content": "Compounded."},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You are welcome."},
]


def trainer_batch(tiny_base, out_dir, rows, padding_free=True, **train_params):
    from trl import SFTTrainer

    raw = {
        "train": {
            "eval_steps": 0,
            "batch_size": len(rows),
            "grad_accum": 1,
            "speed": {"padding_free": padding_free},
            **train_params,
        },
        "model": {"quantization": "none"},
    }
    p = config.parse(raw, ["lr", "prepare", "model", "train"])
    args = sft.sft_config(p, torch.float32)
    args.output_dir, args.eval_strategy = str(out_dir), "no"
    tokenizer = modeling.load_tokenizer(tiny_base)
    frame = pd.DataFrame({"messages": [json.dumps(r) for r in rows]}, dtype="string")
    model = modeling.load_model(tiny_base, "none", torch.float32)
    targets = modeling.lora_targets(model, p.train.lora.target_modules)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft.dataset(frame, tokenizer, p.train.completion_only_loss),
        processing_class=tokenizer,
        peft_config=sft.lora_config(p.train, targets),
    )
    return next(iter(trainer.get_train_dataloader())), tokenizer


def labelled(batch) -> list[list[int]]:
    """Per example, 1 where a label is set; padding-free batches split at each position 0."""
    labels, positions = batch["labels"], batch.get("position_ids")
    if positions is None:
        return [(row[mask.bool()] != -100).int().tolist() for row, mask in zip(labels, batch["attention_mask"])]
    starts = (positions[0] == 0).nonzero().flatten().tolist() + [labels.shape[1]]
    return [(labels[0, a:b] != -100).int().tolist() for a, b in itertools.pairwise(starts)]


@pytest.mark.parametrize("padding_free", [True, False], ids=["padding-free", "padded"])
def test_every_assistant_turn_and_nothing_else_carries_labels(tiny_base, tmp_path, padding_free):
    rows = [CHAT, CHAT[:3]]
    batch, tokenizer = trainer_batch(tiny_base, tmp_path, rows, padding_free=padding_free)
    expected = [frames.chatml_assistant_mask(tokenizer, r) for r in rows]
    got = labelled(batch)
    assert sorted(got, key=len) == sorted(expected, key=len)  # the sampler may reorder rows
    assert sum(expected[0]) > 3 * 3  # three turns' text and ends
    # negative control: the right mask shifted by one token is not what the trainer labels
    for mask in expected:
        shifted = [0] + mask[:-1]
        assert shifted not in got
        assert [*mask[1:], 0] not in got


def test_without_completion_only_loss_every_token_is_labelled(tiny_base, tmp_path):
    batch, tokenizer = trainer_batch(tiny_base, tmp_path, [CHAT], completion_only_loss=False)
    (got,) = labelled(batch)
    # padding-free: the collator unlabels each example's first token (nothing before it predicts it)
    assert got == [0] + [1] * (len(frames.chatml_assistant_mask(tokenizer, CHAT)) - 1)
