"""Typed params: one dataclass per params.yaml section, validated before any work.

`load("train")` reads params.yaml, coerces values (so `2e-5`, `2.0e-5` and "2e-5" are all
floats), and raises one ParamsError listing every problem it found.

A field declares its rule where it is defined; `_build` checks every value against it:

    n: int = rule(5000, ">= 3", why="at least one train, one val and one test row")
    # -> prepare.n must be >= 3 (at least one train, one val and one test row), got 0

A bound is written as the message says it: ">= 2", "> 0", "in (0, 1)" (open), "in [0, 1]" (closed),
SEED, "-1 or >= 1". nonempty=True rejects blanks ("must not be empty"); nonempty="bpe or a directory"
says "must be bpe or a directory, got ''". Choices are a Literal annotation (as `too_long`).
A section's `check(bad)` keeps only the rules that involve several fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from finetune import paths
from finetune.errors import ParamsError

PARAMS_FILE = paths.PARAMS
SEED = "in [0, 2**32)"  # numpy and pandas reject other seeds, after the work has started


def rule(default: Any, bound: str = "", *, why: str = "", nonempty: bool | str = False) -> Any:
    """A dataclass field with `default` whose value must meet `bound` / `nonempty` (see the module docstring)."""
    metadata = {"bound": bound, "why": why, "nonempty": nonempty}
    if problem := _problem("the default", default, **metadata):  # also parses `bound`, at import
        raise ValueError(problem)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _problem(key: str, value: Any, bound: str = "", why: str = "", nonempty: bool | str = False) -> str | None:
    """The message when `value` breaks its field's rule, else None."""
    if nonempty:
        if value.strip() if isinstance(value, str) else value:
            return None
        return f"{key} must not be empty" if nonempty is True else f"{key} must be {nonempty}, got ''"
    if not bound or _within(value, bound):
        return None
    return f"{key} must be {bound}{f' ({why})' if why else ''}, got {_fmt(value)}"


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _within(value: float, bound: str) -> bool:
    also, _, bound = bound.rpartition(" or ")  # "-1 or >= 1"
    if bound.startswith("in "):  # "in [0, 1)": a square bracket includes its end, a round one does not
        low, high = map(_number, bound[4:-1].split(", "))
        inside = (_OPS[">=" if bound[3] == "[" else ">"](value, low)
                  and _OPS["<=" if bound[-1] == "]" else "<"](value, high))
    else:
        op, number = bound.split(" ")
        inside = _OPS[op](value, _number(number))
    return inside or (also != "" and value == _number(also))


def _number(text: str) -> float:
    base, _, power = text.partition("**")  # "2**32"
    return float(base) ** int(power or 1)


@dataclass
class DataParams:
    path: str = rule("data/raw/finance_alpaca.parquet", nonempty=True)
    """Input file (.parquet, .csv, .json, .jsonl), absolute or relative to the repo root."""
    extra_columns: Literal["drop", "keep"] = "drop"
    """Columns besides instruction/input/output: drop them, or keep them unchanged."""


@dataclass
class PrepareParams:
    n: int = rule(5000, ">= 3", why="at least one train, one val and one test row")
    """Rows sampled after cleaning (all of them when fewer survive)."""
    test_fraction: float = rule(0.2, "in (0, 1)")
    """Share of sampled rows held out for evaluation."""
    val_fraction: float = rule(0.05, "in (0, 1)", why="training evaluates on the val split")
    """Share of sampled rows (of all, not of the rest) for validation during training, taken from the non-test rows."""
    seed: int = rule(42, SEED)
    """Seed for sampling and splitting."""
    max_length: int = rule(512, ">= 8")
    """Longest example in tokens after the chat template (train uses the same limit)."""
    too_long: Literal["drop", "truncate"] = "drop"
    """drop: skip longer examples; truncate: keep them, cut to max_length (loses the stop token)."""
    max_drop_fraction: float = rule(0.5, "in [0, 1]")
    """Fail instead of training on the rest when more than this share of rows is dropped."""

    def check(self, bad: list[str]) -> None:
        if 0 < self.test_fraction < 1 and 0 < self.val_fraction < 1 and self.test_fraction + self.val_fraction >= 1:
            bad.append(f"prepare.val_fraction + prepare.test_fraction must be < 1 (the rest is train), "
                       f"got {_fmt(self.val_fraction)} + {_fmt(self.test_fraction)}")


