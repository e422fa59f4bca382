"""merge: unquantized base + adapter -> standalone model in models/merged, checked, scored, with a model card.

The recipe: load (fp32 base + adapter), merge (peft's merge_and_unload), check (merged logits match
base+adapter within merge.tolerance), export (save in merge.dtype, reload with plain transformers,
every tensor as saved), score (the export as a user loads it, on the test split's response tokens),
card (models/merged/README.md). Any failed check writes nothing.
"""

from pathlib import Path

import pandas as pd
import torch

from finetune import chat_format, config, errors, files, merging, model_card, modeling, paths, pipeline
from finetune.evaluation import comparison, generation, intervals, scoring


def read_metrics(path: str, stage: str) -> dict:
    if not Path(path).is_file():
        raise errors.DataError(f"{path} not found (the model card needs it); run `dvc repro {stage}` first")
    return files.read_json(path)


def main() -> None:
    p = config.load("lr", "data", "prepare", "model", "train", "evaluate", "merge")
    modeling.check_adapter(paths.ADAPTER_DIR, expected_base=p.model.base)  # before anything is read or loaded
    data_counts = read_metrics(paths.DATA_METRICS, "prepare")
    eval_metrics = read_metrics(paths.EVAL_METRICS, "evaluate")
    tokenizer = modeling.load_tokenizer(paths.ADAPTER_DIR)
    test = pd.read_parquet(paths.TEST_DATA)

    tuned = merging.load_fp32(p.model.base)
    conversations = chat_format.conversations(test.head(p.merge.num_prompts))
    batch = generation.prompt_batch(tokenizer, conversations, tuned.device)
    stop_ids = modeling.stop_token_ids(paths.BASE_DIR, tokenizer)
    reference, reference_tokens = merging.logits_and_greedy(tuned, batch, stop_ids, pad_id=tokenizer.pad_token_id)
    with tuned.disable_adapter():
        base = merging.logits(tuned, batch)

    merging.say("merge", "merge_and_unload")
    merged = tuned.merge_and_unload()
    result = merging.check(merged, batch, reference, base, p.merge.tolerance)

    with files.atomic_path(paths.MERGED_DIR) as tmp:  # a failure below leaves models/merged as it was
        exported = merging.export(merged, tokenizer, tmp, merging.export_dtype(p.merge.dtype))
        del tuned, merged
        export_logits, export_tokens = merging.logits_and_greedy(
            exported, batch, stop_ids, pad_id=tokenizer.pad_token_id
        )
        result.update(
            export_dtype=str(exported.dtype).removeprefix("torch."),
            export_max_abs_logit_diff=merging.max_difference(export_logits, reference),
            export_greedy_tokens_match=bool(torch.equal(export_tokens, reference_tokens)),
        )

        rows = merging.score_rows(len(test), p.merge.eval_rows)
        merged_rows = scoring.response_rows(
            exported, tokenizer, chat_format.conversations(test.iloc[rows]), p.evaluate.batch_size, p.prepare.max_length
        )
        scored = scoring.summarize_stats(scoring.total_of(merged_rows))
        result.update({"merged.rows": len(rows), **comparison.with_prefix("merged", scored)})
        tuned_rows = read_metrics(paths.EVAL_ROWS, "evaluate")["tuned"]["scored"]  # merged minus tuned, same rows
        tuned_rows = {key: [values[i] for i in rows] for key, values in tuned_rows.items()}
        result.update(
            intervals.delta_intervals(
                {"scored": tuned_rows},
                {"scored": merged_rows},
                "merged_minus_tuned",
                p.evaluate.bootstrap_samples,
                p.evaluate.seed,
            )
        )
        merging.say(
            "score",
            f"merged.eval_loss {scored['eval_loss']:.4f} on {len(rows)} test rows (tuned.eval_loss "
            f"{model_card.cell(eval_metrics.get('tuned.eval_loss'))}, {p.model.quantization} base + adapter)",
        )

        _, merge_keys = pipeline.stage_inputs("merge")
        card = model_card.for_run(p, merge_keys, data_counts, eval_metrics, result, tokenizer, stop_ids)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        merging.say("card", f"{paths.MERGED_DIR}/README.md")
    files.write_json(paths.MERGE_METRICS, result)
    print(f"merge: done -> {paths.MERGED_DIR}, {paths.MERGE_METRICS}")


if __name__ == "__main__":
    errors.run(main)
