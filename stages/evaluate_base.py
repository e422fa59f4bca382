"""evaluate_base: the untouched base model on the test split, its own stage so lr sweeps reuse it."""

from __future__ import annotations

import pandas as pd

from stages import errors, evaluation, io, modeling, params

BASE_DIR = "models/base"
TEST_DATA = "data/processed/test.parquet"
OUT = "data/eval/base.json"  # read by evaluate, which reports base / tuned / delta side by side


def main() -> None:
    p = params.load("prepare", "model", "evaluate")
    dtype = modeling.compute_dtype("auto")
    tokenizer = modeling.load_tokenizer(BASE_DIR)
    model = modeling.load_model(BASE_DIR, p.model.quantization, dtype)
    metrics, outputs = evaluation.evaluate_model(model, tokenizer, pd.read_parquet(TEST_DATA), p.evaluate,
                                                 p.prepare.max_length)
    generation = evaluation.settings_report(tokenizer, p.evaluate)
    io.write_json(OUT, {"metrics": metrics, "outputs": outputs, "generation": generation})
    print(f"evaluate_base: loss {metrics['eval_loss']:.4f}, accuracy {metrics['mean_token_accuracy']:.3f} -> {OUT}")


if __name__ == "__main__":
    errors.run(main)
