"""merge: unquantized base + adapter -> standalone model in models/merged, checked, scored, with a model card.

The recipe: load (fp32 base + adapter), merge (peft's merge_and_unload), check (merged logits match
base+adapter within merge.tolerance), export (save in merge.dtype, reload with plain transformers,
every tensor as saved), score (the export as a user loads it, on the test split's response tokens),
card (models/merged/README.md). Any failed check writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from stages import errors, evaluation, io, modeling, params, prompts

BASE_DIR = "models/base"
ADAPTER_DIR = "models/adapter"
TEST_DATA = "data/processed/test.parquet"
DATA_METRICS = "metrics/data.json"  # row counts, for the card
EVAL_METRICS = "metrics/eval.json"  # base.* and tuned.*, for the card
OUT = "models/merged"
METRICS_OUT = "metrics/merge.json"
SUBSET_SEED = 0  # merge.eval_rows picks the same rows on every run

# The rows of the card's metrics table (base, tuned, merged).
CARD_METRICS = ("eval_loss", "perplexity", "mean_token_accuracy", "entropy", "rougeL_f1", "chrf", "exact_match",
                "stopped_fraction")
CARD_TAGS = ["lora", "peft", "trl", "sft", "merged"]


def say(phase: str, message: str) -> None:
    print(f"merge: {phase:<6} {message}", flush=True)


# ---------------------------------------------------------------- parity


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    """fp32 logits at the batch's real (unpadded) positions."""
    return model(**batch).logits.float()[batch["attention_mask"].bool()]


@torch.no_grad()
def logits_and_greedy(model, batch, max_new_tokens: int = 16, pad_id: int | None = None):
    greedy = model.generate(**batch, generation_config=evaluation.generation_config(max_new_tokens=max_new_tokens,
                                                                                   pad_token_id=pad_id))
    return logits(model, batch), greedy[:, batch["input_ids"].shape[1]:]


def export_dtype(setting: str) -> torch.dtype:
    """As train.precision, except that auto never picks fp16 (its range overflows on some weights): fp32 there."""
    dtype = modeling.compute_dtype(setting)
    return torch.float32 if setting == "auto" and dtype == torch.float16 else dtype


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check_parity(difference: float, tolerance: float) -> None:
    if difference > tolerance:
        raise modeling.ModelError(
            f"merged model differs from base+adapter by {difference:.3g} in logits "
            f"(merge.tolerance {tolerance:g}); the merge lost or misplaced adapter weights; {OUT} was not written"
        )


def check_export(saved: dict[str, torch.Tensor], reloaded: dict[str, torch.Tensor], path) -> None:
    """The reloaded export holds exactly the merged weights (cast to the export dtype): nothing lost,
    re-initialised or tied wrongly on the way through safetensors."""
    missing = sorted(saved.keys() - reloaded.keys())
    extra = sorted(reloaded.keys() - saved.keys())
    changed = [name for name in sorted(saved.keys() & reloaded.keys())
               if saved[name].dtype != reloaded[name].dtype
               or not torch.equal(saved[name], reloaded[name].to(saved[name].device))]
    if missing or extra or changed:
        problems = [f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                    for what, names in (("missing", missing), ("unexpected", extra), ("changed", changed)) if names]
        raise modeling.ModelError(f"{path} reloaded with plain transformers does not hold the merged weights "
                                  f"({'; '.join(problems)}); {OUT} was not written")


# ---------------------------------------------------------------- score


def score_rows(n_rows: int, eval_rows: int) -> list[int]:
    """Test rows the export is scored on: all (eval_rows 0), or a fixed seeded subset."""
    if eval_rows == 0 or eval_rows >= n_rows:
        return list(range(n_rows))
    return evaluation.sample_indices(n_rows, eval_rows, SUBSET_SEED)


def flat(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}.{key}": value for key, value in metrics.items()}


# ---------------------------------------------------------------- model card


def card_hyperparameters(p: params.Params) -> dict:
    """The settings that shaped the weights, for the model card (dvc.yaml lists each as a merge param)."""
    t = p.train
    return {"lr": p.lr, "train.epochs": t.epochs, "train.max_steps": t.max_steps, "train.batch_size": t.batch_size,
            "train.grad_accum": t.grad_accum, "train.optim": t.optim, "train.lr_scheduler": t.lr_scheduler,
            "train.warmup_ratio": t.warmup_ratio, "train.weight_decay": t.weight_decay, "train.precision": t.precision,
            "train.completion_only_loss": t.completion_only_loss, "train.seed": t.seed, "train.lora.r": t.lora.r,
            "train.lora.alpha": t.lora.alpha, "train.lora.dropout": t.lora.dropout,
            "train.lora.target_modules": t.lora.target_modules, "prepare.max_length": p.prepare.max_length,
            "model.quantization": p.model.quantization}


