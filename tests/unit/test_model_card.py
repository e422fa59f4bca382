"""finetune.model_card: the license a derivative inherits, the hyperparameters shown, the same card for the same run
(tests/integration/test_merge_stage.py reads the card the stage writes)."""

from __future__ import annotations

import re

from finetune import config, model_card

MERGE_METRICS = {
    "max_abs_logit_diff": 1e-7,
    "tolerance": 1e-3,
    "adapter_max_abs_logit_diff": 0.5,
    "merged.rows": 3,
    "merged.eval_loss": 1.25,
}


def test_base_license_is_inherited(tmp_path):
    assert model_card.base_license(str(tmp_path)) == "unknown"
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Qwen2\n")
    assert model_card.base_license(str(tmp_path)) == "apache-2.0"


def test_hyperparameters_are_the_weight_shaping_keys_flattened_in_order():
    p = config.parse({"lr": 2e-5, "train": {"lora": {"r": 4}}}, ["lr", "data", "prepare", "model", "train"])
    keys = ["model.base", "lr", "train.epochs", "train.lora", "data.path", "prepare.max_length", "model.quantization"]
    shown = model_card.hyperparameters(p, keys)
    assert list(shown)[:3] == ["lr", "train.epochs", "train.lora.r"]
    assert shown["lr"] == 2e-5 and shown["train.lora.r"] == 4
    assert list(shown)[-2:] == ["prepare.max_length", "model.quantization"]
    assert not {"model.base", "data.path"} & set(shown)  # the card names those elsewhere


def test_render_is_the_same_bytes_for_the_same_run():
    def card(tuned_loss):
        return model_card.render(
            base="tiny",
            revision=None,
            license="unknown",
            export_dtype="float32",
            data_path="data/raw/finance_alpaca.parquet",
            data_counts={"test": 3},
            hyperparameters={"lr": 1e-5},
            evaluation_metrics={"tuned.eval_loss": tuned_loss},
            merge_metrics=MERGE_METRICS,
            template="the tiny default's ChatML chat template",
            example="<|im_start|>user\nWhat is a bond?<|im_end|>\n",
            stop_tokens=["<|im_end|>"],
        )

    assert card(1.5) == card(1.5)
    assert card(1.5) != card(1.25)  # control: an input shows
    assert re.search(r"^\| eval_loss \| - \| 1.5000 \| 1.2500 \|$", card(1.5), re.M)
    assert "python -m finetune.chat" in card(1.5) and "| `lr` | 1e-05 |" in card(1.5)
