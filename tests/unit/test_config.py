"""finetune/config.py: every bad value gives its exact message, all problems come in one error, numbers parse."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from finetune import config, pipeline
from finetune.errors import ParamsError
from helpers import REPO

ALL = ("lr", *config.SECTIONS)


def problems(error: pytest.ExceptionInfo | ParamsError) -> list[str]:
    """The problem lines of a ParamsError, checking the header's count matches them."""
    text = str(getattr(error, "value", error))
    header, *lines = text.splitlines()
    lines = [line.strip() for line in lines]
    assert header.endswith(f": {len(lines)} problem(s):"), text
    return lines


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# (raw params, sections asked for, the exact problem line(s)); one row per rule in config.py.
BAD = [
    # top-level lr
    ({"lr": -1}, ["lr"], ["lr must be > 0, got -1"]),
    ({"lr": 0}, ["lr"], ["lr must be > 0, got 0"]),
    ({"lr": "fast"}, ["lr"], ["lr must be a number, got 'fast'"]),
    ({"lr": True}, ["lr"], ["lr must be a number, got True"]),
    ({"lr": None}, ["lr"], ["lr must be a number, got None"]),
    ({"lr": [1e-5]}, ["lr"], ["lr must be a number, got [1e-05]"]),
    ({"lr": float("nan")}, ["lr"], ["lr must be a number, got nan"]),
    ({"lr": float("inf")}, ["lr"], ["lr must be a number, got inf"]),
    ({"lr": "-inf"}, ["lr"], ["lr must be a number, got '-inf'"]),
    ({"lr": "1e999"}, ["lr"], ["lr must be a number, got '1e999'"]),
    # data
    ({"data": {"extra_columns": "maybe"}}, ["data"], ["data.extra_columns must be one of drop, keep, got 'maybe'"]),
    ({"data": {"extra_columns": False}}, ["data"], ["data.extra_columns must be one of drop, keep, got False"]),
    ({"data": {"path": " "}}, ["data"], ["data.path must not be empty"]),
    ({"data": {"path": None}}, ["data"], ["data.path must be text, got None"]),
    ({"data": {"path": ["a.csv"]}}, ["data"], ["data.path must be text, got ['a.csv']"]),
    # prepare
    ({"prepare": {"test_fraction": 1.5}}, ["prepare"], ["prepare.test_fraction must be in (0, 1), got 1.5"]),
    ({"prepare": {"test_fraction": 0}}, ["prepare"], ["prepare.test_fraction must be in (0, 1), got 0"]),
    ({"prepare": {"test_fraction": 1}}, ["prepare"], ["prepare.test_fraction must be in (0, 1), got 1"]),
    (
        {"prepare": {"n": 0}},
        ["prepare"],
        ["prepare.n must be >= 3 (at least one train, one val and one test row), got 0"],
    ),
    (
        {"prepare": {"n": 1}},
        ["prepare"],
        ["prepare.n must be >= 3 (at least one train, one val and one test row), got 1"],
    ),
    (
        {"prepare": {"n": 2}},
        ["prepare"],
        ["prepare.n must be >= 3 (at least one train, one val and one test row), got 2"],
    ),
    (
        {"prepare": {"val_fraction": 0}},
        ["prepare"],
        ["prepare.val_fraction must be in (0, 1) (training evaluates on the val split), got 0"],
    ),
    (
        {"prepare": {"val_fraction": 0.5, "test_fraction": 0.5}},
        ["prepare"],
        ["prepare.val_fraction + prepare.test_fraction must be < 1 (the rest is train), got 0.5 + 0.5"],
    ),
    ({"prepare": {"n": 2.5}}, ["prepare"], ["prepare.n must be a whole number, got 2.5"]),
    ({"prepare": {"n": "many"}}, ["prepare"], ["prepare.n must be a whole number, got 'many'"]),
    ({"prepare": {"n": True}}, ["prepare"], ["prepare.n must be a whole number, got True"]),
    ({"prepare": {"too_long": "cut"}}, ["prepare"], ["prepare.too_long must be one of drop, truncate, got 'cut'"]),
    ({"prepare": {"too_long": "Drop"}}, ["prepare"], ["prepare.too_long must be one of drop, truncate, got 'Drop'"]),
    ({"prepare": {"max_length": 4}}, ["prepare"], ["prepare.max_length must be >= 8, got 4"]),
    ({"prepare": {"max_drop_fraction": 1.5}}, ["prepare"], ["prepare.max_drop_fraction must be in [0, 1], got 1.5"]),
    ({"prepare": {"max_drop_fraction": -0.1}}, ["prepare"], ["prepare.max_drop_fraction must be in [0, 1], got -0.1"]),
    ({"prepare": {"seed": -1}}, ["prepare"], ["prepare.seed must be in [0, 2**32), got -1"]),
    ({"prepare": {"seed": 2**32}}, ["prepare"], ["prepare.seed must be in [0, 2**32), got 4294967296"]),
    # model
    (
        {"model": {"chat_template": " "}},
        ["model"],
        ["model.chat_template must be auto, chatml or a .jinja file, got ''"],
    ),
    (
        {"model": {"quantization": "3bit"}},
        ["model"],
        ["model.quantization must be one of 8bit, 4bit, none, got '3bit'"],
    ),
    ({"model": {"quantization": 8}}, ["model"], ["model.quantization must be one of 8bit, 4bit, none, got 8"]),
    ({"model": {"quantization": None}}, ["model"], ["model.quantization must be one of 8bit, 4bit, none, got None"]),
    ({"model": {"base": ""}}, ["model"], ["model.base must not be empty"]),
    ({"model": {"local_dir": ""}}, ["model"], ["model.local_dir must not be empty"]),
    (
        {"evaluate": {"bootstrap_samples": 10}},
        ["evaluate"],
        ["evaluate.bootstrap_samples must be >= 100 (fewer give unsteady 95% bounds), got 10"],
    ),
    ({"model": {"revision": ""}}, ["model"], ["model.revision must not be empty"]),
    (
        {"model": {"tiny": {"vocab_size": 100}}},
        ["model"],
        ["model.tiny.vocab_size must be >= 300 (256 bytes + special tokens), got 100"],
    ),
    ({"model": {"tiny": {"num_layers": 0}}}, ["model"], ["model.tiny.num_layers must be >= 1, got 0"]),
    ({"model": {"tiny": {"hidden_size": 0}}}, ["model"], ["model.tiny.hidden_size must be >= 1, got 0"]),
    ({"model": {"tiny": {"intermediate_size": 0}}}, ["model"], ["model.tiny.intermediate_size must be >= 1, got 0"]),
    ({"model": {"tiny": {"num_heads": 0}}}, ["model"], ["model.tiny.num_heads must be >= 1, got 0"]),
    ({"model": {"tiny": {"num_kv_heads": 0}}}, ["model"], ["model.tiny.num_kv_heads must be >= 1, got 0"]),
    (
        {"model": {"tiny": {"num_heads": 3}}},
        ["model"],
        [
            "model.tiny.hidden_size (128) must be divisible by num_heads (3)",
            "model.tiny.num_heads (3) must be divisible by num_kv_heads (2)",
        ],
    ),
    (
        {"model": {"tiny": {"num_kv_heads": 3}}},
        ["model"],
        ["model.tiny.num_heads (4) must be divisible by num_kv_heads (3)"],
    ),
    ({"model": {"tiny": {"tokenizer": ""}}}, ["model"], ["model.tiny.tokenizer must be one of bpe, local, got ''"]),
    ({"model": {"tiny": {"seed": -5}}}, ["model"], ["model.tiny.seed must be in [0, 2**32), got -5"]),
    # train
    ({"train": {"epochs": 0}}, ["train"], ["train.epochs must be > 0, got 0"]),
    ({"train": {"max_steps": 0}}, ["train"], ["train.max_steps must be -1 or >= 1, got 0"]),
    ({"train": {"max_steps": -2}}, ["train"], ["train.max_steps must be -1 or >= 1, got -2"]),
    ({"train": {"batch_size": 0}}, ["train"], ["train.batch_size must be >= 1, got 0"]),
    ({"train": {"grad_accum": 0}}, ["train"], ["train.grad_accum must be >= 1, got 0"]),
    ({"train": {"save_steps": 0}}, ["train"], ["train.save_steps must be >= 1, got 0"]),
    ({"train": {"save_total_limit": 0}}, ["train"], ["train.save_total_limit must be >= 1, got 0"]),
    ({"train": {"logging_steps": 0}}, ["train"], ["train.logging_steps must be >= 1, got 0"]),
    ({"train": {"eval_steps": -1}}, ["train"], ["train.eval_steps must be >= 0, got -1"]),
    ({"train": {"weight_decay": -0.1}}, ["train"], ["train.weight_decay must be >= 0, got -0.1"]),
    ({"train": {"warmup_ratio": 1}}, ["train"], ["train.warmup_ratio must be in [0, 1), got 1"]),
    ({"train": {"precision": "fp8"}}, ["train"], ["train.precision must be one of auto, bf16, fp16, fp32, got 'fp8'"]),
    (
        {"train": {"lr_scheduler": "cosine_with_min_lr"}},
        ["train"],
        [f"train.lr_scheduler must be one of {', '.join(config.LR_SCHEDULERS)}, got 'cosine_with_min_lr'"],
    ),
    (
        {"train": {"completion_only_loss": "yes"}},
        ["train"],
        ["train.completion_only_loss must be true or false, got 'yes'"],
    ),
    (
        {"train": {"gradient_checkpointing": 1}},
        ["train"],
        ["train.gradient_checkpointing must be true or false, got 1"],
    ),
    ({"train": {"seed": -1}}, ["train"], ["train.seed must be in [0, 2**32), got -1"]),
    (
        {"train": {"speed": {"use_liger_kernel": "maybe"}}},
        ["train"],
        ["train.speed.use_liger_kernel must be one of auto, true, false, got 'maybe'"],
    ),
    (
        {"train": {"speed": {"padding_free": "yes"}}},
        ["train"],
        ["train.speed.padding_free must be true or false, got 'yes'"],
    ),
    ({"train": {"num_processes": 0}}, ["train"], ["train.num_processes must be >= 1, got 0"]),
    ({"train": {"lora": {"r": 0}}}, ["train"], ["train.lora.r must be >= 1, got 0"]),
    ({"train": {"lora": {"alpha": 0}}}, ["train"], ["train.lora.alpha must be > 0, got 0"]),
    ({"train": {"lora": {"dropout": 1}}}, ["train"], ["train.lora.dropout must be in [0, 1), got 1"]),
    (
        {"train": {"lora": {"target_modules": "q_proj"}}},
        ["train"],
        ["train.lora.target_modules must be all-linear or a list of names, got 'q_proj'"],
    ),
    (
        {"train": {"lora": {"target_modules": ["q_proj", 3]}}},
        ["train"],
        ["train.lora.target_modules must be all-linear or a list of names, got ['q_proj', 3]"],
    ),
    ({"train": {"lora": {"target_modules": []}}}, ["train"], ["train.lora.target_modules must not be empty"]),
    # evaluate
    ({"evaluate": {"batch_size": 0}}, ["evaluate"], ["evaluate.batch_size must be >= 1, got 0"]),
    ({"evaluate": {"num_samples": -1}}, ["evaluate"], ["evaluate.num_samples must be >= 0, got -1"]),
    ({"evaluate": {"max_new_tokens": 0}}, ["evaluate"], ["evaluate.max_new_tokens must be >= 1, got 0"]),
    ({"evaluate": {"temperature": 0}}, ["evaluate"], ["evaluate.temperature must be > 0, got 0"]),
    (
        {"evaluate": {"do_sample": "sometimes"}},
        ["evaluate"],
        ["evaluate.do_sample must be true or false, got 'sometimes'"],
    ),
    ({"evaluate": {"seed": -1}}, ["evaluate"], ["evaluate.seed must be in [0, 2**32), got -1"]),
    # merge
    ({"merge": {"tolerance": 0}}, ["merge"], ["merge.tolerance must be > 0, got 0"]),
    ({"merge": {"num_prompts": 0}}, ["merge"], ["merge.num_prompts must be >= 1, got 0"]),
    ({"merge": {"eval_rows": -1}}, ["merge"], ["merge.eval_rows must be >= 0 (0: all test rows), got -1"]),
    ({"merge": {"dtype": "int8"}}, ["merge"], ["merge.dtype must be one of auto, bf16, fp16, fp32, got 'int8'"]),
    # export
    ({"export": {"eval_rows": -1}}, ["export"], ["export.eval_rows must be >= 0 (0: all test rows), got -1"]),
    ({"export": {"gguf": []}}, ["export"], ["export.gguf must not be empty"]),
    ({"export": {"gguf": ["q2_k"]}}, ["export"], ["export.gguf must be a list of names, got ['q2_k']"]),
    ({"export": {"gguf": ["q8_0", "q8_0"]}}, ["export"], ["export.gguf lists a type twice: ['q8_0', 'q8_0']"]),
    ({"export": {"name": " "}}, ["export"], ["export.name must not be empty"]),
    (
        {"model": {"base": "tiny", "quantization": "4bit", "tiny": {"hidden_size": 32}}},
        ["model"],
        [
            "model.quantization 4bit needs model.tiny.hidden_size and intermediate_size >= 64 "
            "(the bitsandbytes block size), got 32"
        ],
    ),
    # unknown keys, with did-you-mean
    ({"trian": {"epochs": 1}}, ["train"], ["unknown key trian (did you mean train?)"]),
    ({"learning_rate": 2e-5}, ["lr"], ["unknown key learning_rate (did you mean lr?)"]),
    ({"extra": 1}, ["lr"], ["unknown key extra"]),
    ({"train": {"lerning_rate": 2e-5}}, ["train"], ["unknown key train.lerning_rate (did you mean the top-level lr?)"]),
    (
        {"train": {"num_train_epochs": 3}},
        ["train"],
        ["unknown key train.num_train_epochs (did you mean train.epochs?)"],
    ),
    ({"train": {"epoch": 3}}, ["train"], ["unknown key train.epoch (did you mean epochs?)"]),
    (
        {"train": {"gradient_accumulation_steps": 8}},
        ["train"],
        ["unknown key train.gradient_accumulation_steps (did you mean train.grad_accum?)"],
    ),
    (
        {"train": {"per_device_train_batch_size": 8}},
        ["train"],
        ["unknown key train.per_device_train_batch_size (did you mean train.batch_size?)"],
    ),
    ({"train": {"warmup": 0.1}}, ["train"], ["unknown key train.warmup (did you mean warmup_ratio?)"]),
    ({"train": {"lora": {"rr": 16}}}, ["train"], ["unknown key train.lora.rr (did you mean r?)"]),
    ({"model": {"tiny": {"num_layer": 2}}}, ["model"], ["unknown key model.tiny.num_layer (did you mean num_layers?)"]),
    (
        {"prepare": {"test_fracton": 0.1}},
        ["prepare"],
        ["unknown key prepare.test_fracton (did you mean test_fraction?)"],
    ),
    # a section or subsection that is not a mapping
    ({"train": {"lora": [8, 16]}}, ["train"], ["train.lora must be a mapping, got list [8, 16]"]),
    ({"train": {"lora": 8}}, ["train"], ["train.lora must be a mapping, got int 8"]),
    ({"model": {"tiny": "big"}}, ["model"], ["model.tiny must be a mapping, got str 'big'"]),
    ({"train": 3}, ["train"], ["train must be a mapping, got int 3"]),
    ({"prepare": []}, ["prepare"], ["prepare must be a mapping, got list []"]),
]


