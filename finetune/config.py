"""Typed params: one pydantic model per params.yaml section, validated before any work.

`load("train")` reads params.yaml and raises one ParamsError listing every problem it found. A field
is declared once: type, default, bound (`Field(ge=3)`; `Literal[...]` for choices) and the docstring
under it (its description). `_message` words pydantic's errors as params.yaml problems:

    n: int = Field(5000, ge=3, json_schema_extra={"why": "at least one train, one val and one test row"})
    # -> prepare.n must be >= 3 (at least one train, one val and one test row), got 0

Types are strict, after `_from_yaml` turns what PyYAML (YAML 1.1) read into the field's type where the
text is unambiguous: 2e-5 and "2e-5" are floats, 200.0 an int, "true" a bool, a number is text for a
str field. A section's `model_validator` checks the rules involving several of its fields.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from finetune import paths
from finetune.errors import ParamsError

PARAMS_FILE = paths.PARAMS

Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy and pandas reject other seeds, after the work has started
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _all_or_at_least_one(steps: int) -> int:  # a bound Field(ge=, ...) cannot say
    if steps == -1 or steps >= 1:
        return steps
    raise PydanticCustomError("bound", "-1 or >= 1")


def _check(model: BaseModel, *rules: tuple[Any, str]) -> Any:
    """A model_validator's result: `model`, unless some of its (broken?, message) `rules` are broken."""
    if broken := [message for is_broken, message in rules if is_broken]:
        raise PydanticCustomError("rules", "{rules}", {"rules": "\n".join(broken)})
    return model


class _Section(BaseModel):
    """Unknown keys are errors, types strict (after `_from_yaml`), docstrings the fields' descriptions."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_forms(cls, value: Any, info: ValidationInfo) -> Any:
        return _from_yaml(value, _kind(cls.model_fields[info.field_name]))


class DataParams(_Section):
    path: str = Field("data/raw/finance_alpaca.parquet", min_length=1)
    """Input file (.parquet, .csv, .json, .jsonl), absolute or relative to the repo root."""
    extra_columns: Literal["drop", "keep"] = "drop"
    """Columns besides instruction/input/output: drop them, or keep them unchanged (alpaca format only)."""
    format: Literal["auto", "alpaca", "messages", "sharegpt"] = "auto"
    """auto: decided from the columns (and printed); alpaca: instruction/input/output rows; messages: OpenAI-style
    [{role, content}] conversations; sharegpt: [{from, value}] conversations (human -> user, gpt -> assistant)."""
    columns: dict[Literal["instruction", "input", "output", "messages"], Name] = Field(default_factory=dict)
    """Your column names, for the alpaca columns (e.g. {instruction: question, input: context, output: answer})
    and for the conversation column (messages: the column holding the turns, default messages / conversations)."""
    split: str = ""
    """For a folder holding several splits (train-00000-of-00002.parquet, test.jsonl, a saved DatasetDict): the
    one to read; empty: the only one there (an error lists them when there are several)."""


class PrepareParams(_Section):
    n: int = Field(5000, ge=3, json_schema_extra={"why": "at least one train, one val and one test row"})
    """Rows sampled after cleaning (all when fewer survive): more rows, a better adapter and a longer train."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of sampled rows held out for evaluation (reference: 80/20): more is a steadier score, less to train on."""
    val_fraction: float = Field(0.05, gt=0, lt=1, json_schema_extra={"why": "training evaluates on the val split"})
    """Share of sampled rows (of all, not of the rest) for validation during training, taken from the non-test rows."""
    seed: Seed = 42
    """Seed for sampling and splitting."""
    max_length: int = Field(512, ge=8)
    """Longest example in tokens after the chat template (train uses the same limit); memory grows with it."""
    too_long: Literal["drop", "truncate"] = "drop"
    """drop: skip longer examples; truncate: keep them, cut to max_length (loses the stop token, and train pads)."""
    max_drop_fraction: float = Field(0.5, ge=0, le=1)
    """Fail instead of training on the rest when more than this share of rows is dropped."""

    @model_validator(mode="after")
    def _room_for_train(self) -> PrepareParams:
        v, t = self.val_fraction, self.test_fraction
        return _check(
            self,
            (
                v + t >= 1,
                f"prepare.val_fraction + prepare.test_fraction must be < 1 (the rest is "
                f"train), got {_fmt(v)} + {_fmt(t)}",
            ),
        )


