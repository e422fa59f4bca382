"""Pure pieces of the train stage."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import make_project, stage
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


def test_optimizer_names_are_checked_by_transformers_with_a_params_message():
    p = params.parse({"train": {"optim": "adamw_8bitt"}}, ["lr", "prepare", "train"])
    with pytest.raises(params.ParamsError) as error:
        train.checked_sft_config(p, torch.float32)
    assert str(error.value).splitlines()[1].strip() == (
        "train.optim must be one of transformers' optimizer names, got 'adamw_8bitt' (did you mean adamw_8bit?)")
    train.checked_sft_config(params.parse({}, ["lr", "prepare", "train"]), torch.float32)  # the default is valid


def test_final_evaluation_reuses_the_one_at_the_last_step():
    class Trainer:
        def __init__(self, history, step):
            self.state = type("State", (), {"log_history": history, "global_step": step})()
            self.evaluated = 0

        def evaluate(self):
            self.evaluated += 1
            return {"eval_loss": 9.0}

    at_end = Trainer([{"loss": 2.0, "step": 6}, {"eval_loss": 1.5, "step": 6}], step=6)
    assert train.final_evaluation(at_end, None)["eval_loss"] == 1.5 and at_end.evaluated == 0
    earlier = Trainer([{"eval_loss": 1.5, "step": 3}, {"loss": 2.0, "step": 6}], step=6)  # max_steps mid-epoch
    assert train.final_evaluation(earlier, None)["eval_loss"] == 9.0 and earlier.evaluated == 1


# ---------------------------------------------------------------- LoRA weights in fp32, end to end

LORA_STEPS = 4
FP32_PARAMS = {
    "prepare": {"n": 40, "max_length": 128, "too_long": "truncate"},
    "train": {"precision": "bf16", "max_steps": LORA_STEPS, "save_steps": 2, "eval_steps": 0, "batch_size": 1,
              "grad_accum": 2, "lr_scheduler": "constant", "logging_steps": 1},
    "lr": 1e-5,  # the reference lr: bf16 LoRA weights would round these updates away
}


@pytest.fixture(scope="module")
def prepared_bf16(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("bf16"), params=FP32_PARAMS, git=False)
    for name in ("ingest", "base", "prepare"):
        stage(name, project)
    return project


class Watch:
    """Trainable tensors' dtypes when training starts (after a resume has loaded its checkpoint)."""

    def __init__(self):
        from transformers import TrainerCallback

        self.dtypes_at_start: dict = {}
        watch = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                watch.dtypes_at_start = {n: w.dtype for n, w in model.named_parameters() if w.requires_grad}

        self.callback = Callback()


def trained(project, monkeypatch, keep_fp32: bool):
    """Build and fit in this process; returns (dtypes after set-up, dtypes at train start, lora_A before, after)."""
    monkeypatch.chdir(project)
    if not keep_fp32:
        monkeypatch.setattr(train, "keep_lora_weights_fp32", lambda model: None)
    p = params.load("lr", "prepare", "model", "train")
    run = train.build(p)
    after_setup = {n: w.dtype for n, w in run.trainer.model.named_parameters() if w.requires_grad}
    lora_a = {n: w.detach().float().clone() for n, w in run.trainer.model.named_parameters() if "lora_A" in n}
    watch = Watch()
    run.trainer.add_callback(watch.callback)
    _, speed = train.fit(run, p)
    moved = {n: w.detach().float() for n, w in run.trainer.model.named_parameters() if "lora_A" in n}
    return after_setup, watch.dtypes_at_start, lora_a, moved, speed


@pytest.mark.slow
@pytest.mark.parametrize("keep_fp32", [True, False], ids=["fp32", "control-bf16"])
def test_lora_weights_train_in_fp32_with_bf16_precision(prepared_bf16, tmp_path, monkeypatch, keep_fp32):
    project = tmp_path / "project"
    shutil.copytree(prepared_bf16, project)
    after_setup, at_start, before, after, _ = trained(project, monkeypatch, keep_fp32)
    assert after_setup and set(after_setup) == set(at_start)
    # Share of each lora_A tensor's entries that moved off their initial value at lr 1e-5.
    moved = {n: (after[n] != before[n]).float().mean().item() for n in before}
    if keep_fp32:
        assert set(after_setup.values()) == {torch.float32} and set(at_start.values()) == {torch.float32}
        assert min(moved.values()) > 0.9, moved
    else:  # TRL's bf16 cast: most entries of lora_A stay where they were
        assert set(after_setup.values()) == {torch.bfloat16}
        assert max(moved.values()) < 0.5, moved

    # Resume: the second half again from the checkpoint before the end; weights still fp32 when training starts.
    if keep_fp32:
        after_setup, at_start, _, _, speed = trained(project, monkeypatch, keep_fp32)
        assert speed["resumed_from_step"] == 2
        assert set(at_start.values()) == {torch.float32}