@pytest.mark.parametrize("raw, sections, expected", BAD, ids=[str(case[0]) for case in BAD])
def test_bad_params_exact_message(raw, sections, expected):
    with pytest.raises(ParamsError) as error:
        config.parse(raw, sections)
    assert problems(error) == expected
    assert str(error.value).startswith("params.yaml: ")


def test_all_problems_reported_in_one_error():
    raw = {
        "lr": -1,
        "trian": {},
        "data": {"extra_columns": "maybe"},
        "prepare": {"n": 0, "test_fraction": 1.5, "too_long": "cut"},
        "model": {"quantization": "3bit", "tiny": {"num_layers": 0}},
        "train": {"lerning_rate": 1, "epochs": "two", "lora": {"r": 0, "rr": 4, "dropout": 2}},
        "evaluate": {"temperature": -1},
        "merge": {"tolerance": 0},
    }
    with pytest.raises(ParamsError) as error:
        config.parse(raw, ALL, source="my/params.yaml")
    assert str(error.value).startswith("my/params.yaml: 15 problem(s):\n  ")
    assert sorted(problems(error)) == sorted(
        [
            "lr must be > 0, got -1",
            "unknown key trian (did you mean train?)",
            "data.extra_columns must be one of drop, keep, got 'maybe'",
            "prepare.n must be >= 3 (at least one train, one val and one test row), got 0",
            "prepare.test_fraction must be in (0, 1), got 1.5",
            "prepare.too_long must be one of drop, truncate, got 'cut'",
            "model.quantization must be one of 8bit, 4bit, none, got '3bit'",
            "model.tiny.num_layers must be >= 1, got 0",
            "unknown key train.lerning_rate (did you mean the top-level lr?)",
            "train.epochs must be a number, got 'two'",
            "unknown key train.lora.rr (did you mean r?)",
            "train.lora.r must be >= 1, got 0",
            "train.lora.dropout must be in [0, 1), got 2",
            "evaluate.temperature must be > 0, got -1",
            "merge.tolerance must be > 0, got 0",
        ]
    )


