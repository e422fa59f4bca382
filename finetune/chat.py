"""chat: talk to the tuned model (the package's command, not a DVC stage).

    python -m finetune.chat --prompt "What is a bond?"   # one answer, then exit
    python -m finetune.chat                              # a conversation; empty line, "exit" or Ctrl-D ends it
    python -m finetune.chat --adapter                    # models/base + models/adapter instead of models/merged

Generation settings are the evaluation's (params.yaml evaluate section, evaluation.generation.generation_config):
greedy, or sampled at evaluate.temperature when evaluate.do_sample is true.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import torch

from finetune import chat_format, config, errors, modeling, paths
from finetune.evaluation import generation

EXIT_WORDS = {"exit", "quit"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m finetune.chat", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", help="answer this once and exit (default: an interactive conversation)")
    parser.add_argument(
        "--model", default=paths.MERGED_DIR, help=f"merged model directory (default {paths.MERGED_DIR})"
    )
    parser.add_argument(
        "--adapter",
        nargs="?",
        const=paths.ADAPTER_DIR,
        metavar="DIR",
        help=f"use --base + this LoRA adapter instead of the merged model (default {paths.ADAPTER_DIR})",
    )
    parser.add_argument(
        "--base", default=paths.BASE_DIR, help=f"base model directory for --adapter (default {paths.BASE_DIR})"
    )
    parser.add_argument("--max-new-tokens", type=int, help="default: evaluate.max_new_tokens")
    return parser.parse_args(argv)


def load(args: argparse.Namespace, p: config.Params):
    """The merged model as a user loads it, or base + adapter (quantized as model.quantization)."""
    dtype = modeling.compute_dtype("auto")
    if args.adapter:
        if not Path(args.base).is_dir():
            raise errors.ModelError(f"{args.base}: no base model; run `dvc repro base` first")
        model = modeling.load_tuned(args.base, args.adapter, p.model.quantization, dtype, expected_base=p.model.base)
        return model, modeling.load_tokenizer(args.base)
    if not Path(args.model, "config.json").is_file():
        raise errors.ModelError(
            f"{args.model}: no merged model; run `dvc repro merge` first, "
            "or chat with base + adapter: python -m finetune.chat --adapter"
        )
    return modeling.load_model(args.model, "none", dtype), modeling.load_tokenizer(args.model)


@torch.inference_mode()
def reply(model, tokenizer, history: list[dict], config, seed: int | None = None) -> str:
    """The assistant's answer to the conversation so far, streamed to stdout as it is generated."""
    from transformers import TextStreamer

    model.eval()
    inputs = tokenizer.apply_chat_template(
        history, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(next(model.parameters()).device)
    if seed is not None:
        torch.manual_seed(seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = model.generate(**inputs, generation_config=config, streamer=streamer)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def session(
    model, tokenizer, config, lines: Iterable[str], seed: int | None = None, interactive: bool = False
) -> list[dict]:
    """A conversation: each line is a user turn, answered with the whole history; returns the history."""
    history: list[dict] = []
    for line in lines:
        text = line.strip()
        if not text or text.lower() in EXIT_WORDS:
            break
        history.append({"role": "user", "content": text})
        if interactive:
            print("assistant> ", end="", flush=True)  # the answer streams to stdout after it
        history.append({"role": "assistant", "content": reply(model, tokenizer, history, config, seed)})
    return history


def _typed_lines(interactive: bool):
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            return
        yield line


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    p = config.load("model", "evaluate")
    cfg = p.evaluate
    model, tokenizer = load(args, p)
    settings = generation.generation_config(
        max_new_tokens=args.max_new_tokens or cfg.max_new_tokens,
        eos_token_id=chat_format.stop_token_ids(tokenizer, model.generation_config),
        pad_token_id=tokenizer.pad_token_id,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
    )
    seed = cfg.seed if cfg.do_sample else None
    if args.prompt is not None:
        reply(model, tokenizer, [{"role": "user", "content": args.prompt}], settings, seed)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with the tuned model; an empty line, 'exit' or Ctrl-D ends it.")
    session(model, tokenizer, settings, _typed_lines(interactive), seed, interactive)


if __name__ == "__main__":
    errors.run(main)
