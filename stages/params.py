"""Typed params: one dataclass per params.yaml section, validated before any work.

`load("train")` reads params.yaml, coerces values (so `2e-5`, `2.0e-5` and "2e-5" are all
floats), and raises one ParamsError listing every problem it found.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """All problems found in params.yaml, one per line."""


@dataclass
class DataParams:
    path: str = "data/raw/finance_alpaca.parquet"
    """Input file (.parquet, .csv, .json, .jsonl), absolute or relative to the repo root."""
    extra_columns: Literal["drop", "keep"] = "drop"
    """Columns besides instruction/input/output: drop them, or keep them unchanged."""

    def check(self, bad: list[str]) -> None:
        if not self.path.strip():
            bad.append("data.path must not be empty")


@dataclass
class PrepareParams:
    n: int = 5000
    """Rows sampled after cleaning (all of them when fewer survive)."""
    test_fraction: float = 0.2
    """Share of sampled rows held out for evaluation."""
    seed: int = 42
    """Seed for sampling and splitting."""
    max_length: int = 512
    """Longest example in tokens after the chat template (train uses the same limit)."""
    too_long: Literal["drop", "truncate"] = "drop"
    """drop: skip longer examples; truncate: keep them, cut to max_length (loses the stop token)."""
    max_drop_fraction: float = 0.5
    """Fail instead of training on the rest when more than this share of rows is dropped."""

    def check(self, bad: list[str]) -> None:
        if self.n < 1:
            bad.append(f"prepare.n must be >= 1, got {self.n}")
        if not 0 < self.test_fraction < 1:
            bad.append(f"prepare.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.max_length < 8:
            bad.append(f"prepare.max_length must be >= 8, got {self.max_length}")
        if not 0 <= self.max_drop_fraction <= 1:
            bad.append(f"prepare.max_drop_fraction must be in [0, 1], got {self.max_drop_fraction}")


@dataclass
class TinyModelParams:
    """The embedded default: a small random Qwen2 built offline, so `dvc repro` needs no network."""

    vocab_size: int = 4096
    """BPE vocabulary trained on the embedded sample (the output layer dominates CPU time)."""
    tokenizer: str = "bpe"
    """'bpe' to train one, or a directory with Qwen2 vocab.json + merges.txt (151k vocab, slow on CPU)."""
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    seed: int = 0
    """Seed for the random weights."""

    def check(self, bad: list[str]) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                bad.append(f"model.tiny.{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 300:
            bad.append(f"model.tiny.vocab_size must be >= 300 (256 bytes + special tokens), got {self.vocab_size}")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            bad.append(f"model.tiny.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads:
            bad.append(f"model.tiny.num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")


@dataclass
class ModelParams:
    base: str = "tiny"
    """'tiny' (embedded default), a hub id such as Qwen/Qwen2-0.5B-Instruct, or a local model directory."""
    revision: str = "main"
    """Hub revision (pin a commit hash for reproducible runs); ignored for tiny and local directories."""
    quantization: Literal["8bit", "4bit", "none"] = "8bit"
    """How train/evaluate load the base: bitsandbytes 8-bit (default), 4-bit NF4, or unquantized."""
    tiny: TinyModelParams = field(default_factory=TinyModelParams)

    def check(self, bad: list[str]) -> None:
        if not self.base.strip():
            bad.append("model.base must not be empty")
        self.tiny.check(bad)


@dataclass
class LoraParams:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def check(self, bad: list[str]) -> None:
        if self.r < 1:
            bad.append(f"train.lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            bad.append(f"train.lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            bad.append(f"train.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            bad.append("train.lora.target_modules must not be empty")


@dataclass
class TrainParams:
    epochs: float = 2
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run all epochs)."""
    batch_size: int = 2
    grad_accum: int = 4
    optim: str = "paged_adamw_8bit"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on GPUs that support it, fp32 elsewhere (bf16 on a CPU without it is ~10x slower)."""
    completion_only_loss: bool = True
    """True: loss on the response only; False: on the whole chat text, as the reference did."""
    gradient_checkpointing: bool = False
    """True cuts activation memory for long sequences at ~30% more compute."""
    save_steps: int = 200
    """Checkpoint interval; an interrupted run resumes from the last complete one."""
    save_total_limit: int = 2
    logging_steps: int = 10
    eval_steps: int = 0
    """Evaluate every N steps; 0 evaluates once per epoch, as the reference reported."""
    seed: int = 42
    lora: LoraParams = field(default_factory=LoraParams)

    def check(self, bad: list[str]) -> None:
        if self.epochs <= 0:
            bad.append(f"train.epochs must be > 0, got {self.epochs}")
        if self.max_steps == 0 or self.max_steps < -1:
            bad.append(f"train.max_steps must be -1 or >= 1, got {self.max_steps}")
        for name in ("batch_size", "grad_accum", "save_steps", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                bad.append(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_steps < 0:
            bad.append(f"train.eval_steps must be >= 0, got {self.eval_steps}")
        if self.weight_decay < 0:
            bad.append(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            bad.append(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        self.lora.check(bad)


@dataclass
class EvaluateParams:
    batch_size: int = 16
    """Rows per forward pass; per-batch statistics are streamed, never all logits at once."""
    num_samples: int = 50
    """Test prompts (a seeded subset) answered by base and tuned model."""
    max_new_tokens: int = 64
    do_sample: bool = False
    """False: greedy generations only; True: also one seeded sampled generation per prompt."""
    temperature: float = 0.7
    seed: int = 0

    def check(self, bad: list[str]) -> None:
        if self.batch_size < 1:
            bad.append(f"evaluate.batch_size must be >= 1, got {self.batch_size}")
        if self.num_samples < 0:
            bad.append(f"evaluate.num_samples must be >= 0, got {self.num_samples}")
        if self.max_new_tokens < 1:
            bad.append(f"evaluate.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            bad.append(f"evaluate.temperature must be > 0, got {self.temperature}")


@dataclass
class MergeParams:
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Dtype of the exported model; auto: bf16 on GPUs that support it, else fp32."""
    tolerance: float = 1e-3
    """Largest allowed |logit difference| between merged and base+adapter, both in fp32."""
    num_prompts: int = 4
    """Test prompts used for the parity check."""

    def check(self, bad: list[str]) -> None:
        if self.tolerance <= 0:
            bad.append(f"merge.tolerance must be > 0, got {self.tolerance}")
        if self.num_prompts < 1:
            bad.append(f"merge.num_prompts must be >= 1, got {self.num_prompts}")


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "prepare": PrepareParams,
    "model": ModelParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "merge": MergeParams,
}
TOP_LEVEL_NUMBERS = {"lr": 1e-5}  # top level so `dvc exp run -S lr=2e-5` works


