"""export: models/merged -> GGUF files for llama.cpp / Ollama (models/gguf), each read back and checked.

Per export.gguf type: llama.cpp's reference converter (pinned, set up by `make setup`) writes the file;
gguf-py's reader reads it back; its metadata (hyperparameters, tokenizer, chat template, stop tokens) and
every dequantized tensor are checked against the merged model (finetune/export/gguf.py ERROR_BOUNDS); the
dequantized weights, loaded into the HF architecture, are scored on the test split next to the merged model.
Then an Ollama Modelfile whose TEMPLATE renders prompts as the chat template does. Any failed check writes nothing.
"""

from pathlib import Path

import pandas as pd
import torch

from finetune import chat_format, config, errors, files, paths
from finetune.evaluation import comparison, generation, scoring
from finetune.export import converter, gguf, modelfile

PER_FILE = ("size_mb", "tensor_types", "max_error_over_bound", "max_abs_weight_diff")


def say(phase: str, message: str) -> None:
    print(f"export: {phase:<6} {message}", flush=True)


def main() -> None:
    p = config.load("prepare", "evaluate", "export")
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
    )

    merged_dir = Path(paths.MERGED_DIR)
    if not (merged_dir / "config.json").is_file():
        raise errors.ModelError(f"{merged_dir} has no model; run `dvc repro merge` first")
    converter.script()  # the setup error before any work
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model_config = AutoConfig.from_pretrained(merged_dir)
    has_generation_config = (merged_dir / "generation_config.json").is_file()
    gen_config = GenerationConfig.from_pretrained(merged_dir) if has_generation_config else None
    stop_ids = chat_format.stop_token_ids(tokenizer, gen_config)
    template, system = modelfile.choose_template(tokenizer)  # a model Ollama cannot prompt fails here
    test = pd.read_parquet(paths.TEST_DATA)
    n, k = len(test), p.export.eval_rows  # all rows, or the seeded subset merge.eval_rows would pick
    rows = list(range(n)) if k == 0 or k >= n else generation.sample_indices(n, k, seed=0)
    conversations = chat_format.conversations(test.iloc[rows])

    def score(model) -> dict:
        return scoring.response_metrics(model, tokenizer, conversations, p.evaluate.batch_size, p.prepare.max_length)

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    result = {
        "converter": f"llama-cpp-python {converter.LLAMA_CPP_PYTHON}",
        "rows": len(rows),
        **comparison.with_prefix("merged", score(merged)),
    }
    del merged
    say("score", f"merged.eval_loss {result['merged.eval_loss']:.4f} on {len(rows)} test rows")

    with files.atomic_path(paths.GGUF_DIR) as out:  # a failed check leaves models/gguf as it was
        out.mkdir()
        for kind in p.export.gguf:
            path = out / f"model-{kind}.gguf"
            gguf.write(kind, merged_dir, path, p.export.name)
            checked, model = gguf.check_file(path, model_config, tokenizer, merged_dir, stop_ids)
            scored = score(model)
            del model
            result.update(comparison.with_prefix(f"gguf.{kind}", {**{key: checked[key] for key in PER_FILE}, **scored}))
            result.update(architecture=checked["architecture"], pre_tokenizer=checked["pre_tokenizer"])
            say(
                kind,
                f"{checked['size_mb']} MiB; metadata as merged; every tensor within its bound (max error/bound "
                f"{checked['max_error_over_bound']:.3f}); eval_loss {scored['eval_loss']:.4f}",
            )
        stops = tokenizer.convert_ids_to_tokens(stop_ids)
        text = modelfile.render(f"model-{p.export.gguf[0]}.gguf", template, system, stops, p.evaluate.max_new_tokens)
        (out / "Modelfile").write_text(text, encoding="utf-8")
    files.write_json(paths.EXPORT_METRICS, {**result, "stop_tokens": stops})
    print(f"export: done -> {paths.GGUF_DIR}, {paths.EXPORT_METRICS}")


if __name__ == "__main__":
    errors.run(main)
