"""Batched greedy (or seeded sampled) generation with every decoding knob set from params, not the model."""

from __future__ import annotations

import random

import torch
from tqdm import tqdm

from finetune import chat_format


def sample_indices(n_rows: int, k: int, seed: int) -> list[int]:
    """A fixed, seeded subset of test rows, in row order."""
    return sorted(random.Random(seed).sample(range(n_rows), min(k, n_rows)))


def generation_settings(
    max_new_tokens: int,
    eos_token_id: list[int] | None = None,
    pad_token_id: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> dict:
    """Every decoding knob of transformers' generate(), from the arguments alone (JSON-ready).

    A fresh GenerationConfig is not enough: generate() fills each field left None from the model's own
    generation_config (Qwen2-0.5B-Instruct's: repetition_penalty 1.1, top_p 0.8, top_k 20, temperature
    0.7, do_sample true). So every knob that changes the tokens is set here, to its neutral value unless
    an argument says otherwise. Greedy: argmax at every step. Sampling: temperature only, no top-k/top-p.
    eos_token_id None keeps the model's end tokens.
    """
    settings = {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": 0,
        "do_sample": do_sample,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "renormalize_logits": False,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
    }
    if do_sample:
        settings.update(
            temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0
        )
    else:  # unused by greedy decoding; set so the model's values are not copied in (and warned about)
        settings.update(temperature=1.0, top_p=1.0, top_k=50, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    return settings


def generation_config(**settings):
    """A fresh transformers GenerationConfig from generation_settings(**settings): evaluation, merge and chat."""
    from transformers import GenerationConfig

    return GenerationConfig(**generation_settings(**settings))


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    conversations: list[dict],
    batch_size: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    stop_ids: list[int] | None = None,
    used: dict | None = None,
) -> list[dict]:
    """Responses for the prompts of `conversations`: left-padded batches, KV cache, stop at an end token
    (`stop_ids`; default: chat_format.stop_token_ids of the tokenizer and the model's generation_config).

    `used`, when given, is filled with the settings of the GenerationConfig passed to model.generate(), read
    from that object at the call (passed_settings), and the seed when sampling: a record of what ran, not of
    what generation_settings describes."""
    model.eval()
    end_ids = stop_ids if stop_ids is not None else chat_format.stop_token_ids(tokenizer, model.generation_config)
    config = generation_config(
        max_new_tokens=max_new_tokens,
        eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=do_sample,
        temperature=temperature,
    )
    device = next(model.parameters()).device
    results = []
    for start in tqdm(
        range(0, len(conversations), batch_size),
        desc="sampling" if do_sample else "generating",
        unit="batch",
        disable=None,
    ):
        batch = prompt_batch(tokenizer, conversations[start : start + batch_size], device)
        if do_sample:
            torch.manual_seed(seed + start)
        if used is not None:
            used.update(passed_settings(config), **({"seed": seed} if do_sample else {}))
        output = model.generate(**batch, generation_config=config)
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            end = next((i for i, token in enumerate(row) if token in end_ids), None)
            stopped = end is not None
            tokens = row[:end] if stopped else row
            results.append(
                {"text": tokenizer.decode(tokens, skip_special_tokens=True), "tokens": len(tokens), "stopped": stopped}
            )
    return results


def passed_settings(config) -> dict:
    """The fields set on a GenerationConfig (every one that differs from transformers' defaults), JSON-ready."""
    return {k: v for k, v in sorted(config.to_diff_dict().items()) if k != "transformers_version"}


def flat_report(greedy: dict, sampled: dict | None = None) -> dict:
    """generate()'s `used` records of the greedy (and sampled) answers as flat generation.* keys, as
    metrics/generation.json and data/eval/base.json keep them."""
    return {f"generation.{k}": v for k, v in greedy.items()} | {
        f"generation.sampled.{k}": v for k, v in (sampled or {}).items()
    }


def prompt_batch(tokenizer, conversations: list[dict], device):
    """The conversations' prompts (chat template, generation prompt) as one batch, left-padded: generation
    continues from the last position of every row."""
    texts = [
        tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)


def settings_report(tokenizer, cfg, stop_ids: list[int]) -> dict:
    """How evaluate_model's answers will be produced, every knob, as flat generation.* keys
    (generation.sampled.* too when evaluate.do_sample); `stop_ids` as chat_format.stop_token_ids gives them.
    A description, for refusing a mismatched base result before any model is loaded; what is written is
    suite.evaluate_rows' `used`, measured at the call."""
    ends, pad = stop_ids, tokenizer.pad_token_id
    report = {f"generation.{k}": v for k, v in generation_settings(cfg.max_new_tokens, ends, pad).items()}
    if cfg.do_sample:
        sampled = generation_settings(cfg.max_new_tokens, ends, pad, do_sample=True, temperature=cfg.temperature)
        report.update(
            {f"generation.sampled.{k}": v for k, v in sampled.items()}, **{"generation.sampled.seed": cfg.seed}
        )
    return report
