"""The real architecture, checked where it can run: the whole pipeline on a Qwen2-0.5B-shaped model.

    make check-real                      # CPU: a handful of rows and steps, ~5 min on 2 cores
    python -m benchmarks.check_real --gpu   # CUDA: reference settings, 8-bit and 4-bit, tokens/s and MFU

The tiny default hides what breaks at real size. This builds a random-init model with
Qwen2-0.5B-Instruct's published config (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864, vocabulary 151,936, tied embeddings, rope theta 1e6), its shipped generation_config (sampling,
repetition_penalty 1.1) and the real Qwen2 tokenizer from ../shared/tokenizers/qwen2, saves it in
bf16 to a local directory, points `model.local_dir` at it (`model.base: local`) in a temp copy of the project, runs every
stage as DVC would (`python -m stages.<name>`, in dvc.yaml's order) and checks its outputs. It prints
each stage's seconds and peak memory and writes benchmarks/results/check_real[_gpu].json.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import common

# Qwen2-0.5B-Instruct's config.json and generation_config.json, as published.
QWEN2_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_theta=1e6,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    bos_token_id=151643,
    eos_token_id=151645,
    sliding_window=32768,
    max_window_layers=24,
    use_sliding_window=False,
)
SHIPPED_GENERATION = dict(
    bos_token_id=151643,
    pad_token_id=151643,
    do_sample=True,
    eos_token_id=[151645, 151643],
    repetition_penalty=1.1,
    temperature=0.7,
    top_p=0.8,
    top_k=20,
)
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
# --family llama: Llama-3.2-1B's layout scaled to ~0.5B (hidden 1024, 16 layers, 16 heads, 8 KV heads, intermediate
# 4096, tied embeddings, rope theta 5e5) on the Qwen2 vocabulary plus Llama-3's special tokens and chat template
# (no ChatML marker in it), eos <|eot_id|>, no pad token, generation_config eos [<|eot_id|>, <|end_of_text|>].
LLAMA_05B = dict(
    hidden_size=1024,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    intermediate_size=4096,
    tie_word_embeddings=True,
    rope_theta=5e5,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
)
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# --family phi3: Phi-3's layout (fused qkv_proj and gate_up_proj, untied head, KV heads = heads) scaled to ~0.5B on the
# Qwen2 vocabulary plus Phi-3's special tokens and template; eos <|endoftext|>, generation_config eos
# [<|endoftext|>, <|end|>]. The reference LoRA list names layers Phi-3 fuses, so this family trains all-linear.
PHI3_05B = dict(
    hidden_size=1024,
    num_hidden_layers=12,
    num_attention_heads=16,
    num_key_value_heads=16,
    intermediate_size=2816,
    tie_word_embeddings=False,
    max_position_embeddings=4096,
    original_max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)
PHI3_SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
FAMILY_PARAMS = {"phi3": {"train": {"lora": {"target_modules": "all-linear"}}}}

# A handful of rows and steps: about 9 tokens/s of training on a 2-core CPU.
CPU_PARAMS = {
    "prepare": {"n": 60, "max_length": 128, "too_long": "drop"},
    "train": {"max_steps": 2, "batch_size": 1, "grad_accum": 2, "save_steps": 1, "eval_steps": 0, "logging_steps": 1},
    "evaluate": {"batch_size": 16, "num_samples": 2, "max_new_tokens": 8},
    "merge": {"num_prompts": 2},
}
# The reference settings (params.yaml's defaults: batch 2 x 4, max length 512, paged_adamw_8bit,
# bf16 where supported), a few optimizer steps.
GPU_PARAMS = {
    "prepare": {"n": 400},
    "train": {"max_steps": 20, "save_steps": 10, "eval_steps": 0, "logging_steps": 5},
    "evaluate": {"num_samples": 16},
}


def build_model_dir(out: Path) -> dict:
    """A random Qwen2-0.5B-architecture model + the real tokenizer, saved like a hub snapshot (bf16)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from finetune import tiny

    tokenizer = tiny.qwen2_tokenizer_from_files(common.QWEN2_TOKENIZER)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_IDS}
    if ids != SPECIAL_IDS:
        raise SystemExit(f"check_real: special-token ids {ids}, expected Qwen2's {SPECIAL_IDS}")
    torch.manual_seed(0)
    config = Qwen2Config(**QWEN2_05B)
    config.dtype = torch.bfloat16
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(**SHIPPED_GENERATION)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "special_ids": ids, "layers": 24}