@dataclass
class TinyModelParams:
    """The embedded default: a small random Qwen2 built offline, so `dvc repro` needs no network."""

    vocab_size: int = rule(4096, ">= 300", why="256 bytes + special tokens")
    """BPE vocabulary trained on the embedded sample (the output layer dominates CPU time)."""
    tokenizer: str = rule("bpe", nonempty="bpe or a tokenizer directory")
    """'bpe' to train one, or a directory with Qwen2 vocab.json + merges.txt (151k vocab, slow on CPU)."""
    hidden_size: int = rule(128, ">= 1")
    """Width of the residual stream."""
    intermediate_size: int = rule(384, ">= 1")
    """Width of the MLP inside each layer."""
    num_layers: int = rule(2, ">= 1")
    """Transformer layers."""
    num_heads: int = rule(4, ">= 1")
    """Attention (query) heads; must divide hidden_size."""
    num_kv_heads: int = rule(2, ">= 1")
    """Key/value heads (grouped-query attention); must divide num_heads."""
    seed: int = rule(0, SEED)
    """Seed for the random weights."""

    def check(self, bad: list[str]) -> None:
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            bad.append(f"model.tiny.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads:
            bad.append(f"model.tiny.num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")


@dataclass
class ModelParams:
    base: str = rule("tiny", nonempty=True)
    """'tiny' (embedded default), a hub id such as Qwen/Qwen2-0.5B-Instruct, or a local model directory."""
    revision: str = rule("main", nonempty=True)
    """Hub revision (pin a commit hash for reproducible runs); ignored for tiny and local directories."""
    quantization: Literal["8bit", "4bit", "none"] = "8bit"
    """How train/evaluate load the base: bitsandbytes 8-bit (default), 4-bit NF4, or unquantized."""
    tiny: TinyModelParams = field(default_factory=TinyModelParams)
    """Shape of the embedded tiny base (used when base is 'tiny')."""

    def check(self, bad: list[str]) -> None:
        narrowest = min(self.tiny.hidden_size, self.tiny.intermediate_size)
        if self.base == "tiny" and self.quantization == "4bit" and narrowest < 64:
            bad.append(f"model.quantization 4bit needs model.tiny.hidden_size and intermediate_size >= 64 "
                       f"(the bitsandbytes block size), got {narrowest}")


@dataclass
class LoraParams:
    r: int = rule(8, ">= 1")
    """Rank of the LoRA update matrices."""
    alpha: int = rule(16, "> 0")
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = rule(0.1, "in [0, 1)")
    """Dropout on the LoRA branch's input."""
    target_modules: list[str] = rule(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], nonempty=True
    )
    """Linear layers (by name) that get a LoRA adapter."""


# transformers' SchedulerType values that need no lr_scheduler_kwargs (which params.yaml has no key for):
# cosine_with_min_lr, cosine_warmup_with_min_lr and warmup_stable_decay fail without them.
LRScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau",
]
LR_SCHEDULERS = typing.get_args(LRScheduler)