def test_a_stage_checks_only_its_sections_but_every_top_level_key():
    raw = {"train": {"lora": {"r": 0}, "bogus": 1}, "data": {"path": "x.csv"}}
    assert config.parse(raw, ["data"]).data.path == "x.csv"  # train's problems are train's
    assert config.parse(raw, ["data"]).train is None
    with pytest.raises(ParamsError) as error:
        config.parse({**raw, "dta": {}}, ["data"])
    assert problems(error) == ["unknown key dta (did you mean data?)"]


def test_unknown_section_asked_for_is_a_code_bug():
    with pytest.raises(ValueError, match="unknown params section"):
        config.parse({}, ["training"])


# --- numbers as YAML 1.1 (PyYAML) reads them, from a real file ---


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr: 2e-5", 2e-5),  # PyYAML: the string '2e-5'
        ("lr: 2.0e-5", 2e-5),
        ('lr: "2e-5"', 2e-5),
        ("lr: '2.0E-5'", 2e-5),
        ("lr: 1E-5", 1e-5),
        ("lr: 1e-5", 1e-5),
        ("lr: 0.00002", 2e-5),
        ("lr: 1", 1.0),
        ("lr: ' 3e-4 '", 3e-4),
    ],
)
def test_lr_number_forms(tmp_path, text, expected):
    p = config.load("lr", path=write(tmp_path, text + "\n"))
    assert type(p.lr) is float
    assert p.lr == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("n: 200", 200),
        ("n: 200.0", 200),
        ("n: '200'", 200),
        ("n: 2e2", 200),
        ("n: 2.0e+2", 200),
        ("n: 1_000", 1000),
    ],
)
def test_int_fields_accept_whole_numbers(tmp_path, text, expected):
    p = config.load("prepare", path=write(tmp_path, f"prepare:\n  {text}\n"))
    assert type(p.prepare.n) is int and p.prepare.n == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("prepare:\n  n: 2.5", "prepare.n must be a whole number, got 2.5"),
        ("prepare:\n  n: '2.5'", "prepare.n must be a whole number, got '2.5'"),
        ("prepare:\n  n: 2.5e0", "prepare.n must be a whole number, got '2.5e0'"),
        ("prepare:\n  n: yes", "prepare.n must be a whole number, got True"),  # YAML 1.1 bool
        ("prepare:\n  test_fraction: true", "prepare.test_fraction must be a number, got True"),
        ("prepare:\n  test_fraction: off", "prepare.test_fraction must be a number, got False"),
        ("lr: .nan", "lr must be a number, got nan"),
        ("lr: .inf", "lr must be a number, got inf"),
        ("lr: -.inf", "lr must be a number, got -inf"),
        ("lr: nan", "lr must be a number, got 'nan'"),
        ("lr: 'inf'", "lr must be a number, got 'inf'"),
        ("lr: 2e-5x", "lr must be a number, got '2e-5x'"),
        ("lr: -1e-5", "lr must be > 0, got -1e-05"),
        ("lr:", "lr must be a number, got None"),
    ],
)
def test_bad_numbers_from_file(tmp_path, text, expected):
    with pytest.raises(ParamsError) as error:
        config.load("lr", "prepare", path=write(tmp_path, text + "\n"))
    assert problems(error) == [expected]


