"""Benchmark: evaluation of 1,000 test rows + the default generations on the embedded tiny model.

The issue's target: under a minute on 2 CPU cores. Run from the repo root:

    .venv/bin/python benchmarks/bench_evaluate.py [--rows 1000] [--quantization 8bit]

Builds the tiny model exactly as params.yaml's model.tiny says (stages.base.build_tiny), loads it
the way evaluate_base does (model.quantization, compute_dtype("auto")), cleans the embedded sample
with stages.prepare.clean (rows repeated up to --rows), and times evaluation.evaluate_model with the
evaluate section of params.yaml. Prints and saves to benchmarks/results/evaluate.json: seconds for
response_metrics and for generation, tokens/s, and peak RSS. No assertion: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)  # params.yaml and data/raw are read relative to the repo root
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from stages import base, evaluation, modeling, params, prepare, prompts  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "evaluate.json"
TARGET_S = 60.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def test_rows(tokenizer, n_rows: int, max_length: int, too_long: str) -> pd.DataFrame:
    """The embedded sample as prepare cleans it (same length rule), repeated up to n_rows."""
    frame = pd.read_parquet(base.TINY_CORPUS)
    kept, _ = prepare.clean(frame, lambda c: prompts.token_length(tokenizer, c), max_length, too_long)
    repeats = -(-n_rows // len(kept))
    return pd.concat([kept] * repeats, ignore_index=True).iloc[:n_rows].astype("string").reset_index(drop=True)


class Timed:
    """Wraps a function of `evaluation` so evaluate_model's own calls are timed, one by one."""

    def __init__(self, name: str):
        self.name, self.inner, self.seconds, self.results = name, getattr(evaluation, name), [], []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.inner(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        self.results.append(result)
        return result

    def __enter__(self):
        setattr(evaluation, self.name, self)
        return self

    def __exit__(self, *exc):
        setattr(evaluation, self.name, self.inner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="test rows (default 1000)")
    parser.add_argument("--quantization", choices=["8bit", "4bit", "none"], help="default: params.yaml's")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    p = params.load("model", "evaluate", "prepare")
    quantization = args.quantization or p.model.quantization
    cfg = p.evaluate
    t0 = time.perf_counter()
    model, tokenizer = base.build_tiny(p.model.tiny)
    with tempfile.TemporaryDirectory(prefix="bench_tiny_") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        tokenizer = modeling.load_tokenizer(tmp)
        model = modeling.load_model(tmp, quantization, modeling.compute_dtype("auto"))
    build_s = time.perf_counter() - t0
    test = test_rows(tokenizer, args.rows, p.prepare.max_length, p.prepare.too_long)
    print(f"model: tiny {p.model.tiny.__dict__}, {quantization}, "
          f"{sum(t.numel() for t in model.parameters()):,} parameters (built + loaded in {build_s:.1f}s)")
    print(f"data: {len(test)} test rows; evaluate: {cfg.__dict__}; torch threads {torch.get_num_threads()}")

    load_before = os.getloadavg()[0]  # other work on the machine slows every figure below
    with Timed("response_metrics") as scored, Timed("generate") as generated:
        start = time.perf_counter()
        metrics, outputs = evaluation.evaluate_model(model, tokenizer, test, cfg, p.prepare.max_length)
        total_s = time.perf_counter() - start
    load_after = os.getloadavg()[0]

    response_s = sum(scored.seconds)
    generation_s = sum(generated.seconds)
    gen_tokens = sum(g["tokens"] for batch in generated.results for g in batch)
    # The forward pass reads prompt and response tokens; the metrics count the response ones.
    input_tokens = sum(len(evaluation.encode_example(tokenizer, c, p.prepare.max_length)[0])
                       for c in prompts.conversations(test))
    figures = {
        "rows": len(test),
        "generations": len(outputs),
        "quantization": quantization,
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "total_s": round(total_s, 2),
        "response_metrics_s": round(response_s, 2),
        "generation_s": round(generation_s, 2),
        "other_s": round(total_s - response_s - generation_s, 2),
        "response_tokens": metrics["response_tokens"],
        "input_tokens": input_tokens,
        "input_tokens_per_s": round(input_tokens / response_s, 1),
        "generated_tokens": gen_tokens,
        "generated_tokens_per_s": round(gen_tokens / generation_s, 1) if generation_s else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "target_s": TARGET_S,
        "under_target": total_s < TARGET_S,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE: far less slowdown on a busy machine
        "cpu_count": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "eval_loss": metrics["eval_loss"],
    }
    print(f"response_metrics: {response_s:.2f}s for {len(test)} rows "
          f"({input_tokens} tokens, {figures['input_tokens_per_s']:.0f} tokens/s; "
          f"{metrics['response_tokens']} response tokens scored)")
    print(f"generation:       {generation_s:.2f}s for {len(outputs)} prompts x {cfg.max_new_tokens} max new tokens "
          f"({gen_tokens} tokens, {figures['generated_tokens_per_s']} tokens/s)")
    print(f"total:            {total_s:.2f}s (target < {TARGET_S:.0f}s: {'ok' if figures['under_target'] else 'OVER'}); "
          f"peak RSS {figures['peak_rss_mb']:.0f} MiB; load average {load_before:.1f} -> {load_after:.1f} "
          f"on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
