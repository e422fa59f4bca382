"""train: LoRA on a quantized base with TRL's SFTTrainer -> models/adapter, metrics/train.json.

The recipe, in main():
1. build: the training settings (checked before anything is touched), the checkpoint to resume
   from (only one of a run with the same fingerprint: params, data, base and code; any other run's
   are cleared), the tokenizer, the quantized base and an SFTTrainer with a LoRA config. LoRA
   weights are kept in fp32 on every device: the base stays quantized and, on GPUs, compute runs
   in bf16 under autocast, but bf16 weights would round away updates of the reference lr.
2. fit: trainer.train(), resuming where a killed run left off; the in-training evaluation runs on
   the validation split, and its last result is reused when it covered the final step.
3. save: the adapter (and tokenizer) atomically; metrics/train.json holds what the run learned
   (losses, steps, tokens: the same bytes when rerun), metrics/train_speed.json how fast it went.

With train.num_processes > 1, main() first starts itself again under `accelerate launch`
(stages/distributed.py); only the main process clears checkpoints, logs and writes outputs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import resource
import time
from pathlib import Path

import pandas as pd
import torch

from stages import checkpoints, distributed, errors, io, modeling, params, prompts

BASE_DIR = "models/base"
TRAIN_DATA = "data/processed/train.parquet"
VAL_DATA = "data/processed/val.parquet"
CHECKPOINT_DIR = "models/checkpoints"  # not a DVC output: kept across runs, cleared by run_id when inputs change
ADAPTER_OUT = "models/adapter"
LIVE_DIR = "metrics/train_live"  # dvclive's per-step logs, drawn by `dvc plots show`
METRICS_OUT = "metrics/train.json"
SPEED_OUT = "metrics/train_speed.json"  # seconds, tokens/s, memory: differ run to run, kept apart
STAGE = "train"  # run_id covers this dvc.yaml stage's deps and params: one list of train's inputs


def dataset(frame: pd.DataFrame):
    from datasets import Dataset

    return Dataset.from_list(prompts.conversations(frame))


def padding_free(p: params.Params) -> bool:
    """Whether micro-batches are padding-free: one row of examples end to end, with position ids that restart
    at 0 for each, from which transformers builds a block-diagonal causal mask (sdpa, eager) or varlen
    flash-attention calls, so no example attends to another. TRL refuses padding_free with a max_length
    unless it packs (it would not cut rows to it), so rows that prepare.too_long: truncate leaves longer than
    max_length for the trainer to cut keep batches padded; with drop, prepare has removed every longer row."""
    if p.train.padding_free and p.prepare.too_long != "drop":
        print(f"train: prepare.too_long: {p.prepare.too_long} leaves examples for the trainer to cut to "
              f"prepare.max_length, which TRL does not do in padding-free batches: train.padding_free does not apply")
        return False
    return p.train.padding_free


def liger_kernel(setting, on_gpu: bool) -> bool:
    """auto: Liger's Triton kernels where they can run (a CUDA GPU, package liger-kernel installed)."""
    available = on_gpu and importlib.util.find_spec("liger_kernel") is not None
    if setting is True and not available:
        raise params.error("train.use_liger_kernel: true needs a CUDA GPU and the liger-kernel package "
                           "(pip install liger-kernel); set it to auto or false")
    return available if setting == "auto" else setting


def sft_config(p: params.Params, dtype: torch.dtype):
    """The reference hyperparameters, mapped onto TRL's SFTConfig, with the speed switches of params.yaml."""
    from trl import SFTConfig

    t = p.train
    on_gpu = torch.cuda.is_available()
    batch_size, grad_accum = distributed.per_process_batch(t)
    free = padding_free(p)
    return SFTConfig(
        output_dir=CHECKPOINT_DIR,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=p.lr,
        optim=t.optim,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5 reads a float below 1 as a share of the steps
        lr_scheduler_type=t.lr_scheduler,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        # Padded: TRL cuts to max_length. Padding-free: TRL refuses a max_length it would not enforce; prepare
        # already dropped every longer example (measured with the same chat template and tokenizer).
        max_length=None if free else p.prepare.max_length,
        padding_free=free,
        use_liger_kernel=liger_kernel(t.use_liger_kernel, on_gpu),
        completion_only_loss=t.completion_only_loss,
        gradient_checkpointing=t.gradient_checkpointing,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if t.eval_steps else "epoch",
        eval_steps=t.eval_steps or None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to="none",  # DVCLiveCallback is added by hand to log into LIVE_DIR
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA uses every trainable weight in each forward: skip DDP's search
    )