def test_float_field_written_as_int_and_huge_int(tmp_path):
    p = config.load("train", path=write(tmp_path, "train:\n  epochs: 3\n  weight_decay: 1e-2\n"))
    assert type(p.train.epochs) is float and p.train.epochs == 3.0 and p.train.weight_decay == 0.01
    with pytest.raises(ParamsError) as error:
        config.load("lr", path=write(tmp_path, f"lr: {10**400}\n"))
    (line,) = problems(error)
    assert line.startswith("lr must be a finite number, got 1000000")


def test_empty_section_means_defaults(tmp_path):
    p = config.load("train", "prepare", path=write(tmp_path, "train:\nprepare: {}\n"))
    assert p.train == config.TrainParams() and p.prepare == config.PrepareParams()
    assert config.load("lr", path=write(tmp_path, "")).lr == 1e-5


def test_duplicate_keys_reported(tmp_path):
    text = "lr: 1e-5\ntrain:\n  epochs: 1\n  lora: {r: 4, r: 8}\nlr: 2e-5\n"
    with pytest.raises(ParamsError) as error:
        config.load("lr", "train", path=write(tmp_path, text))
    assert sorted(problems(error)) == [
        "duplicate key lr on line 5 (first on line 1; YAML would silently keep only the last)",
        "duplicate key r on line 4 (first on line 4; YAML would silently keep only the last)",
    ]


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = "lora_base: &l {r: 4, alpha: 8}\n"  # an unknown top-level key, but no duplicate
    with pytest.raises(ParamsError) as error:
        config.load("lr", path=write(tmp_path, text))
    assert problems(error) == ["unknown key lora_base"]
    text = "train:\n  lora:\n    <<: {r: 4, alpha: 8}\n    r: 2\n"
    assert config.load("train", path=write(tmp_path, text)).train.lora.r == 2


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "{path}: file not found"),
        ("a: [1\n", "{path}: not valid YAML ("),
        ("- lr\n", "{path}: expected a mapping of sections, found list"),
        (b"lr: 1\n# caf\xe9\n", "{path}: not UTF-8 (invalid byte at byte offset 11)"),
    ],
)
def test_unreadable_file(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ParamsError) as error:
        config.load("lr", path=path)
    assert str(error.value).startswith(expected.format(path=path))


