"""evaluate_base: the untouched base model on the test split, its own stage so lr sweeps reuse it."""

import pandas as pd

from finetune import config, errors, files, modeling, paths
from finetune.evaluation import suite


def main() -> None:
    p = config.load("prepare", "model", "evaluate")
    dtype = modeling.compute_dtype("auto")
    tokenizer = modeling.load_tokenizer(paths.BASE_DIR)
    stop_ids = modeling.stop_token_ids(paths.BASE_DIR, tokenizer)  # the template's end of turn, eos, the model's
    model = modeling.load_model(paths.BASE_DIR, p.model.quantization, dtype)
    settings = {}  # as captured at model.generate()
    metrics, outputs, rows = suite.evaluate_rows(
        model, tokenizer, pd.read_parquet(paths.TEST_DATA), p.evaluate, p.prepare.max_length, stop_ids, used=settings
    )
    files.write_json(paths.BASE_RESULTS, {"metrics": metrics, "outputs": outputs, "generation": settings, "rows": rows})
    print(
        f"evaluate_base: loss {metrics['eval_loss']:.4f}, accuracy {metrics['mean_token_accuracy']:.3f} "
        f"-> {paths.BASE_RESULTS}"
    )


if __name__ == "__main__":
    errors.run(main)