class TinyModelParams(_Section):
    """The embedded default: a small random Qwen2 built offline, so `dvc repro` needs no network."""

    vocab_size: int = Field(4096, ge=300, json_schema_extra={"why": "256 bytes + special tokens"})
    """BPE vocabulary trained on the embedded sample: keep it small, the output layer dominates CPU time."""
    tokenizer: Literal["bpe", "local"] = "bpe"
    """bpe: train one on the embedded sample; local: Qwen2 vocab.json + merges.txt from model.local_dir (151k
    vocab: ~10x slower on CPU)."""
    hidden_size: int = Field(128, ge=1)
    """Width of the residual stream."""
    intermediate_size: int = Field(384, ge=1)
    """Width of the MLP inside each layer."""
    num_layers: int = Field(2, ge=1)
    """Transformer layers."""
    num_heads: int = Field(4, ge=1)
    """Attention (query) heads; must divide hidden_size."""
    num_kv_heads: int = Field(2, ge=1)
    """Key/value heads (grouped-query attention); must divide num_heads."""
    seed: Seed = 0
    """Seed for the random weights."""

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelParams:
        h, q, kv = self.hidden_size, self.num_heads, self.num_kv_heads
        return _check(
            self,
            (h % q, f"model.tiny.hidden_size ({h}) must be divisible by num_heads ({q})"),
            (q % kv, f"model.tiny.num_heads ({q}) must be divisible by num_kv_heads ({kv})"),
        )


class ModelParams(_Section):
    base: str = Field("tiny", min_length=1)
    """'tiny' (embedded default: offline, CPU speed), a hub id (Qwen/Qwen2-0.5B-Instruct) or 'local' (the model in
    model.local_dir)."""
    local_dir: str = Field("models/local_model", min_length=1)
    """The directory base reads with base 'local' (a model) or tiny.tokenizer 'local' (vocab.json + merges.txt): a
    DVC dependency of base, so editing a file in it reruns base and everything after it. Absolute or relative."""
    revision: str = Field("main", min_length=1)
    """Hub revision (pin a commit hash for reproducible runs); ignored for tiny and local directories."""
    chat_template: str = Field("auto", min_length=1, json_schema_extra={"empty": "auto, chatml or a .jinja file"})
    """auto: the model's own chat template; chatml (needs <|im_start|> and <|im_end|> as tokens), or a .jinja file:
    for a model without one. The base stage writes it into models/base; the tiny default's is ChatML."""
    quantization: Literal["8bit", "4bit", "none"] = "8bit"
    """How train/evaluate load the base: bitsandbytes 8-bit, 4-bit NF4 (less memory, less exact), or unquantized."""
    tiny: TinyModelParams = Field(default_factory=TinyModelParams)
    """Shape of the embedded tiny base (used when base is 'tiny')."""

    @model_validator(mode="after")
    def _quantizable(self) -> ModelParams:
        narrowest = min(self.tiny.hidden_size, self.tiny.intermediate_size)
        directory = self.base not in ("tiny", "local") and Path(self.base).expanduser().is_dir()
        return _check(
            self,
            (
                self.base == "tiny" and self.quantization == "4bit" and narrowest < 64,
                "model.quantization 4bit needs model.tiny.hidden_size and intermediate_size >= 64 "
                f"(the bitsandbytes block size), got {narrowest}",
            ),
            (
                directory,
                f"model.base {self.base!r} is a directory: a local model is `-S model.base=local "
                f"-S model.local_dir={self.base}` (so DVC tracks its files)",
            ),
        )


class LoraParams(_Section):
    r: int = Field(8, ge=1)
    """Rank of the LoRA update matrices: more capacity, more trainable weights."""
    alpha: int = Field(16, gt=0)
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout on the LoRA branch's input."""
    target_modules: Literal["all-linear"] | list[Name] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Linear layers (leaf names) that get a LoRA adapter, checked against the model before training, or all-linear
    (every linear layer but the output head, peft's): fewer train faster, with less capacity."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:  # one message for [], not one per member of the union
        if isinstance(value, list) and not value:
            raise PydanticCustomError("too_short", "empty")
        return value


# transformers' SchedulerType values that need no lr_scheduler_kwargs (which params.yaml has no key for):
# cosine_with_min_lr, cosine_warmup_with_min_lr and warmup_stable_decay fail without them.
LRScheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
]
LR_SCHEDULERS = typing.get_args(LRScheduler)


