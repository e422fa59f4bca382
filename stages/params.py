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

from stages.errors import StageError

PARAMS_FILE = "params.yaml"


class ParamsError(StageError, ValueError):
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
        if self.n < 2:  # one row could only go to train, leaving an empty test split
            bad.append(f"prepare.n must be >= 2 (at least one train and one test row), got {self.n}")
        if not 0 < self.test_fraction < 1:
            bad.append(f"prepare.test_fraction must be in (0, 1), got {_fmt(self.test_fraction)}")
        _check_seed("prepare.seed", self.seed, bad)
        if self.max_length < 8:
            bad.append(f"prepare.max_length must be >= 8, got {self.max_length}")
        if not 0 <= self.max_drop_fraction <= 1:
            bad.append(f"prepare.max_drop_fraction must be in [0, 1], got {_fmt(self.max_drop_fraction)}")


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
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                bad.append(f"model.tiny.{name} must be >= 1, got {getattr(self, name)}")
        if not self.tokenizer.strip():
            bad.append("model.tiny.tokenizer must be bpe or a tokenizer directory, got ''")
        _check_seed("model.tiny.seed", self.seed, bad)
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
        if not self.revision.strip():
            bad.append("model.revision must not be empty")
        self.tiny.check(bad)
        narrowest = min(self.tiny.hidden_size, self.tiny.intermediate_size)
        if self.base == "tiny" and self.quantization == "4bit" and narrowest < 64:
            bad.append(f"model.quantization 4bit needs model.tiny.hidden_size and intermediate_size >= 64 "
                       f"(the bitsandbytes block size), got {narrowest}")


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
            bad.append(f"train.lora.dropout must be in [0, 1), got {_fmt(self.dropout)}")
        if not self.target_modules:
            bad.append("train.lora.target_modules must not be empty")


# transformers' OptimizerNames (some need extra packages); tests/test_params.py checks the list
# against the installed transformers so an upgrade that renames one fails a test, not a run.
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor",
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad",
    "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit",
    "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise",
    "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd",
    "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw",
)
# transformers' SchedulerType values that need no lr_scheduler_kwargs (which params.yaml has no key for):
# cosine_with_min_lr, cosine_warmup_with_min_lr and warmup_stable_decay fail without them.
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau",
)


