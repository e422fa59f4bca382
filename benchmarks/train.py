"""Training throughput: the reference configuration against the project's default; and a quantization table.

Every run trains the same random Qwen2-architecture model (hidden 256, 4 layers, an 8k byte-level BPE
vocabulary trained on the rows like the tiny default's) on the same rows (real Alpaca from ../shared when
present, else the embedded sample), cleaned and drawn by prepare's own clean / sample_and_split (longer
than prepare.max_length dropped, one row per prompt; eval rows are held-out prompts), for the same
optimizer steps of the same 8 examples (batch 2 x grad_accum 4), with params.yaml's settings except `lr`
(high enough that the loss moves) and the switches compared. Training goes through the train stage's own
sft_config / lora_config / dataset (finetune.training.sft) and modeling.load_model. Each run is a fresh
process (common.isolated): its peak memory is its own, and TRL's process-wide switches start clean.

- tokens/s: non-padding tokens per second over full optimizer steps (from one step's end to the next: data
  loading, every micro-batch's forward and backward, the optimizer, logging), the median over blocks of
  steps after warm-up steps. Also per CPU second (process time): the same work, less disturbed by other
  processes on a shared machine.
- eval_loss: response-token loss on held-out rows after training (scoring.response_metrics, what the
  evaluate stage reports), the same function for every run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from benchmarks import common

SECTIONS = ("lr", "prepare", "model", "train")
SEED = 0  # which rows are drawn
ROUNDS, ROUNDS_QUICK = 4, 2  # reference and default measured in turns, ABBA
LR = 3e-3  # the reference 1e-5 barely moves a random model: "same eval loss" would be trivially true
# The reference configuration (the original setup): every speed switch of params.yaml set back.
REFERENCE = {"train": {"speed": {"padding_free": False, "labelled_logits_only": False, "use_liger_kernel": False}}}
# The default with one switch set back, to show where the speed-up comes from.
ABLATIONS = {"default, every position scored": {"train": {"speed": {"labelled_logits_only": False}}}}
QUANTIZATIONS = ("8bit", "4bit", "none")
MODEL = {
    "vocab_size": 8192,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
}


def run_params(changes: dict, steps: int):
    """params.yaml (the project's default), with the benchmark's lr and step count, then `changes`."""
    from finetune import config

    raw = yaml.safe_load((common.REPO / "params.yaml").read_text())
    raw = common.deep_update(raw, {"lr": LR, "train": {"max_steps": steps}})
    return config.parse(common.deep_update(raw, changes), SECTIONS)


def throughput(marks: list[tuple[float, float, int]], warmup: int, block: int) -> dict:
    """Median tokens per wall second and per CPU second over blocks of `block` steps after `warmup` steps.

    marks: (wall clock, process time, tokens so far) at the start of training and at every step's end.
    """
    steps = [tuple(b - a for a, b in zip(before, after)) for before, after in zip(marks, marks[1:])][warmup:]
    blocks = [steps[i : i + block] for i in range(0, len(steps) - block + 1, block)]
    if not blocks:
        raise ValueError(f"{len(marks) - 1} steps leave no block of {block} after {warmup} warm-up steps")
    wall = [sum(s[2] for s in b) / sum(s[0] for s in b) for b in blocks]
    cpu = [sum(s[2] for s in b) / sum(s[1] for s in b) for b in blocks]
    return {
        "tokens_per_second": round(statistics.median(wall), 1),
        "tokens_per_cpu_second": round(statistics.median(cpu), 1),
        "seconds_per_step": round(statistics.median(s[0] for s in steps), 3),
        "blocks": len(blocks),
        "tokens_per_step": round(statistics.mean(s[2] for s in steps), 1),
    }


def train_once(
    model_dir: str, train_path: str, eval_path: str, changes: dict, steps: int, warmup: int, block: int
) -> dict:
    """One training run as the train stage configures it; its throughput and the eval loss it ends at."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer

    from finetune import chat_format, modeling
    from finetune.evaluation import scoring
    from finetune.training import compat, sft

    p = run_params(changes, steps)
    dtype = modeling.compute_dtype(p.train.precision)
    tokenizer = modeling.load_tokenizer(model_dir)
    model = modeling.load_model(model_dir, p.model.quantization, dtype)
    weights_mb = model.get_memory_footprint() / 2**20
    if p.model.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=p.train.gradient_checkpointing)
    config = sft.sft_config(p, dtype)
    compat.labelled_logits_only(p.train.speed.labelled_logits_only)  # as the stage's build() does
    config.output_dir = tempfile.mkdtemp(prefix="bench_train_")
    config.eval_strategy, config.save_strategy, config.disable_tqdm = "no", "no", True  # timed: steps only

    class StepClock(TrainerCallback):
        """(wall clock, process time, TRL's count of non-padding tokens) at the start and at each step's end."""

        def __init__(self):
            self.marks = []

        def mark(self, *_, **__):
            self.marks.append((time.perf_counter(), time.process_time(), trainer._total_train_tokens))

        on_train_begin = on_step_end = mark

    clock = StepClock()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=sft.dataset(pd.read_parquet(train_path)),
        processing_class=tokenizer,
        peft_config=sft.lora_config(p.train, modeling.lora_targets(model, p.train.lora.target_modules)),
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)
    compat.keep_lora_weights_fp32(trainer.model)  # as the stage does
    output = trainer.train()
    conversations = chat_format.conversations(pd.read_parquet(eval_path))
    scored = scoring.response_metrics(trainer.model, tokenizer, conversations, 16, p.prepare.max_length)
    return {
        **throughput(clock.marks, warmup, block),
        "eval_loss": round(scored["eval_loss"], 5),
        "train_loss": round(output.training_loss, 5),
        "steps": trainer.state.global_step,
        "examples_per_step": config.per_device_train_batch_size * config.gradient_accumulation_steps,
        "torch_threads": torch.get_num_threads(),
        "weights_mb": round(weights_mb, 1),
        "switches": p.train.speed.model_dump(),
        "quantization": p.model.quantization,
    }


