"""Merging a LoRA adapter into the unquantized base, and the checks that make a wrong merge fail:
parity of the merged logits with base+adapter, and an export that reloads with plain transformers as merged."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune import modeling, paths
from finetune.errors import ModelError
from finetune.evaluation import generation

SUBSET_SEED = 0  # merge.eval_rows picks the same rows on every run


def say(phase: str, message: str) -> None:
    print(f"merge: {phase:<6} {message}", flush=True)


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    """fp32 logits at the batch's real (unpadded) positions."""
    return model(**batch).logits.float()[batch["attention_mask"].bool()]


@torch.no_grad()
def logits_and_greedy(model, batch, stop_ids: list[int], max_new_tokens: int = 16, pad_id: int | None = None):
    """fp32 logits and greedy tokens (ended by `stop_ids`, chat_format.stop_token_ids) of a batch of prompts."""
    config = generation.generation_config(max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id)
    greedy = model.generate(**batch, generation_config=config)
    return logits(model, batch), greedy[:, batch["input_ids"].shape[1] :]


def export_dtype(setting: str) -> torch.dtype:
    """As train.precision, except that auto never picks fp16 (its range overflows on some weights): fp32 there."""
    dtype = modeling.compute_dtype(setting)
    return torch.float32 if setting == "auto" and dtype == torch.float16 else dtype


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check_parity(difference: float, tolerance: float) -> None:
    if difference > tolerance:
        raise ModelError(
            f"merged model differs from base+adapter by {difference:.3g} in logits "
            f"(merge.tolerance {tolerance:g}); the merge lost or misplaced adapter weights; {paths.MERGED_DIR} was not written"
        )


def check_export(saved: dict[str, torch.Tensor], reloaded: dict[str, torch.Tensor], path) -> None:
    """The reloaded export holds exactly the merged weights (cast to the export dtype): nothing lost,
    re-initialised or tied wrongly on the way through safetensors."""
    missing = sorted(saved.keys() - reloaded.keys())
    extra = sorted(reloaded.keys() - saved.keys())
    changed = [
        name
        for name in sorted(saved.keys() & reloaded.keys())
        if saved[name].dtype != reloaded[name].dtype
        or not torch.equal(saved[name], reloaded[name].to(saved[name].device))
    ]
    if missing or extra or changed:
        problems = [
            f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", extra), ("changed", changed))
            if names
        ]
        raise ModelError(
            f"{path} reloaded with plain transformers does not hold the merged weights "
            f"({'; '.join(problems)}); {paths.MERGED_DIR} was not written"
        )


# ---------------------------------------------------------------- score


def score_rows(n_rows: int, eval_rows: int) -> list[int]:
    """Test rows the export is scored on: all (eval_rows 0), or a fixed seeded subset."""
    if eval_rows == 0 or eval_rows >= n_rows:
        return list(range(n_rows))
    return generation.sample_indices(n_rows, eval_rows, SUBSET_SEED)


# ---------------------------------------------------------------- the stage's steps


def load_fp32(base: str):
    """The base unquantized in fp32 + the adapter: the merge and its check then measure the merge,
    not bf16 rounding."""
    say("load", f"{base} unquantized in fp32 + {paths.ADAPTER_DIR}")
    return modeling.load_tuned(paths.BASE_DIR, paths.ADAPTER_DIR, "none", torch.float32, expected_base=base)


def check(merged, batch, reference: torch.Tensor, base: torch.Tensor, tolerance: float) -> dict:
    difference = max_difference(logits(merged, batch), reference)
    check_parity(difference, tolerance)
    effect = max_difference(base, reference)
    say(
        "check",
        f"max |logit diff| {difference:.2e} <= {tolerance:g} on {len(batch['input_ids'])} prompts; "
        f"the adapter moves logits by up to {effect:.2e}"
        + (
            " (below merge.tolerance: this check cannot tell a merge that dropped the adapter)"
            if effect <= tolerance
            else ""
        ),
    )
    return {
        "max_abs_logit_diff": difference,
        "tolerance": tolerance,
        "adapter_max_abs_logit_diff": effect,
        "prompts": len(batch["input_ids"]),
    }


def export(merged, tokenizer, directory: Path, dtype: torch.dtype):
    """Save in the export dtype, reload as a user would (plain transformers, the saved dtype) and
    require every tensor to be the merged one."""
    from transformers import AutoModelForCausalLM

    merged = merged.to(dtype)
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    exported = AutoModelForCausalLM.from_pretrained(directory, device_map=modeling.device())
    check_export(merged.state_dict(), exported.state_dict(), paths.MERGED_DIR)
    say(
        "export",
        f"{str(exported.dtype).removeprefix('torch.')}, reloaded with AutoModelForCausalLM: every tensor as merged",
    )
    return exported