@dataclass
class TrainParams:
    epochs: float = 2
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run all epochs)."""
    batch_size: int = 2
    grad_accum: int = 4
    optim: str = "paged_adamw_8bit"
    """A transformers optimizer name; the paged 8-bit AdamW pages optimizer state to CPU RAM on spikes."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    """One of LR_SCHEDULERS."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on GPUs that support it, fp32 elsewhere (bf16 on a CPU without it is ~10x slower)."""
    completion_only_loss: bool = True
    """True: loss on the response only; False: on the whole chat text, as the reference did."""
    padding_free: bool = True
    """True: a micro-batch is its examples end to end, no padding, attention kept per example; False: padded (reference)."""
    labelled_logits_only: bool = True
    """True: the output layer scores only positions with a label, on CPU too (TRL does so on GPUs); False: all (reference)."""
    use_liger_kernel: Literal["auto", True, False] = "auto"
    """Liger's Triton kernels (package liger-kernel, GPU only): auto uses them on CUDA where installed; False: off (reference)."""
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
            bad.append(f"train.epochs must be > 0, got {_fmt(self.epochs)}")
        if self.max_steps == 0 or self.max_steps < -1:
            bad.append(f"train.max_steps must be -1 or >= 1, got {self.max_steps}")
        for name in ("batch_size", "grad_accum", "save_steps", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                bad.append(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_steps < 0:
            bad.append(f"train.eval_steps must be >= 0, got {self.eval_steps}")
        if self.weight_decay < 0:
            bad.append(f"train.weight_decay must be >= 0, got {_fmt(self.weight_decay)}")
        if not 0 <= self.warmup_ratio < 1:
            bad.append(f"train.warmup_ratio must be in [0, 1), got {_fmt(self.warmup_ratio)}")
        # Checked here, not by SFTConfig after the base is loaded and stale checkpoints are cleared.
        if self.optim not in OPTIMIZERS:
            bad.append(f"train.optim must be one of transformers' optimizer names, got {self.optim!r}"
                       f"{_did_you_mean(self.optim, OPTIMIZERS, aliases=False)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            bad.append(f"train.lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        _check_seed("train.seed", self.seed, bad)
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
            bad.append(f"evaluate.temperature must be > 0, got {_fmt(self.temperature)}")
        _check_seed("evaluate.seed", self.seed, bad)


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
            bad.append(f"merge.tolerance must be > 0, got {_fmt(self.tolerance)}")
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 (invalid byte at byte offset {e.start})") from None
    except OSError as e:
        raise ParamsError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        raw, duplicates = _read_yaml(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    result, bad = _parse(raw, sections)
    _raise_if(duplicates + bad, str(path))
    return result


def parse(raw: dict, sections: tuple[str, ...] | list[str], source: str = PARAMS_FILE) -> Params:
    """Validate `sections` of an already-read params mapping; raise one ParamsError listing every problem."""
    result, bad = _parse(raw, sections)
    _raise_if(bad, source)
    return result


def _raise_if(bad: list[str], source: str) -> None:
    if bad:
        raise ParamsError(f"{source}: {len(bad)} problem(s):\n  " + "\n  ".join(bad))


def _parse(raw: dict, sections) -> tuple[Params, list[str]]:
    wanted = [s for s in sections if s not in SECTIONS and s not in TOP_LEVEL_NUMBERS]
    if wanted:  # a bug in the calling stage, not in params.yaml
        raise ValueError(f"unknown params section(s) {', '.join(map(str, wanted))}")
    bad: list[str] = []
    known = [*SECTIONS, *TOP_LEVEL_NUMBERS]
    for key in raw:
        if key not in known:
            bad.append(f"unknown key {key}{_did_you_mean(key, known, top_level=True)}")
    result = Params()
    for name in sections:
        if name in TOP_LEVEL_NUMBERS:
            value = _coerce(raw.get(name, TOP_LEVEL_NUMBERS[name]), float, name, bad)
            if value is _INVALID:
                value = TOP_LEVEL_NUMBERS[name]
            elif not value > 0:
                bad.append(f"{name} must be > 0, got {_fmt(value)}")
            setattr(result, name, value)
            continue
        setattr(result, name, _build(SECTIONS[name], raw.get(name), name, bad))
    return result, bad


def _build(cls: type, raw: Any, prefix: str, bad: list[str]) -> Any:
    """An instance of dataclass `cls` from mapping `raw` (None: all defaults); problems go to `bad`."""
    if raw is None:  # `train:` with nothing under it
        raw = {}
    if not isinstance(raw, dict):
        bad.append(f"{prefix} must be a mapping, got {type(raw).__name__} {_short(raw)}")
        raw = {}
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
            kwargs[name] = _build(hint, raw[name], f"{prefix}.{name}", bad)
        else:
            value = _coerce(raw[name], hint, f"{prefix}.{name}", bad)
            if value is not _INVALID:
                kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "check") and "." not in prefix:  # a section's check also checks its subsections
        obj.check(bad)
    return obj


_INVALID = object()


def _coerce(value: Any, hint: Any, key: str, bad: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and value in choices:  # e.g. Literal["auto", True, False]
            return value
        text = value.strip() if isinstance(value, str) else None
        if text in choices:
            return text
        names = [str(c).lower() if isinstance(c, bool) else c for c in choices]
        bad.append(f"{key} must be one of {', '.join(names)}, got {_short(value)}")
        return _INVALID
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
            return [v.strip() for v in value]
        bad.append(f"{key} must be a list of names, got {_short(value)}")
        return _INVALID
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        bad.append(f"{key} must be true or false, got {_short(value)}")
        return _INVALID
    if hint in (int, float):
        number = _to_number(value)
        if number is None:
            bad.append(f"{key} must be a {'whole ' if hint is int else ''}number, got {_short(value)}")
            return _INVALID
        if hint is int:
            if isinstance(number, float) and not number.is_integer():
                bad.append(f"{key} must be a whole number, got {_short(value)}")
                return _INVALID
            return int(number)
        try:
            return float(number)
        except OverflowError:  # an int literal too large for a float
            bad.append(f"{key} must be a finite number, got {_short(value)}")
            return _INVALID
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a revision hash that YAML read as a number
        bad.append(f"{key} must be text, got {_short(value)}")
        return _INVALID
    raise TypeError(f"no coercion for {hint}")  # a bug in this module, not in params.yaml


def _to_number(value: Any) -> float | int | None:
    """YAML 1.1 reads 2e-5 as a string: accept numeric strings, reject bools and NaN/inf."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)  # exact, however large
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _check_seed(key: str, seed: int, bad: list[str]) -> None:
    if not 0 <= seed < 2**32:  # numpy and pandas reject other seeds, after the work has started
        bad.append(f"{key} must be in [0, 2**32), got {seed}")


# Names users bring from other tools, pointing at where that setting lives here.
ALIASES = {
    "learning_rate": "the top-level lr",
    "lr": "the top-level lr",
    "num_train_epochs": "train.epochs",
    "gradient_accumulation_steps": "train.grad_accum",
    "per_device_train_batch_size": "train.batch_size",
}


def _did_you_mean(key: Any, names, top_level: bool = False, aliases: bool = True) -> str:
    close = difflib.get_close_matches(str(key), [str(n) for n in names], n=1, cutoff=0.65)  # not extra -> train
    if close:
        return f" (did you mean {close[0]}?)"
    alias = difflib.get_close_matches(str(key), list(ALIASES), n=1, cutoff=0.75) if aliases else []
    if not alias:
        return ""
    target = ALIASES[alias[0]]
    return f" (did you mean {'lr' if top_level and target == 'the top-level lr' else target}?)"


def _fmt(value: float) -> str:
    """A number as written in params.yaml: 0 rather than 0.0, 1e-05 rather than 0.00001."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- YAML reading: PyYAML silently keeps the last of two equal keys; report them instead. ---


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` then overrides is fine
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            earlier = first.setdefault(key, key_node.start_mark)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if earlier is not key_node.start_mark:
            loader.duplicates.append(
                f"duplicate key {key} on line {key_node.start_mark.line + 1} (first on line {earlier.line + 1}; "
                "YAML would silently keep only the last)"
            )
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(text: str) -> tuple[Any, list[str]]:
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()
