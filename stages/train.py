"""train: LoRA on a quantized base with TRL's SFTTrainer -> models/adapter, metrics/train.json."""

from __future__ import annotations

import dataclasses
import json
import resource
import time

import pandas as pd
import torch

from stages import checkpoints, errors, io, modeling, params, prompts

BASE_DIR = "models/base"
TRAIN_DATA = "data/processed/train.parquet"
TEST_DATA = "data/processed/test.parquet"
CHECKPOINT_DIR = "models/checkpoints"  # not a DVC output: kept across runs, cleared by run_id when inputs change
ADAPTER_OUT = "models/adapter"
LIVE_DIR = "metrics/train_live"  # dvclive's per-step logs, drawn by `dvc plots show`
METRICS_OUT = "metrics/train.json"
STAGE = "train"  # run_id covers this dvc.yaml stage's deps and params: one list of train's inputs


def dataset(frame: pd.DataFrame):
    from datasets import Dataset

    return Dataset.from_list(prompts.conversations(frame))


def sft_config(p: params.Params, dtype: torch.dtype):
    """The reference hyperparameters, mapped onto TRL's SFTConfig."""
    from trl import SFTConfig

    t = p.train
    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=CHECKPOINT_DIR,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=p.lr,
        optim=t.optim,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        max_length=p.prepare.max_length,
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
    )


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
    """transformers' DVCLiveCallback, with the x axis at the trainer's global step, not the log count."""
    from transformers.integrations import DVCLiveCallback

    class StepAlignedDVCLiveCallback(DVCLiveCallback):
        def on_log(self, args, state, control, **kwargs):
            if self.live is not None:
                self.live.step = state.global_step
            super().on_log(args, state, control, **kwargs)

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


def keep_adapter_dtype(model) -> None:
    """Resume into the adapter dtype TRL chose (bf16 for a quantized base), not an fp32 copy.

    Trainer resumes a PEFT model through `load_adapter`, which upcasts a bf16 adapter to fp32:
    the rest of the run would then compute differently from an uninterrupted one.
    """
    load_adapter = model.load_adapter
    model.load_adapter = lambda *args, **kwargs: load_adapter(*args, **{"autocast_adapter_dtype": False, **kwargs})


def whole_run_loss(trainer, train_output, resumed_from: int) -> float:
    """Mean training loss over every step; Trainer's `training_loss` covers only the steps of this call."""
    if not resumed_from:
        return train_output.training_loss
    total = steps = last = 0
    for h in trainer.state.log_history:  # the checkpoint's logs, then this call's
        if "loss" in h and h["step"] <= resumed_from:
            total, steps, last = total + h["loss"] * (h["step"] - last), steps + h["step"] - last, h["step"]
    tail = trainer.state.global_step - resumed_from
    return (total + train_output.training_loss * tail) / max(steps + tail, 1)


def sort_target_modules(config_path) -> None:
    """peft writes target_modules from a set, in a per-process order: sort it, so the same
    weights give the same bytes and DVC does not rerun evaluate and merge for nothing."""
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def summarize(trainer, train_output, final_eval: dict, resumed_from: int, seconds: float) -> dict:
    logged = [h for h in trainer.state.log_history if "loss" in h]
    tokens = trainer.state.num_input_tokens_seen or (logged[-1].get("num_tokens", 0) if logged else 0)
    return {
        "train_loss": whole_run_loss(trainer, train_output, resumed_from),
        "last_logged_loss": logged[-1]["loss"] if logged else None,
        "eval_loss": final_eval.get("eval_loss"),
        "eval_entropy": final_eval.get("eval_entropy"),
        "eval_mean_token_accuracy": final_eval.get("eval_mean_token_accuracy"),
        "epoch": trainer.state.epoch,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "tokens_seen": int(tokens),
    }


def main() -> None:
    p = params.load("lr", "prepare", "model", "train")
    from dvclive import Live
    from peft import prepare_model_for_kbit_training
    from trl import SFTTrainer

    resume_from = checkpoints.resume_point(CHECKPOINT_DIR, run_id(p))
    start_step = checkpoints.step_of(resume_from) if resume_from else 0
    if resume_from:
        checkpoints.rewind_live(LIVE_DIR, start_step)  # what the killed run logged after its checkpoint
    dtype = modeling.compute_dtype(p.train.precision)
    tokenizer = modeling.load_tokenizer(BASE_DIR)
    model = modeling.load_model(BASE_DIR, p.model.quantization, dtype)
    if p.model.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=p.train.gradient_checkpointing)
    live = Live(dir=LIVE_DIR, resume=resume_from is not None, save_dvc_exp=False, dvcyaml=None)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(p, dtype),
        train_dataset=dataset(pd.read_parquet(TRAIN_DATA)),
        eval_dataset=dataset(pd.read_parquet(TEST_DATA)),
        processing_class=tokenizer,
        peft_config=lora_config(p.train),
        callbacks=[step_aligned_dvclive()(live=live)],
    )
    if dtype == torch.float32:
        # TRL casts a quantized model's LoRA weights to bf16 (QLoRA's recipe for GPUs); on a CPU
        # without bf16 that rounds away small updates and buys no speed, so keep them fp32.
        for weight in trainer.model.parameters():
            if weight.requires_grad:
                weight.data = weight.data.float()
    tokens_before = int(checkpoints.last_logged(resume_from, "num_tokens") or 0) if resume_from else 0
    if resume_from:
        keep_adapter_dtype(trainer.model)
        trainer._total_train_tokens = tokens_before  # TRL's running count, which a resume would reset
    print(f"train: {modeling.device()}, {dtype}, base {p.model.base} ({p.model.quantization}), lr {p.lr:g}"
          + (f", resuming from {resume_from}" if resume_from else ""))
    start = time.time()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError as e:
        raise modeling.ModelError(oom_advice(p.train, p.prepare.max_length)) from e
    seconds = time.time() - start
    final_eval = trainer.evaluate()
    live.end()

    trainer.model.peft_config["default"].base_model_name_or_path = p.model.base
    with io.atomic_path(ADAPTER_OUT) as tmp:
        trainer.model.save_pretrained(tmp, save_embedding_layers=False)  # no hub lookup
        tokenizer.save_pretrained(tmp)
        sort_target_modules(tmp / "adapter_config.json")
    summary = summarize(trainer, output, final_eval, start_step, seconds)
    summary["tokens_per_second"] = round((summary["tokens_seen"] - tokens_before) / max(seconds, 1e-9), 1)
    io.write_json(METRICS_OUT, summary)
    print(f"train: loss {summary['train_loss']:.4f}, eval loss {summary['eval_loss']:.4f}, "
          f"{summary['tokens_per_second']:.0f} tokens/s, peak {summary['peak_memory_mb']:.0f} MB -> {ADAPTER_OUT}")


if __name__ == "__main__":
    errors.run(main)