@dataclass
class TrainParams:
    epochs: float = rule(2, "> 0")
    """Passes over the train split (a fraction stops part-way)."""
    max_steps: int = rule(-1, "-1 or >= 1")
    """Stop after this many optimizer steps (-1: run all epochs)."""
    batch_size: int = rule(2, ">= 1")
    """Rows per device per forward pass."""
    grad_accum: int = rule(4, ">= 1")
    """Forward passes per optimizer step (effective batch = batch_size * grad_accum)."""
    optim: str = "paged_adamw_8bit"
    """A transformers optimizer name (checked by SFTConfig in the train stage); the paged 8-bit AdamW pages
    optimizer state to CPU RAM on spikes."""
    weight_decay: float = rule(0.0, ">= 0")
    """AdamW weight decay."""
    warmup_ratio: float = rule(0.0, "in [0, 1)")
    """Share of optimizer steps spent warming the learning rate up from 0."""
    lr_scheduler: LRScheduler = "linear"
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
    save_steps: int = rule(200, ">= 1")
    """Checkpoint interval; an interrupted run resumes from the last complete one."""
    save_total_limit: int = rule(2, ">= 1")
    """Checkpoints kept on disk (the oldest are deleted)."""
    logging_steps: int = rule(10, ">= 1")
    """Log the training loss every N optimizer steps."""
    eval_steps: int = rule(0, ">= 0")
    """Evaluate every N steps; 0 evaluates once per epoch, as the reference reported."""
    seed: int = rule(42, SEED)
    """Seed for LoRA initialisation, data order and dropout."""
    num_processes: int = rule(1, ">= 1")
    """Data-parallel processes (GPUs, or CPU processes with gloo); the effective batch stays batch_size * grad_accum."""
    lora: LoraParams = field(default_factory=LoraParams)
    """The LoRA adapter's shape."""

    def check(self, bad: list[str]) -> None:
        if self.num_processes >= 1 and self.batch_size >= 1 and self.grad_accum >= 1 and \
                (self.batch_size * self.grad_accum) % self.num_processes:
            bad.append(f"train.num_processes ({self.num_processes}) must divide the effective batch, train.batch_size * "
                       f"train.grad_accum = {self.batch_size} * {self.grad_accum}, so each process gets an equal share")


@dataclass
class EvaluateParams:
    batch_size: int = rule(16, ">= 1")
    """Rows per forward pass; per-batch statistics are streamed, never all logits at once."""
    num_samples: int = rule(50, ">= 0")
    """Test prompts (a seeded subset) answered by base and tuned model."""
    max_new_tokens: int = rule(64, ">= 1")
    """Longest generated answer, in tokens."""
    do_sample: bool = False
    """False: greedy generations only; True: also one seeded sampled generation per prompt."""
    temperature: float = rule(0.7, "> 0")
    """Sampling temperature of the sampled generation (do_sample: true)."""
    seed: int = rule(0, SEED)
    """Seed for the prompt subset and the sampled generation."""