def base_license(weights_dir: str) -> str:
    """The base model card's license (a derivative keeps it), or 'unknown' when the base has no card."""
    from huggingface_hub import metadata_load

    card = Path(weights_dir, "README.md")
    meta = metadata_load(card) if card.is_file() else None
    return str((meta or {}).get("license") or "unknown")


def _cell(value) -> str:
    """A metric: 4 decimals; missing: '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def _param(value) -> str:
    """A param as params.yaml would show it: 1e-05, 2, true, q_proj, v_proj."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


QUANTIZED = {"8bit": "an 8-bit quantized", "4bit": "a 4-bit quantized", "none": "an unquantized"}


def model_card(*, base: str, revision: str | None, license: str, export_dtype: str, data_path: str,
               data_counts: dict, hyperparameters: dict, evaluation_metrics: dict, merge_metrics: dict) -> str:
    """models/merged/README.md: Hugging Face model card (YAML metadata + markdown), deterministic."""
    from huggingface_hub import ModelCardData

    meta = ModelCardData(base_model=base, license=license, library_name="transformers",
                         pipeline_tag="text-generation", tags=CARD_TAGS).to_yaml()
    counts = data_counts
    splits = " / ".join(f"{counts[s]} {s}" for s in ("train", "val", "test") if s in counts)
    data_line = f"`{data_path}`"
    if counts:
        data_line += (f": {counts.get('rows_read', '?')} rows read, {counts.get('rows_kept', '?')} kept after "
                      f"cleaning, {counts.get('sampled', '?')} sampled and split by prompt ({splits}).")
    hyper_rows = "\n".join(f"| `{k}` | {_param(v)} |" for k, v in hyperparameters.items())
    trained_on = QUANTIZED.get(hyperparameters.get("model.quantization"), "the")
    metric_rows = "\n".join(
        f"| {m} | {_cell(evaluation_metrics.get(f'base.{m}'))} | {_cell(evaluation_metrics.get(f'tuned.{m}'))} "
        f"| {_cell(merge_metrics.get(f'merged.{m}'))} |" for m in CARD_METRICS)
    scored = merge_metrics.get("merged.rows")
    of_test = counts.get("test")
    rows_note = f"{scored} test rows" if of_test in (None, scored) else f"{scored} of {of_test} test rows"
    pinned = f" (revision `{revision}`)" if revision else ""
    return f"""---
{meta}
---

# `{base}` + LoRA, merged

`{base}`{pinned} fine-tuned with LoRA (peft) through TRL's `SFTTrainer` on {trained_on}
base, then the adapter merged into the unquantized weights (`merge_and_unload`) and exported in
{export_dtype}. It is a standalone model: plain `transformers` loads it, no peft needed.
Prompts use Qwen2's ChatML chat template; an answer ends with `<|im_end|>`.

## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("models/merged")
model = AutoModelForCausalLM.from_pretrained("models/merged")
messages = [{{"role": "user", "content": "What is a bond?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

From the project that made it: `python -m stages.chat --prompt "What is a bond?"` answers once;
`python -m stages.chat` starts an interactive session.

## Data

{data_line}

## Training hyperparameters

| param | value |
| --- | --- |
{hyper_rows}

## Evaluation

Response tokens of the test split. base: `{base}` alone; tuned: {trained_on} base + adapter, as
trained; merged: this export in {export_dtype}, loaded with `AutoModelForCausalLM`, on {rows_note}.

| metric | base | tuned | merged |
| --- | --- | --- | --- |
{metric_rows}

Merge check (fp32): the merged logits differ from base+adapter's by at most
{merge_metrics['max_abs_logit_diff']:.2e} (tolerance {merge_metrics['tolerance']:g}); the adapter moves them by up to
{merge_metrics['adapter_max_abs_logit_diff']:.2e}.
"""


def read_metrics(path: str, stage: str) -> dict:
    if not Path(path).is_file():
        raise io.DataError(f"{path} not found (the model card needs it); run `dvc repro {stage}` first")
    return io.read_json(path)


# ---------------------------------------------------------------- the stage's steps


def load(p: params.Params):
    """The base unquantized in fp32 + the adapter: the merge and its check then measure the merge,
    not bf16 rounding."""
    say("load", f"{p.model.base} unquantized in fp32 + {ADAPTER_DIR}")
    return modeling.load_tuned(BASE_DIR, ADAPTER_DIR, "none", torch.float32, expected_base=p.model.base)


