"""evaluate: the fine-tuned model on the test split, next to the base -> metrics/eval.json, samples,
and the generation settings both answered with (metrics/generation.json)."""

from __future__ import annotations

import pandas as pd

from stages import errors, evaluation, io, modeling, params

BASE_DIR = "models/base"
ADAPTER_DIR = "models/adapter"
TEST_DATA = "data/processed/test.parquet"
BASE_RESULTS = "data/eval/base.json"
METRICS_OUT = "metrics/eval.json"
SAMPLES_OUT = "metrics/samples.jsonl"
SAMPLES_PLOT = "metrics/samples.json"  # the same rows as a JSON list: `dvc plots` reads no JSONL
GENERATION_OUT = "metrics/generation.json"  # how the answers were produced: every decoding knob


def compare(base: dict, tuned: dict) -> dict:
    """Flat base.* / tuned.* / delta.* keys (delta = tuned - base), as `dvc metrics diff` lists them."""
    out = {}
    for key in sorted(set(base) | set(tuned)):
        out[f"base.{key}"] = base.get(key)
        out[f"tuned.{key}"] = tuned.get(key)
        if isinstance(base.get(key), (int, float)) and isinstance(tuned.get(key), (int, float)):
            out[f"delta.{key}"] = tuned[key] - base[key]
    return out


def side_by_side(base_outputs: list[dict], tuned_outputs: list[dict]) -> list[dict]:
    rows = []
    for b, t in zip(base_outputs, tuned_outputs, strict=True):
        if b["row"] != t["row"]:
            raise io.DataError(f"{BASE_RESULTS} was made for other test rows; rerun `dvc repro evaluate_base`")
        row = {"row": t["row"], "prompt": t["prompt"], "reference": t["reference"],
               "base_output": b["greedy"], "tuned_output": t["greedy"]}
        if "sampled" in t:
            row.update(base_sampled=b.get("sampled"), tuned_sampled=t["sampled"])
        rows.append(row)
    return rows


def same_generation(base: dict, tuned: dict) -> dict:
    """The generation settings both models answered with (they must be the same to compare answers)."""
    if base != tuned:
        changed = sorted(k for k in set(base) | set(tuned) if base.get(k) != tuned.get(k))
        raise io.DataError(f"{BASE_RESULTS} was generated with other settings ({', '.join(changed)}); "
                           "rerun `dvc repro evaluate_base`")
    return tuned


def main() -> None:
    p = params.load("prepare", "model", "evaluate")
    dtype = modeling.compute_dtype("auto")
    tokenizer = modeling.load_tokenizer(BASE_DIR)
    base = io.read_json(BASE_RESULTS)
    generation = same_generation(base.get("generation", {}), evaluation.settings_report(tokenizer, p.evaluate))
    model = modeling.load_tuned(BASE_DIR, ADAPTER_DIR, p.model.quantization, dtype, expected_base=p.model.base)
    tuned, outputs = evaluation.evaluate_model(model, tokenizer, pd.read_parquet(TEST_DATA), p.evaluate,
                                               p.prepare.max_length)
    samples = side_by_side(base["outputs"], outputs)
    metrics = compare(base["metrics"], tuned)
    io.write_jsonl(SAMPLES_OUT, samples)
    io.write_json(SAMPLES_PLOT, samples)
    io.write_json(METRICS_OUT, metrics)
    io.write_json(GENERATION_OUT, generation)  # not in eval.json: a list (the end tokens) is no metric
    print(f"evaluate: loss {metrics['base.eval_loss']:.4f} -> {metrics['tuned.eval_loss']:.4f} "
          f"(delta {metrics['delta.eval_loss']:+.4f}) -> {METRICS_OUT}")


if __name__ == "__main__":
    errors.run(main)