def base_eval_loss(model_dir: str, eval_path: str, steps: int) -> float:
    """The untrained model's eval loss: the figure every run's eval loss moved from."""
    from finetune import chat_format, modeling
    from finetune.evaluation import scoring

    p = run_params({}, steps)
    model = modeling.load_model(model_dir, p.model.quantization, modeling.compute_dtype(p.train.precision))
    conversations = chat_format.conversations(pd.read_parquet(eval_path))
    tokenizer = modeling.load_tokenizer(model_dir)
    return scoring.response_metrics(model, tokenizer, conversations, 16, p.prepare.max_length)["eval_loss"]


def split_rows(frame, tokenizer, max_length: int, n_train: int, n_eval: int):
    """(train, held-out) rows as prepare makes them: cleaned (too long dropped, one row per prompt), n_train +
    n_eval prompts drawn; held-out = prepare's val and test, each n_eval / 2: no prompt in both."""
    from finetune import chat_format
    from finetune.data import cleaning, splitting

    n = n_train + n_eval
    kept, _ = cleaning.clean(
        frame, lambda rows: chat_format.token_lengths(tokenizer, rows, fits=max_length), max_length, "drop", n, SEED
    )
    train_rows, val_rows, test_rows = splitting.sample_and_split(kept, n, n_eval / n / 2, n_eval / n / 2, SEED)
    return train_rows, pd.concat([val_rows, test_rows], ignore_index=True)


def make_inputs(tmp: Path, n_train: int, n_eval: int, rows=None) -> dict:
    """The benchmark model (saved) and its train / eval rows (parquet), from `rows` (default: the data source)."""
    from finetune import chat_format, config, tiny
    from finetune.data import readers, schema

    source = common.data_source()
    frame = schema.canonicalize(readers.read_any(source) if rows is None else rows, source, "drop")
    tokenizer = tiny.train_bpe_tokenizer(tiny.corpus_texts(frame), MODEL["vocab_size"])
    model = tiny.build_model(config.TinyModelParams(**MODEL), tokenizer)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    max_length = run_params({}, 1).prepare.max_length
    train_rows, eval_rows = split_rows(frame.head(3 * (n_train + n_eval)), tokenizer, max_length, n_train, n_eval)
    train_rows.astype("string").to_parquet(tmp / "train.parquet")
    eval_rows.astype("string").to_parquet(tmp / "eval.parquet")
    lengths = chat_format.token_lengths(tokenizer, train_rows)
    return {
        "model_dir": str(tmp / "model"),
        "train_path": str(tmp / "train.parquet"),
        "eval_path": str(tmp / "eval.parquet"),
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "parameters": sum(t.numel() for t in model.parameters()),
        "mean_tokens": round(float(lengths.mean()), 1),
        "max_tokens": int(lengths.max()),
    }


def measured(fn, *args) -> dict:
    out = common.isolated(fn, *args)
    return {
        **out["result"],
        "peak_rss_mb": out["peak_rss_mb"],
        **({"peak_gpu_mb": out["peak_gpu_mb"]} if "peak_gpu_mb" in out else {}),
    }


