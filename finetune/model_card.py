"""models/merged/README.md: a Hugging Face model card (YAML metadata + markdown), the same bytes for the same run."""

from __future__ import annotations

import json
from pathlib import Path

from finetune import modeling, paths, pipeline
from finetune.evaluation.comparison import METRICS

CARD_TAGS = ["lora", "peft", "trl", "sft", "merged"]
# The merge stage's params keys (dvc.yaml) that shaped the weights, shown as the card's hyperparameters.
HYPERPARAMETER_KEYS = ("lr", "train.", "prepare.max_length", "model.quantization")


def hyperparameters(p, keys: list[str]) -> dict:
    """The values of the params `keys` (merge's, as dvc.yaml lists them) that shaped the weights, sections
    flattened (train.lora -> train.lora.r, ...), in dvc.yaml's order."""
    shown = {}
    for key in keys:
        if key == "lr" or key.startswith(HYPERPARAMETER_KEYS[1:]):
            value = pipeline.param_value(p, key)
            shown.update({f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value})
    return shown


def base_license(weights_dir: str) -> str:
    """The base model card's license (a derivative keeps it), or 'unknown' when the base has no card."""
    from huggingface_hub import metadata_load

    card = Path(weights_dir, "README.md")
    meta = metadata_load(card) if card.is_file() else None
    return str((meta or {}).get("license") or "unknown")


def cell(value) -> str:
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


def template_name(setting: str, base: str) -> str:
    """The chat template model.chat_template chose, in words."""
    if setting == "chatml":
        return "the ChatML chat template (`model.chat_template: chatml`)"
    if setting != "auto":
        return f"the chat template of `{setting}` (`model.chat_template`)"
    return "the tiny default's ChatML chat template" if base == "tiny" else f"`{base}`'s own chat template"


EXAMPLE = [{"role": "user", "content": "What is a bond?"}, {"role": "assistant", "content": "A loan to an issuer."}]


def chat_example(tokenizer) -> str:
    """One exchange as the tokenizer's chat template renders it: what a prompt and its answer look like."""
    return tokenizer.apply_chat_template(EXAMPLE, tokenize=False)


def render(
    *,
    base: str,
    revision: str | None,
    license: str,
    export_dtype: str,
    data_path: str,
    data_counts: dict,
    hyperparameters: dict,
    evaluation_metrics: dict,
    merge_metrics: dict,
    template: str,
    example: str,
    stop_tokens: list[str],
) -> str:
    """models/merged/README.md: Hugging Face model card (YAML metadata + markdown), deterministic."""
    from huggingface_hub import ModelCardData

    meta = ModelCardData(
        base_model=base, license=license, library_name="transformers", pipeline_tag="text-generation", tags=CARD_TAGS
    ).to_yaml()
    counts = data_counts
    splits = " / ".join(f"{counts[s]} {s}" for s in ("train", "val", "test") if s in counts)
    data_line = f"`{data_path}`"
    if counts:
        data_line += (
            f": {counts.get('rows_read', '?')} rows read, {counts.get('rows_kept', '?')} kept after "
            f"cleaning, {counts.get('sampled', '?')} sampled and split by prompt ({splits})."
        )
    hyper_rows = "\n".join(f"| `{k}` | {_param(v)} |" for k, v in hyperparameters.items())
    trained_on = QUANTIZED.get(hyperparameters.get("model.quantization"), "the")
    metric_rows = "\n".join(
        f"| {m} | {cell(evaluation_metrics.get(f'base.{m}'))} | {cell(evaluation_metrics.get(f'tuned.{m}'))} "
        f"| {cell(merge_metrics.get(f'merged.{m}'))} |"
        for m in METRICS
    )
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
Prompts use {template}; an answer ends at any of {", ".join(f"`{t}`" for t in stop_tokens)}. One exchange:

```text
{example.rstrip(chr(10))}
```

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

From the project that made it: `python -m finetune.chat --prompt "What is a bond?"` answers once;
`python -m finetune.chat` starts an interactive session.

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
{merge_metrics["max_abs_logit_diff"]:.2e} (tolerance {merge_metrics["tolerance"]:g}); the adapter moves them by up to
{merge_metrics["adapter_max_abs_logit_diff"]:.2e}.
"""


def for_run(
    p, merge_keys: list[str], data_counts: dict, eval_metrics: dict, merge_metrics: dict, tokenizer, stop_ids: list[int]
) -> str:
    """The card of this run: its base (and pinned revision), license, data, hyperparameters and metrics."""
    source_file = Path(paths.BASE_DIR, paths.SOURCE_FILE)
    source = json.loads(source_file.read_text()) if source_file.is_file() else {}
    revision = source.get("revision")
    base = source.get("path", p.model.local_dir) if p.model.base == "local" else p.model.base  # the directory itself
    return render(
        base=base,
        revision=revision,
        license=base_license(modeling.weights_dir(paths.BASE_DIR)),
        export_dtype=merge_metrics["export_dtype"],
        data_path=p.data.path,
        data_counts=data_counts,
        hyperparameters=hyperparameters(p, merge_keys),
        evaluation_metrics=eval_metrics,
        merge_metrics=merge_metrics,
        template=template_name(p.model.chat_template, base),
        example=chat_example(tokenizer),
        stop_tokens=tokenizer.convert_ids_to_tokens(stop_ids),
    )