def test_params_file_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAMS_FILE", str(write(tmp_path, "lr: 3e-4\n")))
    assert config.load("lr").lr == 3e-4


# --- defaults and the repo's params.yaml ---


def test_defaults_are_the_reference_setup():
    p = config.parse({}, ALL)
    assert p.lr == 1e-5
    lora = p.train.lora
    assert (lora.r, lora.alpha, lora.dropout) == (8, 16, 0.1)
    assert lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    t = p.train
    assert (t.epochs, t.batch_size, t.grad_accum, t.optim, t.save_steps) == (2, 2, 4, "paged_adamw_8bit", 200)
    assert (t.max_steps, t.lr_scheduler, t.weight_decay, t.warmup_ratio) == (-1, "linear", 0.0, 0.0)
    assert (p.prepare.n, p.prepare.test_fraction, p.prepare.max_length) == (5000, 0.2, 512)
    assert p.model.quantization == "8bit"


@pytest.mark.parametrize("section", ALL)
def test_repo_params_yaml_parses_cleanly(section):
    p = config.load(section, path=REPO / "params.yaml")
    assert getattr(p, section) is not None


def test_repo_params_yaml_matches_the_reference():
    p = config.load(*ALL, path=REPO / "params.yaml")
    defaults = config.parse({}, ALL)
    assert p.lr == defaults.lr
    assert p.train == defaults.train
    assert p.prepare == defaults.prepare
    assert p.model.quantization == defaults.model.quantization