def checked_sft_config(p: params.Params, dtype: torch.dtype):
    """sft_config(), with TRL/transformers' own validation of the settings reported as a params error."""
    from transformers.training_args import OptimizerNames

    try:
        return sft_config(p, dtype)
    except ValueError as e:
        if f"{p.train.optim} is not a valid OptimizerNames" in str(e):
            names = [o.value for o in OptimizerNames]
            problem = (f"train.optim must be one of transformers' optimizer names, got {p.train.optim!r}"
                       f"{params.did_you_mean(p.train.optim, names, aliases=False)}")
        else:
            problem = f"transformers refused the training settings: {e}"
        raise params.error(problem) from None


def lora_config(t: params.TrainParams):
    from peft import LoraConfig

    return LoraConfig(
        r=t.lora.r,
        lora_alpha=t.lora.alpha,
        lora_dropout=t.lora.dropout,
        target_modules=list(t.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


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


def run_id(p: params.Params) -> str:
    """Checkpoints are reused only by a run with the same deps (code, data, base) and params as dvc.yaml lists."""
    deps, keys = checkpoints.stage_inputs(STAGE, p)
    return checkpoints.fingerprint({key: checkpoints.param_value(p, key) for key in keys}, deps)


def oom_advice(t: params.TrainParams, max_length: int) -> str:
    tips = [f"lower train.batch_size (now {t.batch_size}) and raise train.grad_accum (now {t.grad_accum}) "
            "to keep the effective batch"]
    if not t.gradient_checkpointing:
        tips.append("set train.gradient_checkpointing: true (less activation memory, ~30% slower)")
    tips.append(f"lower prepare.max_length (now {max_length})")
    return "the GPU ran out of memory during training. Try: " + "; ".join(tips) + "."


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def whole_run_loss(log_history: list[dict], this_call_loss: float, resumed_from: int, global_step: int) -> float:
    """Mean training loss over every step; Trainer's `training_loss` covers only the steps of this call."""
    if not resumed_from:
        return this_call_loss
    total = steps = last = 0
    for h in log_history:  # the checkpoint's logs, then this call's
        if "loss" in h and h["step"] <= resumed_from:
            total, steps, last = total + h["loss"] * (h["step"] - last), steps + h["step"] - last, h["step"]
    tail = global_step - resumed_from
    return (total + this_call_loss * tail) / max(steps + tail, 1)


def final_evaluation(trainer, live) -> dict:
    """The in-training evaluation at the last step when there was one (per epoch, it ends there), else one now,
    whose metrics dvclive (ended with training) must sync again."""
    at_end = [h for h in trainer.state.log_history if "eval_loss" in h and h["step"] == trainer.state.global_step]
    if at_end:
        return at_end[-1]
    metrics = trainer.evaluate()
    if live is not None:
        live.end()
    return metrics


# ---------------------------------------------------------------- library workarounds
# Written for trl 1.16.0, peft 0.21.2 and transformers 5.24.0: delete each one when its library fixes it.


def labelled_logits_only(enabled: bool) -> None:
    """TRL's fused output layer scores only the positions that have a label (response tokens, not prompt or
    padding) on GPUs, but every position elsewhere (fixed shapes for XLA/Neuron compilers), which on a CPU
    is work thrown away. enabled: CPUs score only labelled positions too; same loss and gradients.
    Process-wide (TRL decides per call): sft_config sets it for the run it configures."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils

    stock = chunked_logprob._use_triton
    if hasattr(utils, "_use_triton"):  # a TRL without it: stock behaviour, tests/test_packing.py says so
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


# ---------------------------------------------------------------- the recipe


@dataclasses.dataclass
class Run:
    trainer: object
    live: object
    tokenizer: object
    resume_from: Path | None


def build(p: params.Params) -> Run:
    from dvclive import Live
    from peft import prepare_model_for_kbit_training
    from trl import SFTTrainer

    dtype = modeling.compute_dtype(p.train.precision)
    args = checked_sft_config(p, dtype)  # before checkpoints are cleared: a typo must not cost a run
    labelled_logits_only(p.train.labelled_logits_only)
    main = distributed.is_main(args)
    resume_from = distributed.from_main(args, lambda: checkpoints.resume_point(CHECKPOINT_DIR, run_id(p), p.train.num_processes))
    if resume_from and main:
        checkpoints.rewind_live(LIVE_DIR, checkpoints.step_of(resume_from))  # rows logged after the checkpoint
    tokenizer = modeling.load_tokenizer(BASE_DIR)
    model = modeling.load_model(BASE_DIR, p.model.quantization, dtype)
    if p.model.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=p.train.gradient_checkpointing)
    # DVCLiveCallback logs on the main process only (elsewhere, without a Live, it does nothing); a Live
    # on every process would also clear, resume and end the same directory from each of them
    live = Live(dir=LIVE_DIR, resume=resume_from is not None, save_dvc_exp=False, dvcyaml=None) if main else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset(pd.read_parquet(TRAIN_DATA)),
        eval_dataset=dataset(pd.read_parquet(VAL_DATA)),
        processing_class=tokenizer,
        peft_config=lora_config(p.train),
        callbacks=[step_aligned_dvclive()(live=live)],
    )
    keep_lora_weights_fp32(trainer.model)
    keep_token_count(trainer)
    if main:
        print(f"train: {modeling.device()}, {dtype}, {distributed.processes_note(p.train)}base {p.model.base} "
              f"({p.model.quantization}), lr {p.lr:g}" + (f", resuming from {resume_from}" if resume_from else ""))
    return Run(trainer, live, tokenizer, resume_from)


def fit(run: Run, p: params.Params) -> tuple[dict, dict]:
    """Train (or finish a killed run), then evaluate on val: (metrics/train.json, metrics/train_speed.json)."""
    trainer = run.trainer
    resumed_from = checkpoints.step_of(run.resume_from) if run.resume_from else 0
    start = time.time()
    try:
        output = trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    except torch.OutOfMemoryError as e:
        raise modeling.ModelError(oom_advice(p.train, p.prepare.max_length)) from e
    seconds = time.time() - start
    final_eval = final_evaluation(trainer, run.live)

    state = trainer.state
    logged = [h for h in state.log_history if "loss" in h]
    tokens = int(trainer._total_train_tokens)  # TRL's count of non-padding tokens, every process's
    learned = {
        "train_loss": whole_run_loss(state.log_history, output.training_loss, resumed_from, state.global_step),
        "last_logged_loss": logged[-1]["loss"] if logged else None,
        "eval_loss": final_eval.get("eval_loss"),
        "eval_entropy": final_eval.get("eval_entropy"),
        "eval_mean_token_accuracy": final_eval.get("eval_mean_token_accuracy"),
        "epoch": state.epoch,
        "global_step": state.global_step,
        "tokens_seen": tokens,
    }
    speed = {
        "resumed_from_step": resumed_from,
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "tokens_per_second": round((tokens - trainer._initial_num_input_tokens_seen) / max(seconds, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "device": modeling.device(),
        "processes": p.train.num_processes,
    }
    return learned, speed


def save(run: Run, p: params.Params, learned: dict, speed: dict) -> None:
    if not distributed.is_main(run.trainer.args):
        return
    model = run.trainer.model
    model.peft_config["default"].base_model_name_or_path = p.model.base
    with io.atomic_path(ADAPTER_OUT) as tmp:
        model.save_pretrained(tmp, save_embedding_layers=False)  # no hub lookup
        run.tokenizer.save_pretrained(tmp)
        sort_target_modules(tmp / "adapter_config.json")
    io.write_json(METRICS_OUT, learned)
    io.write_json(SPEED_OUT, speed)
    print(f"train: loss {learned['train_loss']:.4f}, val loss {learned['eval_loss']:.4f}, "
          f"{speed['tokens_per_second']:.0f} tokens/s, peak {speed['peak_memory_mb']:.0f} MB -> {ADAPTER_OUT}")


def main() -> None:
    p = params.load("lr", "prepare", "model", "train")
    if distributed.launched():
        distributed.die_with_launcher()
    elif p.train.num_processes > 1:
        distributed.relaunch(p.train.num_processes)  # does not return
    distributed.check_process_count(p.train)
    run = build(p)
    learned, speed = fit(run, p)
    save(run, p, learned, speed)


if __name__ == "__main__":
    errors.run(main)