def run(quick: bool) -> dict:
    steps, warmup, block, n_train, n_eval = (6, 1, 1, 64, 24) if quick else (40, 4, 6, 400, 200)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        inputs = make_inputs(Path(tmp), n_train, n_eval)
        paths = (inputs["model_dir"], inputs["train_path"], inputs["eval_path"])
        quantization = run_params({}, steps).model.quantization
        before = base_eval_loss(inputs["model_dir"], inputs["eval_path"], steps)
        timing = (steps, warmup, block)
        # The two configurations in turns, order swapped each round (ABBA): a load that comes and goes on a shared
        # machine hits both alike; the ratio is taken per round, then its median and spread.
        rounds = []
        for r in range(ROUNDS_QUICK if quick else ROUNDS):
            order = [("reference", REFERENCE), ("default", {})]
            measured_round = dict(
                (name, measured(train_once, *paths, changes, *timing))
                for name, changes in (order if r % 2 == 0 else order[::-1])
            )
            measured_round["load"] = os.getloadavg()[0]
            rounds.append(measured_round)
        reference, default = rounds[0]["reference"], rounds[0]["default"]
        ablations = {name: measured(train_once, *paths, changes, *timing) for name, changes in ABLATIONS.items()}
        quant = {
            q: default if q == quantization else measured(train_once, *paths, {"model": {"quantization": q}}, *timing)
            for q in QUANTIZATIONS
        }
    load_after = os.getloadavg()

    ratios = [r["default"]["tokens_per_second"] / r["reference"]["tokens_per_second"] for r in rounds]
    ratios_cpu = [r["default"]["tokens_per_cpu_second"] / r["reference"]["tokens_per_cpu_second"] for r in rounds]
    speedup, speedup_cpu = statistics.median(ratios), statistics.median(ratios_cpu)
    loss_change = default["eval_loss"] / reference["eval_loss"] - 1
    # The same difference as a share of what the reference learned: 2% of the loss can exceed all of it.
    of_learned = (default["eval_loss"] - reference["eval_loss"]) / (before - reference["eval_loss"])
    table = [
        [
            "data",
            f"{Path(common.data_source()).name}: {inputs['train_rows']} train / {inputs['eval_rows']} eval rows, "
            f"{inputs['mean_tokens']} tokens mean, {inputs['max_tokens']} max",
        ],
        ["model", f"random Qwen2 {MODEL}, {inputs['parameters']:,} parameters, {quantization}"],
        [
            "training",
            f"{steps} steps x {reference['examples_per_step']} examples, lr {LR:g}; "
            f"timed: median of {reference['blocks']} blocks of {block} steps after {warmup}",
        ],
        ["reference tokens/s (wall | CPU)", f"{reference['tokens_per_second']} | {reference['tokens_per_cpu_second']}"],
        ["default tokens/s (wall | CPU)", f"{default['tokens_per_second']} | {default['tokens_per_cpu_second']}"],
        [
            "speedup (wall | CPU), median of rounds",
            f"{speedup:.2f}x | {speedup_cpu:.2f}x (target >= 1.3x); {len(ratios)} rounds in turns, wall "
            f"{min(ratios):.2f}-{max(ratios):.2f}x, CPU {min(ratios_cpu):.2f}-{max(ratios_cpu):.2f}x; load average "
            + ", ".join(f"{r['load']:.1f}" for r in rounds),
        ],
        *[
            [f"{name} tokens/s (wall | CPU)", f"{r['tokens_per_second']} | {r['tokens_per_cpu_second']}"]
            for name, r in ablations.items()
        ],
        [
            "eval loss untrained -> reference | default",
            f"{before:.4f} -> {reference['eval_loss']:.4f} | {default['eval_loss']:.4f} ({loss_change:+.3%}, "
            f"{of_learned:+.2%} of the drop; within 2%: {abs(loss_change) <= 0.02})",
        ],
        *[
            [
                f"{q}: tokens/s (wall | CPU), weights, peak RSS, eval loss",
                f"{r['tokens_per_second']} | {r['tokens_per_cpu_second']}, {r['weights_mb']:.1f} MB, {r['peak_rss_mb']:.0f} MB"
                + (f" (GPU {r['peak_gpu_mb']:.0f} MB)" if "peak_gpu_mb" in r else "")
                + f", {r['eval_loss']:.4f}",
            ]
            for q, r in quant.items()
        ],
        [
            "load average before -> after",
            f"{load_before[0]:.1f} -> {load_after[0]:.1f} "
            f"({os.cpu_count()} cores; a shared machine slows wall figures)",
        ],
    ]
    return {
        "table": table,
        "reference": reference,
        "default": default,
        "speedup": round(speedup, 3),
        "speedup_cpu": round(speedup_cpu, 3),
        "speedup_rounds": [round(x, 3) for x in ratios],
        "speedup_cpu_rounds": [round(x, 3) for x in ratios_cpu],
        "eval_loss_change": round(loss_change, 6),
        "eval_loss_change_of_learned": round(of_learned, 5),
        "eval_loss_within_2pct": abs(loss_change) <= 0.02,
        "untrained_eval_loss": round(before, 5),
        "ablations": ablations,
        "quantization": quant,
        "inputs": {k: v for k, v in inputs.items() if not k.endswith(("_dir", "_path"))},
        "lr": LR,
        "steps": steps,
        "warmup_steps": warmup,
        "block_steps": block,
        "load_average": {"before": load_before, "after": load_after},
    }