def check(merged, batch, reference: torch.Tensor, base: torch.Tensor, tolerance: float) -> dict:
    difference = max_difference(logits(merged, batch), reference)
    check_parity(difference, tolerance)
    effect = max_difference(base, reference)
    say("check", f"max |logit diff| {difference:.2e} <= {tolerance:g} on {len(batch['input_ids'])} prompts; "
        f"the adapter moves logits by up to {effect:.2e}"
        + (" (below merge.tolerance: this check cannot tell a merge that dropped the adapter)"
           if effect <= tolerance else ""))
    return {"max_abs_logit_diff": difference, "tolerance": tolerance, "adapter_max_abs_logit_diff": effect,
            "prompts": len(batch["input_ids"])}


def export(merged, tokenizer, directory: Path, dtype: torch.dtype):
    """Save in the export dtype, reload as a user would (plain transformers, the saved dtype) and
    require every tensor to be the merged one."""
    from transformers import AutoModelForCausalLM

    merged = merged.to(dtype)
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    exported = AutoModelForCausalLM.from_pretrained(directory, device_map=modeling.device())
    check_export(merged.state_dict(), exported.state_dict(), OUT)
    say("export", f"{str(exported.dtype).removeprefix('torch.')}, reloaded with AutoModelForCausalLM: "
        "every tensor as merged")
    return exported


def card(p: params.Params, data_counts: dict, eval_metrics: dict, merge_metrics: dict) -> str:
    source = Path(BASE_DIR, modeling.SOURCE_FILE)
    revision = json.loads(source.read_text()).get("revision") if source.is_file() else None
    return model_card(base=p.model.base, revision=revision, license=base_license(modeling.weights_dir(BASE_DIR)),
                      export_dtype=merge_metrics["export_dtype"], data_path=p.data.path, data_counts=data_counts,
                      hyperparameters=card_hyperparameters(p),
                      evaluation_metrics=eval_metrics, merge_metrics=merge_metrics)


def main() -> None:
    p = params.load("lr", "data", "prepare", "model", "train", "evaluate", "merge")
    modeling.check_adapter(ADAPTER_DIR, expected_base=p.model.base)  # before anything is read or loaded
    data_counts, eval_metrics = read_metrics(DATA_METRICS, "prepare"), read_metrics(EVAL_METRICS, "evaluate")
    tokenizer = modeling.load_tokenizer(ADAPTER_DIR)
    test = pd.read_parquet(TEST_DATA)

    tuned = load(p)
    batch = evaluation.prompt_batch(tokenizer, prompts.conversations(test.head(p.merge.num_prompts)), tuned.device)
    reference, reference_tokens = logits_and_greedy(tuned, batch, pad_id=tokenizer.pad_token_id)
    with tuned.disable_adapter():
        base = logits(tuned, batch)

    say("merge", "merge_and_unload")
    merged = tuned.merge_and_unload()
    result = check(merged, batch, reference, base, p.merge.tolerance)

    with io.atomic_path(OUT) as tmp:  # a failure below leaves OUT as it was
        exported = export(merged, tokenizer, tmp, export_dtype(p.merge.dtype))
        del tuned, merged
        export_logits, export_tokens = logits_and_greedy(exported, batch, pad_id=tokenizer.pad_token_id)
        result.update(export_dtype=str(exported.dtype).removeprefix("torch."),
                      export_max_abs_logit_diff=max_difference(export_logits, reference),
                      export_greedy_tokens_match=bool(torch.equal(export_tokens, reference_tokens)))

        rows = score_rows(len(test), p.merge.eval_rows)
        scored = evaluation.response_metrics(exported, tokenizer, prompts.conversations(test.iloc[rows]),
                                             p.evaluate.batch_size, p.prepare.max_length)
        result.update({"merged.rows": len(rows), **flat("merged", scored)})
        say("score", f"merged.eval_loss {scored['eval_loss']:.4f} on {len(rows)} test rows "
            f"(tuned.eval_loss {_cell(eval_metrics.get('tuned.eval_loss'))}, {p.model.quantization} base + adapter)")

        (tmp / "README.md").write_text(card(p, data_counts, eval_metrics, result), encoding="utf-8")
        say("card", f"{OUT}/README.md")
    io.write_json(METRICS_OUT, result)
    print(f"merge: done -> {OUT}, {METRICS_OUT}")


if __name__ == "__main__":
    errors.run(main)
