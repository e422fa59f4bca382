"""Pure pieces of the train stage."""

from __future__ import annotations

import json

from stages import params, train


def test_adapter_config_is_written_in_a_stable_order(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"target_modules": ["v_proj", "q_proj", "down_proj"], "r": 8}))
    train.sort_target_modules(path)
    first = path.read_bytes()
    assert json.loads(first)["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    path.write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "down_proj", "v_proj"]}))
    train.sort_target_modules(path)
    assert path.read_bytes() == first


def test_sft_config_maps_the_reference_hyperparameters():
    p = params.parse({"train": {"padding_free": False}}, ["lr", "prepare", "train"])  # default: test_packing.py
    config = train.sft_config(p, train.torch.float32)
    assert (config.learning_rate, config.num_train_epochs) == (1e-5, 2)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (2, 4)
    assert (config.max_length, config.optim, config.save_steps) == (512, "paged_adamw_8bit", 200)
    assert config.completion_only_loss is True
    assert not config.bf16 and not config.fp16  # fp32 on a CPU