@dataclass
class MergeParams:
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Dtype of the exported model; auto: bf16 on GPUs that support it, else fp32."""
    tolerance: float = rule(1e-3, "> 0")
    """Largest allowed |logit difference| between merged and base+adapter, both in fp32."""
    num_prompts: int = rule(4, ">= 1")
    """Test prompts used for the parity check."""
    eval_rows: int = rule(0, ">= 0", why="0: all test rows")
    """Test rows the exported model is scored on (a fixed seeded subset); 0: all, as evaluate scores."""


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
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    result, bad = _parse(raw, sections)
    if duplicates + bad:
        raise error(*duplicates, *bad, source=str(path))
    return result


def parse(raw: dict, sections: tuple[str, ...] | list[str], source: str = PARAMS_FILE) -> Params:
    """Validate `sections` of an already-read params mapping; raise one ParamsError listing every problem."""
    result, bad = _parse(raw, sections)
    if bad:
        raise error(*bad, source=source)
    return result


def error(*problems: str, source: str = PARAMS_FILE) -> ParamsError:
    """One ParamsError for all `problems`, one per line: also for rules checked where params are used."""
    return ParamsError(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def _parse(raw: dict, sections) -> tuple[Params, list[str]]:
    wanted = [s for s in sections if s not in SECTIONS and s not in TOP_LEVEL_NUMBERS]
    if wanted:  # a bug in the calling stage, not in params.yaml
        raise ValueError(f"unknown params section(s) {', '.join(map(str, wanted))}")
    bad: list[str] = []
    known = [*SECTIONS, *TOP_LEVEL_NUMBERS]
    for key in raw:
        if key not in known:
            bad.append(f"unknown key {key}{did_you_mean(key, known, top_level=True)}")
    result = Params()
    for name in sections:
        if name in TOP_LEVEL_NUMBERS:
            value = _coerce(raw.get(name, TOP_LEVEL_NUMBERS[name]), float, name, bad)
            if value is _INVALID:
                value = TOP_LEVEL_NUMBERS[name]
            elif problem := _problem(name, value, "> 0"):
                bad.append(problem)
            setattr(result, name, value)
            continue
        setattr(result, name, _build(SECTIONS[name], raw.get(name), name, bad))
    return result, bad


def _build(cls: type, raw: Any, prefix: str, bad: list[str]) -> Any:
    """An instance of dataclass `cls` from mapping `raw` (None: all defaults); problems go to `bad`."""
    raw = {} if raw is None else raw  # `train:` with nothing under it
    if not isinstance(raw, dict):
        bad.append(f"{prefix} must be a mapping, got {type(raw).__name__} {_short(raw)}")
        raw = {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            bad.append(f"unknown key {prefix}.{key}{did_you_mean(key, names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}.{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, raw.get(f.name), key, bad)
        elif f.name in raw and (value := _coerce(raw[f.name], hint, key, bad)) is not _INVALID:
            kwargs[f.name] = value
            if problem := _problem(key, value, **f.metadata):
                bad.append(problem)
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(bad)
    return obj


_INVALID = object()


def _coerce(value: Any, hint: Any, key: str, bad: list[str]) -> Any:
    """`value` as type `hint`, or _INVALID after saying in `bad` what it must be."""
    converted, expected = _convert(value, hint)
    if expected:
        bad.append(f"{key} must be {expected}, got {_short(value)}")
        return _INVALID
    return converted


def _convert(value: Any, hint: Any) -> tuple[Any, str]:
    """(`value` as type `hint`, "") or (None, what a value of that type must be)."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and value in choices:  # Literal["auto", True, False]
            return value, ""
        text = value.strip() if isinstance(value, str) else None
        names = [str(c).lower() if isinstance(c, bool) else c for c in choices]
        return (text, "") if text in choices else (None, f"one of {', '.join(names)}")
    if typing.get_origin(hint) is list:
        if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
            return [v.strip() for v in value], ""
        return None, "a list of names"
    if hint is bool:
        text = value.strip().lower() if isinstance(value, str) else None
        if isinstance(value, bool) or text in ("true", "false"):
            return value if isinstance(value, bool) else text == "true", ""
        return None, "true or false"
    if hint in (int, float):
        number = _to_number(value)
        if hint is int:
            if number is None or isinstance(number, float) and not number.is_integer():
                return None, "a whole number"
            return int(number), ""
        if number is None:
            return None, "a number"
        try:
            return float(number), ""
        except OverflowError:  # an int literal too large for a float
            return None, "a finite number"
    if hint is str:
        if isinstance(value, str) or isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), ""  # a number: e.g. a revision hash that YAML read as one
        return None, "text"
    raise TypeError(f"no coercion for {hint}")  # a bug in this module, not in params.yaml


def _to_number(value: Any) -> float | int | None:
    """YAML 1.1 reads 2e-5 as a string: accept numeric strings, reject bools and NaN/inf."""
    if isinstance(value, str):
        try:
            value = int(value.strip())  # exact, however large
        except ValueError:
            try:
                value = float(value.strip())
            except ValueError:
                return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


# Names users bring from other tools, pointing at where that setting lives here.
ALIASES = {
    "learning_rate": "the top-level lr",
    "lr": "the top-level lr",
    "num_train_epochs": "train.epochs",
    "gradient_accumulation_steps": "train.grad_accum",
    "per_device_train_batch_size": "train.batch_size",
}


def did_you_mean(key: Any, names, top_level: bool = False, aliases: bool = True) -> str:
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
