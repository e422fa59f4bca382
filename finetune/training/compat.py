"""Every workaround of a pinned library's behaviour, in one place: trl 1.16.0, peft 0.21.2, transformers 5.24.0.

Delete each one when its library fixes it.
"""

from __future__ import annotations

import json
from pathlib import Path


def step_aligned_dvclive():
    """transformers' DVCLiveCallback, with the x axis at the trainer's global step, not the log count, and
    without the timings (runtime, per-second rates): the committed curves change only when training does."""
    from transformers.integrations import DVCLiveCallback

    class StepAlignedDVCLiveCallback(DVCLiveCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.live is not None:
                self.live.step = state.global_step
            logs = {k: v for k, v in (logs or {}).items() if "runtime" not in k and "per_second" not in k}
            super().on_log(args, state, control, logs=logs, **kwargs)

    return StepAlignedDVCLiveCallback


def labelled_logits_only(enabled: bool) -> None:
    """TRL's fused output layer scores only the positions that have a label (response tokens, not prompt or
    padding) on GPUs, but every position elsewhere (fixed shapes for XLA/Neuron compilers), which on a CPU
    is work thrown away. enabled: CPUs score only labelled positions too; same loss and gradients.
    Process-wide (TRL decides per call): sft_config sets it for the run it configures."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils

    stock = chunked_logprob._use_triton
    if hasattr(utils, "_use_triton"):  # a TRL without it: stock behaviour, tests/unit/training/test_packing.py says so
        utils._use_triton = (lambda device: device.type == "cpu" or stock(device)) if enabled else stock


def keep_lora_weights_fp32(model) -> None:
    """Undo TRL's cast of a quantized model's trainable weights to bf16 (its QLoRA recipe).

    In bf16 a weight of magnitude 0.03 moves in steps of ~1e-4, so Adam updates of ~1e-5 (the
    reference lr) round away. fp32 master weights cost 2 bytes more per LoRA parameter; under bf16
    autocast the matmuls still run in bf16. On resume peft loads the checkpoint into these fp32
    tensors (its load_adapter upcasts, never downcasts).
    """
    for weight in model.parameters():
        if weight.requires_grad:
            weight.data = weight.data.float()


def keep_token_count(trainer) -> None:
    """TRL keeps its running `num_tokens` in a private counter that checkpoints do not save and a resume resets
    to 0: carry it in the trainer state's num_input_tokens_seen, which every checkpoint saves and a resume
    restores (transformers' own counting of it stays off: include_num_input_tokens_seen "no")."""
    from transformers import TrainerCallback

    class CarryTokenCount(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            trainer._total_train_tokens = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):  # before the step's checkpoint is saved
            state.num_input_tokens_seen = trainer._total_train_tokens

    trainer.add_callback(CarryTokenCount())


def sort_target_modules(config_path: Path) -> None:
    """peft writes target_modules from a set, in a per-process order: sort it, so the same
    weights give the same bytes and DVC does not rerun evaluate and merge for nothing."""
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
