"""Training in this process through the train stage's recipe (finetune.training.sft: build, fit), in project copies
prepared by the stages: LoRA weights kept in fp32 under bf16 precision, and running out of memory as advice."""

from __future__ import annotations

import shutil

import pytest
import torch

from finetune import config, modeling
from finetune.training import compat, sft
from helpers import make_project, stage


# ---------------------------------------------------------------- LoRA weights in fp32, end to end

LORA_STEPS = 4
FP32_PARAMS = {
    "prepare": {"n": 40, "max_length": 128, "too_long": "truncate"},
    "train": {
        "precision": "bf16",
        "max_steps": LORA_STEPS,
        "save_steps": 2,
        "eval_steps": 0,
        "batch_size": 1,
        "grad_accum": 2,
        "lr_scheduler": "constant",
        "logging_steps": 1,
    },
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
        monkeypatch.setattr(compat, "keep_lora_weights_fp32", lambda model: None)
    p = config.load("lr", "prepare", "model", "train")
    run = sft.build(p)
    after_setup = {n: w.dtype for n, w in run.trainer.model.named_parameters() if w.requires_grad}
    lora_a = {n: w.detach().float().clone() for n, w in run.trainer.model.named_parameters() if "lora_A" in n}
    watch = Watch()
    run.trainer.add_callback(watch.callback)
    _, speed = sft.fit(run, p)
    moved = {n: w.detach().float() for n, w in run.trainer.model.named_parameters() if "lora_A" in n}
    return after_setup, watch.dtypes_at_start, lora_a, moved, speed


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


# ---------------------------------------------------------------- out of memory


def test_out_of_memory_becomes_advice(tmp_path, monkeypatch):
    from trl import SFTTrainer

    project = make_project(tmp_path, git=False)
    for name in ("ingest", "base", "prepare"):
        stage(name, cwd=project)
    monkeypatch.chdir(project)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "train", out_of_memory)
    p = config.load("lr", "prepare", "model", "train")
    run = sft.build(p)
    with pytest.raises(modeling.ModelError) as error:
        sft.fit(run, p)
    message = str(error.value)
    assert message.startswith("the GPU ran out of memory during training")
    assert "lower train.batch_size (now 2) and raise train.grad_accum (now 4)" in message
    assert "set train.gradient_checkpointing: true" in message
    assert not (project / "models/adapter").exists() and not (project / "metrics/train.json").exists()
