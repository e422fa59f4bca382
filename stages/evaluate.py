"""evaluate: the fine-tuned model on the test split, next to the base -> metrics/eval.json, samples,
and the generation settings both answered with (metrics/generation.json)."""

import pandas as pd

from finetune import config, errors, files, modeling, paths
from finetune.evaluation import comparison, generation, intervals, suite


def main() -> None:
    p = config.load("prepare", "model", "evaluate")
    dtype = modeling.compute_dtype("auto")
    tokenizer = modeling.load_tokenizer(paths.BASE_DIR)
    base = files.read_json(paths.BASE_RESULTS)
    stop_ids = modeling.stop_token_ids(paths.BASE_DIR, tokenizer)
    # Refused before any model loads when the settings to be used differ; checked again on those measured.
    comparison.same_generation(
        base.get("generation", {}), generation.settings_report(tokenizer, p.evaluate, stop_ids), paths.BASE_RESULTS
    )
    model = modeling.load_tuned(
        paths.BASE_DIR, paths.ADAPTER_DIR, p.model.quantization, dtype, expected_base=p.model.base
    )
    used = {}  # the settings of the GenerationConfig passed to model.generate()
    tuned, outputs, rows = suite.evaluate_rows(
        model, tokenizer, pd.read_parquet(paths.TEST_DATA), p.evaluate, p.prepare.max_length, stop_ids, used=used
    )
    settings = comparison.same_generation(base["generation"], used, paths.BASE_RESULTS)
    samples = comparison.side_by_side(base["outputs"], outputs, paths.BASE_RESULTS)
    metrics = comparison.compare(base["metrics"], tuned)
    base_rows = comparison.same_rows(base.get("rows"), rows, paths.BASE_RESULTS)
    metrics |= intervals.delta_intervals(base_rows, rows, "delta", p.evaluate.bootstrap_samples, p.evaluate.seed)
    files.write_json(paths.EVAL_ROWS, {"base": base_rows, "tuned": rows})
    files.write_jsonl(paths.SAMPLES, samples)
    files.write_json(paths.SAMPLES_PLOT, samples)
    files.write_json(paths.EVAL_METRICS, metrics)
    files.write_json(paths.GENERATION, settings)  # not in eval.json: a list (the end tokens) is no metric
    print(
        f"evaluate: loss {metrics['base.eval_loss']:.4f} -> {metrics['tuned.eval_loss']:.4f} "
        f"(delta {metrics['delta.eval_loss']:+.4f}, 95% [{metrics['delta.eval_loss_low']:+.4f}, "
        f"{metrics['delta.eval_loss_high']:+.4f}]) -> {paths.EVAL_METRICS}"
    )


if __name__ == "__main__":
    errors.run(main)
