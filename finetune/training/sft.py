"""LoRA on a quantized base with TRL's SFTTrainer: the train stage's recipe.

The recipe:
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
(training/distributed.py); only the main process clears checkpoints, logs and writes outputs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import pandas as pd
import torch

from finetune import chat_format, config, files, measure, modeling, paths, pipeline
from finetune.training import checkpoints, compat, distributed

STAGE = "train"  # run_id covers this dvc.yaml stage's deps and params: one list of train's inputs


def dataset(frame: pd.DataFrame, tokenizer=None, completion_only_loss: bool = True):
    """Alpaca rows: TRL's conversational prompt-completion rows (TRL masks the prompt). Conversations (a
    `messages` column): pre-tokenized rows, input_ids with the model's chat template and assistant_masks on every
    assistant turn (chat_format.encode_conversation), from which TRL builds the labels; without
    completion_only_loss, input_ids alone (loss on every token, the reference's choice)."""
    from datasets import Dataset

    if "messages" not in frame.columns:
        return Dataset.from_list(chat_format.conversations(frame))
    encoded = [chat_format.encode_conversation(tokenizer, json.loads(text)) for text in frame["messages"]]
    columns = {"input_ids": [ids for ids, _, _ in encoded]}
    if completion_only_loss:
        columns["assistant_masks"] = [mask for _, mask, _ in encoded]
    return Dataset.from_dict(columns)


def padding_free(p: config.Params) -> bool:
    """Whether micro-batches are padding-free: one row of examples end to end, with position ids that restart
    at 0 for each, from which transformers builds a block-diagonal causal mask (sdpa, eager) or varlen
    flash-attention calls, so no example attends to another. TRL refuses padding_free with a max_length
    unless it packs (it would not cut rows to it), so rows that prepare.too_long: truncate leaves longer than
    max_length for the trainer to cut keep batches padded; with drop, prepare has removed every longer row."""
    if p.train.speed.padding_free and p.prepare.too_long != "drop":
        print(
            f"train: prepare.too_long: {p.prepare.too_long} leaves examples for the trainer to cut to "
            f"prepare.max_length, which TRL does not do in padding-free batches: train.speed.padding_free does not apply"
        )
        return False
    return p.train.speed.padding_free


def liger_kernel(setting, on_gpu: bool) -> bool:
    """auto: Liger's Triton kernels where they can run (a CUDA GPU, package liger-kernel installed)."""
    available = on_gpu and importlib.util.find_spec("liger_kernel") is not None
    if setting is True and not available:
        raise config.error(
            "train.speed.use_liger_kernel: true needs a CUDA GPU and the liger-kernel package "
            "(pip install liger-kernel); set it to auto or false"
        )
    return available if setting == "auto" else setting


def sft_config(p: config.Params, dtype: torch.dtype):
    """The reference hyperparameters, mapped onto TRL's SFTConfig, with the speed switches of params.yaml."""
    from trl import SFTConfig

    t = p.train
    on_gpu = torch.cuda.is_available()
    batch_size, grad_accum = distributed.per_process_batch(t)
    free = padding_free(p)
    return SFTConfig(
        output_dir=paths.CHECKPOINT_DIR,
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
        use_liger_kernel=liger_kernel(t.speed.use_liger_kernel, on_gpu),
        completion_only_loss=t.completion_only_loss,
        gradient_checkpointing=t.gradient_checkpointing,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if t.eval_steps else "epoch",
        eval_steps=t.eval_steps or None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to="none",  # DVCLiveCallback is added by hand to log into paths.LIVE_DIR
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA uses every trainable weight in each forward: skip DDP's search
    )


def checked_sft_config(p: config.Params, dtype: torch.dtype):
    """sft_config(), with TRL/transformers' own validation of the settings reported as a params error."""
    from transformers.training_args import OptimizerNames

    try:
        return sft_config(p, dtype)
    except ValueError as e:
        if f"{p.train.optim} is not a valid OptimizerNames" in str(e):
            names = [o.value for o in OptimizerNames]
            problem = (
                f"train.optim must be one of transformers' optimizer names, got {p.train.optim!r}"
                f"{config.did_you_mean(p.train.optim, names, aliases=False)}"
            )
        else:
            problem = f"transformers refused the training settings: {e}"
        raise config.error(problem) from None


def lora_config(t: config.TrainParams, targets: list[str]):
    """LoRA of train.lora on `targets`, the linear layer names modeling.lora_targets resolved on the model."""
    from peft import LoraConfig

    return LoraConfig(
        r=t.lora.r,
        lora_alpha=t.lora.alpha,
        lora_dropout=t.lora.dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def run_id(p: config.Params) -> str:
    """Checkpoints are reused only by a run with the same deps (code, data, base) and params as dvc.yaml lists."""
    deps, keys = pipeline.stage_inputs(STAGE)
    return checkpoints.fingerprint({key: pipeline.param_value(p, key) for key in keys}, deps)


def oom_advice(t: config.TrainParams, max_length: int) -> str:
    tips = [
        f"lower train.batch_size (now {t.batch_size}) and raise train.grad_accum (now {t.grad_accum}) "
        "to keep the effective batch"
    ]
    if not t.gradient_checkpointing:
        tips.append("set train.gradient_checkpointing: true (less activation memory, ~30% slower)")
    tips.append(f"lower prepare.max_length (now {max_length})")
    return "the GPU ran out of memory during training. Try: " + "; ".join(tips) + "."


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


@dataclasses.dataclass
class TrainingRun:
    trainer: object
    live: object
    tokenizer: object
    resume_from: Path | None
    adapted: dict  # what LoRA adapts: metrics/train.json's lora_* keys and trainable_parameters


def adapted_summary(model) -> dict:
    """The adapted layer names (a string: `dvc metrics diff` shows strings, not lists), how many layers and how
    many trainable parameters: a change of base model or of train.lora shows in the diff."""
    layers = [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]
    return {
        "lora_target_modules": ",".join(sorted({name.rsplit(".", 1)[-1] for name in layers})),
        "lora_layers": len(layers),
        "trainable_parameters": sum(w.numel() for w in model.parameters() if w.requires_grad),
    }


def build(p: config.Params) -> TrainingRun:
    modeling.quiet_bitsandbytes()  # before peft and trl import bitsandbytes
    from dvclive import Live
    from peft import prepare_model_for_kbit_training
    from trl import SFTTrainer

    dtype = modeling.compute_dtype(p.train.precision)
    args = checked_sft_config(p, dtype)  # before checkpoints are cleared: a typo must not cost a run
    compat.labelled_logits_only(p.train.speed.labelled_logits_only)
    main = distributed.is_main(args)
    tokenizer = modeling.load_tokenizer(paths.BASE_DIR)
    model = modeling.load_model(paths.BASE_DIR, p.model.quantization, dtype)
    targets = modeling.lora_targets(model, p.train.lora.target_modules)  # before checkpoints are cleared, too
    resume_from = distributed.from_main(
        args, lambda: checkpoints.resume_point(paths.CHECKPOINT_DIR, run_id(p), p.train.num_processes)
    )
    if resume_from and main:
        checkpoints.rewind_live(paths.LIVE_DIR, checkpoints.step_of(resume_from))  # rows logged after the checkpoint
    if p.model.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=p.train.gradient_checkpointing)
    # DVCLiveCallback logs on the main process only (elsewhere, without a Live, it does nothing); a Live
    # on every process would also clear, resume and end the same directory from each of them
    live = Live(dir=paths.LIVE_DIR, resume=resume_from is not None, save_dvc_exp=False, dvcyaml=None) if main else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset(pd.read_parquet(paths.TRAIN_DATA), tokenizer, p.train.completion_only_loss),
        eval_dataset=dataset(pd.read_parquet(paths.VAL_DATA), tokenizer, p.train.completion_only_loss),
        processing_class=tokenizer,
        peft_config=lora_config(p.train, targets),
        callbacks=[compat.step_aligned_dvclive()(live=live)],
    )
    compat.keep_lora_weights_fp32(trainer.model)
    compat.keep_token_count(trainer)
    if main:
        print(
            f"train: {modeling.device()}, {dtype}, {distributed.processes_note(p.train)}base {p.model.base} "
            f"({p.model.quantization}), lr {p.lr:g}" + (f", resuming from {resume_from}" if resume_from else "")
        )
    adapted = adapted_summary(trainer.model)
    if main:
        print(
            f"train: LoRA on {adapted['lora_layers']} layers ({adapted['lora_target_modules']}), "
            f"{adapted['trainable_parameters']:,} trainable parameters"
        )
    return TrainingRun(trainer, live, tokenizer, resume_from, adapted)