def qwen2_vocab_with(specials: list[str]):
    """The real Qwen2 vocabulary without its own special tokens, plus another family's."""
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=str(common.QWEN2_TOKENIZER / "vocab.json"),
        merges=str(common.QWEN2_TOKENIZER / "merges.txt"),
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer, {token: tokenizer.convert_tokens_to_ids(token) for token in specials}


def save_random(model_class, config, generation, tokenizer, out: Path) -> dict:
    """A random bf16 model of `config`, saved with its generation_config and tokenizer like a hub snapshot."""
    import torch

    torch.manual_seed(0)
    config.dtype = torch.bfloat16
    model = model_class(config).to(torch.bfloat16)
    model.generation_config = generation
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "layers": config.num_hidden_layers}


def build_llama_dir(out: Path) -> dict:
    """A random Llama-architecture ~0.5B model on the Qwen2 vocabulary + Llama-3's special tokens and template."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer, ids = qwen2_vocab_with(LLAMA_SPECIALS)
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.chat_template = (
        "<|begin_of_text|>",
        "<|eot_id|>",
        LLAMA_TEMPLATE,
    )
    ends = [ids["<|eot_id|>"], ids["<|end_of_text|>"]]
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ends, **LLAMA_05B
    )
    generation = GenerationConfig(
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ends, do_sample=True, temperature=0.6, top_p=0.9
    )
    built = save_random(LlamaForCausalLM, config, generation, tokenizer, out)
    return {**built, "special_ids": ids, "stop_ids": ends}


def build_phi3_dir(out: Path) -> dict:
    """A random Phi-3-architecture ~0.5B model on the Qwen2 vocabulary + Phi-3's special tokens and template."""
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    tokenizer, ids = qwen2_vocab_with(PHI3_SPECIALS)
    tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = PHI3_TEMPLATE
    eos = ids["<|endoftext|>"]
    config = Phi3Config(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=eos, pad_token_id=eos, **PHI3_05B)
    generation = GenerationConfig(eos_token_id=[eos, ids["<|end|>"]], pad_token_id=eos)
    built = save_random(Phi3ForCausalLM, config, generation, tokenizer, out)
    return {**built, "special_ids": ids, "stop_ids": [ids["<|end|>"], eos]}


BUILDERS = {"qwen2": build_model_dir, "llama": build_llama_dir, "phi3": build_phi3_dir}


def check_outputs(project: Path, built: dict | None = None) -> list[str]:
    """What every stage must have produced at real size; returns the problems found."""
    problems = []

    def read(path):
        file = project / path
        if not file.is_file():
            problems.append(f"{path} missing")
            return {}
        return json.loads(file.read_text())

    def finite(label, value):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{label} is {value!r}, expected a finite number")

    data = read("metrics/data.json")
    for split in ("train", "val", "test"):
        if not data.get(split):
            problems.append(f"metrics/data.json: no {split} rows")
    train = read("metrics/train.json")
    for key in ("train_loss", "eval_loss"):
        finite(f"train.{key}", train.get(key))
    from safetensors.torch import load_file

    adapter = project / "models/adapter/adapter_model.safetensors"
    if adapter.is_file():
        dtypes = {str(t.dtype) for t in load_file(adapter).values()}
        if dtypes != {"torch.float32"}:
            problems.append(f"adapter weights are {dtypes}, expected fp32")
    else:
        problems.append("models/adapter/adapter_model.safetensors missing")
    evaluation = read("metrics/eval.json")
    for key in ("base.eval_loss", "tuned.eval_loss"):
        finite(key, evaluation.get(key))
    generation = read("metrics/generation.json")
    if built and "stop_ids" in built and generation.get("generation.eos_token_id") != built["stop_ids"]:
        problems.append(
            f"generation stopped at {generation.get('generation.eos_token_id')}, "
            f"expected the model's end of turn and eos {built['stop_ids']}"
        )
    settings = {k: v for k, v in generation.items() if "repetition_penalty" in k}
    if not settings or any(v != 1.0 for v in settings.values()):
        problems.append(f"generation used {settings}, expected no repetition penalty (greedy)")
    merge = read("metrics/merge.json")
    if merge and not merge.get("max_abs_logit_diff", math.inf) <= merge.get("tolerance", 0):
        problems.append(f"merge parity {merge.get('max_abs_logit_diff')} > tolerance {merge.get('tolerance')}")
    merged_config = project / "models/merged/config.json"
    if merged_config.is_file():
        config = json.loads(merged_config.read_text())
        layers = built["layers"] if built else QWEN2_05B["num_hidden_layers"]
        if config.get("vocab_size", 0) < QWEN2_05B["vocab_size"] - 1000 or config.get("num_hidden_layers") != layers:
            problems.append("models/merged/config.json is not the 0.5B architecture")
    else:
        problems.append("models/merged/config.json missing")
    return problems