class SpeedParams(_Section):
    """Switches that change how fast training runs, not what it learns: each keeps the loss (up to rounding), and
    each has a `false` that is the reference's behaviour."""

    padding_free: bool = True
    """True: a micro-batch is its examples end to end, attention kept per example, no compute on padding (1.3-1.4x
    tokens/s on CPU, same loss); padded anyway when prepare.too_long is truncate. False: padded (reference)."""
    labelled_logits_only: bool = True
    """True: the output layer scores only positions with a label, on CPU too (TRL does so on GPUs; 1.2-1.35x
    tokens/s on CPU, same loss); False: every position (reference)."""
    use_liger_kernel: Literal["auto", True, False] = "auto"
    """Liger's Triton kernels (liger-kernel, CUDA only; auto: where installed): less GPU memory and time, same loss
    up to rounding. False: off (reference)."""


class TrainParams(_Section):
    epochs: float = Field(2, gt=0)
    """Passes over the train split (a fraction stops part-way). Reference: 2."""
    max_steps: Annotated[int, AfterValidator(_all_or_at_least_one)] = -1
    """Stop after this many optimizer steps (-1: run all epochs; a number for quick experiments)."""
    batch_size: int = Field(2, ge=1)
    """Rows per device per forward pass (reference: 2); memory grows with batch_size * max_length."""
    grad_accum: int = Field(4, ge=1)
    """Forward passes per optimizer step (effective batch = batch_size * grad_accum; reference: 4)."""
    optim: str = "paged_adamw_8bit"
    """A transformers optimizer name (checked in the train stage); paged_adamw_8bit pages its state to CPU RAM."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Share of optimizer steps spent warming the learning rate up from 0."""
    lr_scheduler: LRScheduler = "linear"
    """One of LR_SCHEDULERS."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (where bf16 is ~10x slower)."""
    completion_only_loss: bool = True
    """True: the loss on the response only (on every assistant turn of a conversation); False: on the whole chat text, as
    the reference did."""
    gradient_checkpointing: bool = False
    """True cuts activation memory (longer sequences on a 6-8 GB card) at ~30% more time."""
    save_steps: int = Field(200, ge=1)
    """Checkpoint interval; an interrupted run resumes from the last complete one."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept on disk (the oldest are deleted)."""
    logging_steps: int = Field(10, ge=1)
    """Log the training loss every N optimizer steps."""
    eval_steps: int = Field(0, ge=0)
    """Evaluate every N steps; 0 evaluates once per epoch, as the reference reported."""
    seed: Seed = 42
    """Seed for LoRA initialisation, data order and dropout."""
    num_processes: int = Field(1, ge=1)
    """Data-parallel processes (GPUs, or CPU processes with gloo; >1: `accelerate launch`); each gets an equal
    share of the effective batch batch_size * grad_accum."""
    speed: SpeedParams = Field(default_factory=SpeedParams)
    """Same loss, faster: padding-free batches, labelled logits only, Liger kernels."""
    lora: LoraParams = Field(default_factory=LoraParams)
    """The LoRA adapter's shape."""

    @model_validator(mode="after")
    def _equal_shares(self) -> TrainParams:
        b, a, n = self.batch_size, self.grad_accum, self.num_processes
        return _check(
            self,
            (
                b * a % n,
                f"train.num_processes ({n}) must divide the effective batch, train.batch_size "
                f"* train.grad_accum = {b} * {a}, so each process gets an equal share",
            ),
        )


class EvaluateParams(_Section):
    batch_size: int = Field(16, ge=1)
    """Rows per forward pass: larger is faster; memory grows with batch * length * vocab (streamed per batch)."""
    num_samples: int = Field(50, ge=0)
    """Test prompts (a seeded subset) answered by base and tuned model."""
    max_new_tokens: int = Field(64, ge=1)
    """Longest generated answer, in tokens."""
    do_sample: bool = False
    """False: greedy generations only; True: also one seeded sampled generation per prompt."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature of the sampled generation (do_sample: true)."""
    seed: Seed = 0
    """Seed for the prompt subset, the sampled generation and the bootstrap resamples."""
    bootstrap_samples: int = Field(1000, ge=100, json_schema_extra={"why": "fewer give unsteady 95% bounds"})
    """Paired bootstrap resamples of the test rows behind each delta.*_low / _high: more, steadier bounds (the
    cost is a matrix product per resample: 1000 take well under a second)."""