def _fields(cls: type[BaseModel], prefix: str) -> list[tuple[str, FieldInfo]]:
    """(dotted path, field) of every leaf field, nested sections included."""
    leaves = []
    for name, f in cls.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            leaves += _fields(f.annotation, f"{prefix}.{name}")
        else:
            leaves.append((f"{prefix}.{name}", f))
    return leaves


def _field_paths(cls: type, prefix: str) -> list[str]:
    return [path for path, _ in _fields(cls, prefix)]


def _has(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_params_yaml_documents_every_knob():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    fields = list(config.TOP_LEVEL_NUMBERS)
    for name, cls in config.SECTIONS.items():
        fields += _field_paths(cls, name)
    missing = [f for f in fields if not _has(raw, f)]
    assert not missing, f"params.yaml lacks keys for: {', '.join(missing)}"


def test_dvc_yaml_params_exist_in_params_yaml():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    listed = [key for stage in stages.values() for key in stage.get("params", []) if isinstance(key, str)]
    assert listed
    assert [key for key in listed if not _has(raw, key)] == []


def _enum_values(module_file: Path, class_name: str) -> list[str]:
    """String values of an Enum class, read from source: importing transformers takes seconds."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return [
                stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ]
    raise AssertionError(f"{class_name} not found in {module_file}")


def test_scheduler_names_match_installed_transformers():
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("transformers not installed")
    root = Path(spec.submodule_search_locations[0])
    assert set(config.LR_SCHEDULERS) <= set(_enum_values(root / "trainer_utils.py", "SchedulerType"))
    assert config.TrainParams().lr_scheduler in config.LR_SCHEDULERS


def test_coerced_values_are_finite_and_typed():
    p = config.parse({"lr": "2e-5", "prepare": {"n": "300", "test_fraction": "0.25"}}, ["lr", "prepare"])
    assert math.isfinite(p.lr) and type(p.prepare.n) is int and type(p.prepare.test_fraction) is float


# --- the declarations: every bound is checked, every field documented ---


def test_every_declared_rule_has_a_bad_row():
    messages = [line for _, _, lines in BAD for line in lines]
    declared = [path for name, cls in config.SECTIONS.items() for path, f in _fields(cls, name) if f.metadata]
    assert len(declared) > 30
    untested = [path for path in declared if not any(m.startswith(f"{path} must ") for m in messages)]
    assert not untested, f"add a BAD row for: {', '.join(untested)}"


def _nested(dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    raw = {leaf: value}
    for part in reversed(parents):
        raw = {part: raw}
    return raw


def _step(value, kind: type, direction: int):
    """The nearest value of `kind` past `value` towards `direction` (+1 up, -1 down)."""
    return value + direction if kind is int else math.nextafter(value, direction * math.inf)


def _bound_cases() -> list[tuple[str, type, object, object]]:
    """(dotted path, field type, a value the bound accepts, the nearest value it rejects) per declared bound."""
    cases = []
    for section, cls in config.SECTIONS.items():
        for path, f in _fields(cls, section):
            for m in f.metadata:
                if isinstance(m, Ge):
                    cases.append((path, f.annotation, m.ge, _step(m.ge, f.annotation, -1)))
                elif isinstance(m, Gt):
                    cases.append((path, f.annotation, _step(m.gt, f.annotation, +1), m.gt))
                elif isinstance(m, Le):
                    cases.append((path, f.annotation, m.le, _step(m.le, f.annotation, +1)))
                elif isinstance(m, Lt):
                    cases.append((path, f.annotation, _step(m.lt, f.annotation, -1), m.lt))
    return cases


BOUND_CASES = _bound_cases()


def test_the_bound_cases_cover_every_kind_of_bound():
    assert len(BOUND_CASES) > 35
    assert {"prepare.seed", "prepare.test_fraction", "prepare.max_drop_fraction", "train.lora.alpha"} <= {
        path for path, *_ in BOUND_CASES
    }


@pytest.mark.parametrize(
    "path, kind, inside, outside", BOUND_CASES, ids=[f"{c[0]}:{c[2]!r}|{c[3]!r}" for c in BOUND_CASES]
)
def test_every_bound_accepts_its_edge_and_rejects_the_next_value(path, kind, inside, outside):
    section = path.split(".")[0]
    # the edge (or, for an open bound, the nearest value inside it) passes: no message about this key
    try:
        got = config.parse(_nested(path, inside), [section])
    except ParamsError as error:  # a rule across fields may object to an extreme value, never this field's bound
        assert not [line for line in problems(error) if line.startswith(f"{path} must")]
    else:
        value = got
        for part in path.split("."):
            value = getattr(value, part)
        assert value == inside and type(value) is kind
    # negative control: the value just outside is rejected with this field's own message
    with pytest.raises(ParamsError) as error:
        config.parse(_nested(path, outside), [section])
    shown = str(int(outside)) if float(outside).is_integer() and abs(outside) < 1e16 else repr(outside)
    (line,) = problems(error)
    assert line.startswith(f"{path} must be ") and line.endswith(f", got {shown}"), line


@pytest.mark.parametrize("steps, ok", [(-1, True), (1, True), (1000, True), (0, False), (-2, False)])
def test_max_steps_is_minus_one_or_positive(steps, ok):
    if ok:
        assert config.parse({"train": {"max_steps": steps}}, ["train"]).train.max_steps == steps
    else:
        with pytest.raises(ParamsError, match=rf"train.max_steps must be -1 or >= 1, got {steps}$"):
            config.parse({"train": {"max_steps": steps}}, ["train"])


def test_every_field_is_documented():
    undocumented = [
        path
        for name, cls in config.SECTIONS.items()
        for path, f in _fields(cls, name)
        if not (f.description or "").strip()
    ]
    assert not undocumented, f"add a docstring under: {', '.join(undocumented)}"
    assert config.Params.model_fields["lr"].description.startswith("Learning rate")
    assert config.PrepareParams.model_fields["n"].description.startswith("Rows sampled after cleaning")


def test_defaults_meet_their_own_declarations_and_are_not_shared():
    for cls in config.SECTIONS.values():
        assert cls.model_validate(cls().model_dump()) == cls()
    a, b = config.TrainParams(), config.TrainParams()
    a.lora.target_modules.append("lm_head")
    assert b.lora.target_modules[-1] == "down_proj" and a.lora is not b.lora


def test_yaml_forms_become_the_field_type():
    p = config.parse(
        {
            "model": {"revision": 1234567, "base": " tiny "},
            "train": {
                "speed": {"padding_free": "False"},
                "completion_only_loss": " true ",
                "epochs": "1.5",
                "lora": {"target_modules": [" q_proj ", "v_proj"]},
            },
            "data": {"extra_columns": " keep "},
        },
        ["model", "train", "data"],
    )
    assert (p.model.revision, p.model.base) == ("1234567", "tiny")  # a hash YAML read as a number is text
    assert (p.train.speed.padding_free, p.train.completion_only_loss, p.train.epochs) == (False, True, 1.5)
    assert p.train.lora.target_modules == ["q_proj", "v_proj"] and p.data.extra_columns == "keep"
    assert config.parse({"model": {"tiny": None}}, ["model"]).model.tiny == config.TinyModelParams()
    with pytest.raises(ParamsError) as error:  # Python's 1 == True and 0 == False are not params.yaml's
        config.parse({"train": {"speed": {"use_liger_kernel": 1, "padding_free": 0}}}, ["train"])
    assert problems(error) == [
        "train.speed.padding_free must be true or false, got 0",
        "train.speed.use_liger_kernel must be one of auto, true, false, got 1",
    ]


def test_param_value_gives_sections_as_plain_dicts():
    p = config.parse({}, ["lr", "model", "train"])
    lora = pipeline.param_value(p, "train.lora")
    assert lora == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    model = pipeline.param_value(p, "model")
    assert type(model["tiny"]) is dict and model["tiny"]["vocab_size"] == 4096 and model["quantization"] == "8bit"
    assert pipeline.param_value(p, "lr") == 1e-5 and pipeline.param_value(p, "train.lora.r") == 8


def test_a_directory_as_model_base_names_the_params_to_use(tmp_path):
    with pytest.raises(config.ParamsError) as e:
        config.parse({"model": {"base": str(tmp_path)}}, ["model"])
    assert f"-S model.base=local -S model.local_dir={tmp_path}" in str(e.value)
    assert config.parse({"model": {"base": "local", "local_dir": str(tmp_path)}}, ["model"]).model.base == "local"
    assert config.parse({"model": {"base": "Qwen/Qwen2-0.5B-Instruct"}}, ["model"])  # a hub id is no directory