def flops_per_token_lora(parameters: int) -> float:
    """Forward (2 x params) plus activation gradients (2 x params); frozen weights need no weight gradients."""
    return 4.0 * parameters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="reference settings on CUDA, 8-bit and 4-bit")
    parser.add_argument(
        "--family",
        choices=sorted(BUILDERS),
        default="qwen2",
        help="qwen2: Qwen2-0.5B-Instruct's config (default); llama / phi3: a Llama-3- / Phi-3-style ~0.5B",
    )
    parser.add_argument("--keep", type=Path, help="keep the project here instead of a temp dir")
    parser.add_argument(
        "--bf16-peak-tflops",
        type=float,
        default=None,
        help="the card's dense bf16 peak for MFU (e.g. 989 for an H100/H200 SXM)",
    )
    args = parser.parse_args(argv)
    if common.qwen2_tokenizer_dir() is None:
        raise SystemExit(f"check_real: needs the real Qwen2 tokenizer in {common.QWEN2_TOKENIZER}")

    root = args.keep or Path(tempfile.mkdtemp(prefix="check_real_"))
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / f"{args.family}-0.5b-random"
    start = time.perf_counter()
    built = common.isolated(BUILDERS[args.family], model_dir)["result"]  # apart: children inherit a parent's peak RSS
    print(f"check_real: built {model_dir} ({built['parameters']:,} parameters) in {time.perf_counter() - start:.0f}s")

    profiles = ["8bit", "4bit"] if args.gpu else ["8bit"]
    report = {
        "machine": common.machine(),
        "versions": common.versions(),
        "family": args.family,
        "model": built,
        "runs": {},
    }
    for quantization in profiles:
        changes = common.deep_update(
            common.deep_update(GPU_PARAMS if args.gpu else CPU_PARAMS, FAMILY_PARAMS.get(args.family, {})),
            {
                "model": {"base": "local", "local_dir": str(model_dir), "quantization": quantization},
                "data": {"path": common.data_source()},
            },
        )
        project = common.copy_project(root / quantization, changes)
        stages = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
        figures = {}
        for name in stages:
            figures[name] = common.run_stage(name, project, env={"TOKENIZERS_PARALLELISM": "false"})
            print(
                f"  {quantization} {name:<14} {figures[name]['seconds']:>7.1f} s  "
                f"peak {figures[name]['peak_rss_mb']:>6.0f} MB"
            )
        problems = check_outputs(project, built)
        speed = (
            json.loads((project / "metrics/train_speed.json").read_text())
            if (project / "metrics/train_speed.json").is_file()
            else {}
        )
        run = {"stages": figures, "problems": problems, "train_speed": speed}
        if args.bf16_peak_tflops and speed.get("tokens_per_second"):
            achieved = flops_per_token_lora(built["parameters"]) * speed["tokens_per_second"]
            run["mfu"] = achieved / (args.bf16_peak_tflops * 1e12)
        report["runs"][quantization] = run
        print(f"  {quantization}: {'all outputs checked' if not problems else 'PROBLEMS: ' + '; '.join(problems)}")

    family = "" if args.family == "qwen2" else f"_{args.family}"
    out = common.REPO / "benchmarks" / "results" / f"check_real{family}{'_gpu' if args.gpu else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"-> {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if any(run["problems"] for run in report["runs"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
