"""merge: unquantized base + adapter -> standalone model in models/merged, with a logit parity check."""

from __future__ import annotations

import pandas as pd
import torch

from stages import errors, evaluation, io, modeling, params, prompts

BASE_DIR = "models/base"
ADAPTER_DIR = "models/adapter"
TEST_DATA = "data/processed/test.parquet"
OUT = "models/merged"
METRICS_OUT = "metrics/merge.json"


def parity_batch(tokenizer, test: pd.DataFrame, num_prompts: int, device) -> dict:
    """The first test prompts (chat template applied), left-padded into one batch."""
    conversations = prompts.conversations(test.head(num_prompts))
    texts = [tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True)
             for c in conversations]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


@torch.no_grad()
def logits_and_greedy(model, batch, max_new_tokens: int = 16, pad_id: int | None = None):
    logits = model(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    greedy = model.generate(**batch, generation_config=evaluation.generation_config(max_new_tokens=max_new_tokens,
                                                                                   pad_token_id=pad_id))
    return logits[mask], greedy[:, batch["input_ids"].shape[1]:]


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def main() -> None:
    p = params.load("model", "merge")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export_dtype = modeling.compute_dtype(p.merge.dtype)
    modeling.check_adapter(ADAPTER_DIR, expected_base=p.model.base)
    tokenizer = modeling.load_tokenizer(ADAPTER_DIR)
    # Merge and check in fp32, so the tolerance measures the merge, not bf16 rounding.
    tuned = PeftModel.from_pretrained(modeling.load_model(BASE_DIR, "none", torch.float32), ADAPTER_DIR)
    batch = parity_batch(tokenizer, pd.read_parquet(TEST_DATA), p.merge.num_prompts, tuned.device)
    reference_logits, reference_tokens = logits_and_greedy(tuned, batch, pad_id=tokenizer.pad_token_id)
    merged = tuned.merge_and_unload()
    merged_logits, _ = logits_and_greedy(merged, batch, pad_id=tokenizer.pad_token_id)
    difference = max_difference(merged_logits, reference_logits)
    if difference > p.merge.tolerance:
        raise modeling.ModelError(
            f"merged model differs from base+adapter by {difference:.3g} in logits "
            f"(merge.tolerance {p.merge.tolerance:g}); {OUT} was not written"
        )
    with io.atomic_path(OUT) as tmp:
        merged.to(export_dtype).save_pretrained(tmp)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(tmp)
        # Check the export itself: plain transformers, no peft.
        exported = AutoModelForCausalLM.from_pretrained(tmp, dtype=export_dtype, device_map=modeling.device())
        export_logits, export_tokens = logits_and_greedy(exported, batch, pad_id=tokenizer.pad_token_id)
    result = {
        "max_abs_logit_diff": difference,
        "tolerance": p.merge.tolerance,
        "export_dtype": str(export_dtype).removeprefix("torch."),
        "export_max_abs_logit_diff": max_difference(export_logits, reference_logits),
        "export_greedy_tokens_match": bool(torch.equal(export_tokens, reference_tokens)),
        "prompts": int(batch["input_ids"].shape[0]),
    }
    io.write_json(METRICS_OUT, result)
    print(f"merge: max |logit diff| {difference:.2e} <= {p.merge.tolerance:g}; exported as "
          f"{result['export_dtype']}, greedy match {result['export_greedy_tokens_match']} -> {OUT}")


if __name__ == "__main__":
    errors.run(main)