class MergeParams(_Section):
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Dtype of the exported model; auto: bf16 on GPUs that support it, else fp32."""
    tolerance: float = Field(1e-3, gt=0)
    """Largest allowed |logit difference| between merged and base+adapter, both in fp32, before export."""
    num_prompts: int = Field(4, ge=1)
    """Test prompts used for the parity check."""
    eval_rows: int = Field(0, ge=0, json_schema_extra={"why": "0: all test rows"})
    """Test rows the exported model is scored on (a fixed seeded subset); 0: all, the same rows as evaluate."""


GGUFType = Literal["f16", "bf16", "q8_0", "q4_k_m"]


class ExportParams(_Section):
    gguf: list[GGUFType] = Field(["q8_0"], min_length=1)
    """GGUF files to write (models/gguf/model-<type>.gguf), the first the Modelfile's. q8_0: about half of bf16's
    size, near lossless; f16/bf16: unquantized; q4_k_m: about a third, lossier, needs llama-cpp-python."""
    name: Name = "finetuned"
    """general.name in the files (what llama.cpp and Ollama show). Avoid "phi3"/"phi-3" unless the tokenizer strips
    after its special tokens: llama.cpp strips after every special token for such names."""
    eval_rows: int = Field(0, ge=0, json_schema_extra={"why": "0: all test rows"})
    """Test rows each file (and the merged model, on the same rows) is scored on; 0: all, as merge.eval_rows."""

    @model_validator(mode="after")
    def _distinct(self) -> ExportParams:
        return _check(self, (len(set(self.gguf)) != len(self.gguf), f"export.gguf lists a type twice: {self.gguf}"))


class Params(_Section):
    """The sections a stage asked for; the others stay None (and unchecked)."""

    lr: float | None = Field(None, gt=0)
    """Learning rate; top level so `dvc exp run -S lr=2e-5` works. Reference: 1e-5."""
    data: DataParams | None = None
    prepare: PrepareParams | None = None
    model: ModelParams | None = None
    train: TrainParams | None = None
    evaluate: EvaluateParams | None = None
    merge: MergeParams | None = None
    export: ExportParams | None = None


TOP_LEVEL_NUMBERS = {"lr": 1e-5}  # the default, when a stage asks for it
SECTIONS: dict[str, type[_Section]] = {
    "data": DataParams,
    "prepare": PrepareParams,
    "model": ModelParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "merge": MergeParams,
    "export": ExportParams,
}


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
    loader = _Loader(text)
    loader.duplicates = []
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    finally:
        loader.dispose()
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    result, bad = _parse(raw, sections)
    if loader.duplicates + bad:
        raise error(*loader.duplicates, *bad, source=str(path))
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


def _parse(raw: dict, sections) -> tuple[Params | None, list[str]]:
    wanted = [s for s in sections if s not in Params.model_fields]
    if wanted:  # a bug in the calling stage, not in params.yaml
        raise ValueError(f"unknown params section(s) {', '.join(map(str, wanted))}")
    given = {key: value for key, value in raw.items() if key not in Params.model_fields}  # each an unknown key
    given |= {name: raw.get(name, TOP_LEVEL_NUMBERS.get(name)) for name in sections}
    try:
        return Params.model_validate(given), []
    except ValidationError as e:
        lines = (_message(problem, given).split("\n") for problem in e.errors())
        return None, list(dict.fromkeys(line for problem in lines for line in problem))


def _kind(field: FieldInfo) -> Any:
    """A field's type, without the `| None` of Params' sections that a stage did not ask for."""
    args = typing.get_args(field.annotation)
    return args[0] if type(None) in args else field.annotation


def _is_section(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _from_yaml(value: Any, kind: Any) -> Any:
    """`value` as PyYAML read it, as type `kind` where the text is unambiguous; the strict field rejects the rest."""
    if value is None:  # `train:` with nothing under it is all defaults; `lr:` is no number
        if _is_section(kind):
            return {}
        raise PydanticCustomError("none", "no value")
    if isinstance(value, str):
        value = value.strip()
        if kind is bool and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind in (int, float):
            value = _number(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and type(value) is int and abs(value) > sys.float_info.max:
        raise PydanticCustomError("expected", "a finite number")
    if kind is str and type(value) in (int, float):  # e.g. a revision hash that YAML read as a number
        return str(value)
    if typing.get_origin(kind) is Literal and type(value) in (int, float):  # 1 == True in Python, not in params.yaml
        raise PydanticCustomError("literal_error", "not a choice")
    return value


def _number(text: str) -> int | float | str:
    """Text that Python reads as a number (YAML 1.1 reads 2e-5 and 2.0e+2 as strings), else the text."""
    for number in (int, float):
        with contextlib.suppress(ValueError):
            return number(text)
    return text


_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _message(problem: dict, given: dict) -> str:
    """One pydantic error as a params.yaml problem (or several, one per line: a model_validator's rules)."""
    if problem["type"] == "rules":
        return problem["ctx"]["rules"]
    loc, model, field, value = [], Params, None, given
    for part in problem["loc"]:
        if field is not None and not _is_section(model):  # an item of a list: report the whole list
            break
        owner, field = model, model.model_fields.get(part)
        model = field and _kind(field)
        loc.append(str(part))
        value = value.get(part) if isinstance(value, dict) else None
    key = ".".join(loc)
    extra = (field.json_schema_extra if field else None) or {}
    if problem["type"] in ("extra_forbidden", "invalid_key"):  # invalid: not a string, e.g. `1:`
        return f"unknown key {key}{did_you_mean(loc[-1], owner.model_fields, top_level=len(loc) == 1)}"
    if problem["type"] in _BOUNDS | {"bound"}:
        bound = problem["msg"] if problem["type"] == "bound" else _bound(field)
        why = f" ({extra['why']})" if "why" in extra else ""
        return f"{key} must be {bound}{why}, got {_fmt(problem['input'])}"
    if problem["type"] == "model_type":
        return f"{key} must be a mapping, got {type(value).__name__} {_short(value)}"
    if problem["type"] in ("too_short", "string_too_short") and len(problem["loc"]) == len(loc):
        return f"{key} must be {extra['empty']}, got ''" if "empty" in extra else f"{key} must not be empty"
    must_be = problem["msg"] if problem["type"] == "expected" else _must_be(_kind(field))
    return f"{key} must be {must_be}, got {_short(value)}"


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bound(field: FieldInfo) -> str:
    """A field's Field(ge=, gt=, le=, lt=) as its message says it: `>= 3`, `in (0, 1)`, `in [0, 2**32)`."""
    limits = {
        op: "2**32" if x == 2**32 else _fmt(x)
        for m in field.metadata
        for op in _OPS
        if (x := getattr(m, op, None)) is not None
    }
    if len(limits) == 1:
        ((op, limit),) = limits.items()
        return f"{_OPS[op]} {limit}"
    low, high = ("ge" if "ge" in limits else "gt"), ("le" if "le" in limits else "lt")
    return f"in {'[' if low == 'ge' else '('}{limits[low]}, {limits[high]}{']' if high == 'le' else ')'}"


def _must_be(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Union:
        return " or ".join(_must_be(k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is Annotated:
        return _must_be(typing.get_args(kind)[0])
    if typing.get_origin(kind) is Literal and len(typing.get_args(kind)) == 1:
        return str(typing.get_args(kind)[0])
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in typing.get_args(kind))
    if typing.get_origin(kind) is dict:  # data.columns: names from a fixed set -> non-empty names
        keys = ", ".join(typing.get_args(typing.get_args(kind)[0]))
        return f"a mapping from {keys} to your column names"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list of names"}[
        typing.get_origin(kind) or kind
    ]


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


class _Loader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys: this loader also lists them, to report."""

    duplicates: list[str]  # set by load()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict = {}
        for key_node, _ in node.value:  # `<<: *base` then overrides is fine; super() reports an unhashable key
            merge = key_node.tag == "tag:yaml.org,2002:merge"
            if not merge and isinstance(key := self.construct_object(key_node), Hashable):
                if key in first:
                    self.duplicates.append(
                        f"duplicate key {key} on line {key_node.start_mark.line + 1} (first on "
                        f"line {first[key]}; YAML would silently keep only the last)"
                    )
                first.setdefault(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)