def fit(run: TrainingRun, p: config.Params) -> tuple[dict, dict]:
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
        **run.adapted,
    }
    speed = {
        "resumed_from_step": resumed_from,
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "tokens_per_second": round((tokens - trainer._initial_num_input_tokens_seen) / max(seconds, 1e-9), 1),
        "peak_memory_mb": round(measure.peak_memory_mb(), 1),
        "device": modeling.device(),
        "processes": p.train.num_processes,
    }
    return learned, speed


def save(run: TrainingRun, p: config.Params, learned: dict, speed: dict) -> None:
    if not distributed.is_main(run.trainer.args):
        return
    model = run.trainer.model
    model.peft_config["default"].base_model_name_or_path = p.model.base
    with files.atomic_path(paths.ADAPTER_DIR) as tmp:
        model.save_pretrained(tmp, save_embedding_layers=False)  # no hub lookup
        run.tokenizer.save_pretrained(tmp)
        compat.sort_target_modules(tmp / "adapter_config.json")
    files.write_json(paths.TRAIN_METRICS, learned)
    files.write_json(paths.TRAIN_SPEED, speed)
    print(
        f"train: loss {learned['train_loss']:.4f}, val loss {learned['eval_loss']:.4f}, "
        f"{speed['tokens_per_second']:.0f} tokens/s, peak {speed['peak_memory_mb']:.0f} MB -> {paths.ADAPTER_DIR}"
    )