@dataclass
class Params:
    """The sections a stage asked for; the others stay None."""

    lr: float | None = None
    data: DataParams | None = None
    prepare: PrepareParams | None = None
    model: ModelParams | None = None
    train: TrainParams | None = None
    evaluate: EvaluateParams | None = None
    merge: MergeParams | None = None


def load(*sections: str, path: str | os.PathLike | None = None) -> Params:
    """Read and validate `sections` (and `lr` when asked) from params.yaml; report all problems at once."""
    path = Path(path or os.environ.get("PARAMS_FILE", PARAMS_FILE))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    return parse(raw, sections, source=str(path))


def parse(raw: dict, sections: tuple[str, ...] | list[str], source: str = PARAMS_FILE) -> Params:
    bad: list[str] = []
    known = set(SECTIONS) | set(TOP_LEVEL_NUMBERS)
    for key in raw:
        if key not in known:
            bad.append(f"unknown key {key}{_did_you_mean(key, known)}")
    result = Params()
    for name in sections:
        if name in TOP_LEVEL_NUMBERS:
            value = _coerce(raw.get(name, TOP_LEVEL_NUMBERS[name]), float, name, bad)
            if isinstance(value, float) and not value > 0:
                bad.append(f"{name} must be > 0, got {_fmt(value)}")
            setattr(result, name, value)
            continue
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            bad.append(f"{name} must be a mapping, got {type(section).__name__}")
            section = {}
        setattr(result, name, _build(SECTIONS[name], section, name, bad))
    if bad:
        raise ParamsError(f"{source}: {len(bad)} problem(s):\n  " + "\n  ".join(bad))
    return result


def _build(cls: type, raw: dict, prefix: str, bad: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            bad.append(f"unknown key {prefix}.{key}{_did_you_mean(key, names)}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            sub = raw[name] or {}
            if not isinstance(sub, dict):
                bad.append(f"{prefix}.{name} must be a mapping, got {type(sub).__name__}")
                continue
            kwargs[name] = _build(hint, sub, f"{prefix}.{name}", bad)
        else:
            value = _coerce(raw[name], hint, f"{prefix}.{name}", bad)
            if value is not _INVALID:
                kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "check") and prefix.count(".") == 0:
        obj.check(bad)
    return obj


_INVALID = object()


def _coerce(value: Any, hint: Any, key: str, bad: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        text = str(value).strip() if not isinstance(value, bool) else None
        if text in choices:
            return text
        bad.append(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return _INVALID
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
            return [v.strip() for v in value]
        bad.append(f"{key} must be a list of names, got {value!r}")
        return _INVALID
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        bad.append(f"{key} must be true or false, got {value!r}")
        return _INVALID
    if hint in (int, float):
        number = _to_number(value)
        if number is None:
            bad.append(f"{key} must be a number, got {value!r}")
            return _INVALID
        if hint is int:
            if not float(number).is_integer():
                bad.append(f"{key} must be a whole number, got {value!r}")
                return _INVALID
            return int(number)
        return float(number)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        bad.append(f"{key} must be text, got {value!r}")
        return _INVALID
    raise TypeError(f"no coercion for {hint}")  # a bug in this module, not in params.yaml


def _to_number(value: Any) -> float | int | None:
    """YAML 1.1 reads 2e-5 as a string: accept numeric strings, reject bools and NaN/inf."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


# Names users bring from other tools, pointing at where that setting lives here.
ALIASES = {"learning_rate": "the top-level lr", "lr": "the top-level lr", "num_train_epochs": "epochs"}


def _did_you_mean(key: str, names) -> str:
    close = difflib.get_close_matches(str(key), list(names), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    alias = difflib.get_close_matches(str(key), list(ALIASES), n=1, cutoff=0.75)
    return f" (did you mean {ALIASES[alias[0]]}?)" if alias else ""


def _fmt(value: float) -> str:
    return f"{value:g}"
