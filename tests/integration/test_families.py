"""Three chat-model families end to end (tests/families.py: Qwen2 ChatML, Llama-3, Phi-3 with fused projections):
base -> prepare -> train -> evaluate -> merge on a small random local model directory of each, trained to answer
one of a few short answers and stop. Each family's stop ids, stopped fraction, adapted layers, merge and card."""

from __future__ import annotations

import json
import re

import families
import pandas as pd
import pytest
from helpers import (
    REPO,
    deep_update,
    local_model_params,
    make_project,
    stage,
    write_params,
)

STAGES = ["check_params", "base", "ingest", "prepare", "train", "evaluate_base", "evaluate", "merge"]
ANSWERS = ["Yes.", "No.", "A bond."]
REFERENCE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# What each family adapts: the reference list (the default), a short list, all-linear (Phi-3 fuses q/k/v, gate/up).
TARGETS = {"qwen2": None, "llama3": ["q_proj", "v_proj", "down_proj"], "phi3": "all-linear"}
LEARN_TO_STOP = {  # a large lr on few distinct short answers: the tuned model answers, then ends its turn
    "lr": 5e-3,
    "train": {
        "max_steps": 40,
        "batch_size": 4,
        "grad_accum": 1,
        "save_steps": 100,
        "eval_steps": 0,
        "logging_steps": 10,
    },
    "evaluate": {"num_samples": 8, "max_new_tokens": 8, "batch_size": 8},
}
# LoRA on 3 of Llama-3's 7 linear layers learns to stop later: tuned.stopped_fraction after 40 steps is 0.0 at 5e-3
# and 0.125 at 2e-2 (with Llama-3's rope theta); 1.0 after 60 steps at 2e-2.
LEARN_TO_STOP_BY_FAMILY = {"llama3": {"lr": 2e-2, "train": {"max_steps": 60}}}


def short_answers(path):
    words = pd.read_parquet(REPO / "data/raw/finance_alpaca.parquet")["instruction"].head(120)
    rows = [
        {"instruction": f"Q{i}: {text[:40]}", "input": "", "output": ANSWERS[i % len(ANSWERS)]}
        for i, text in enumerate(words)
    ]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


@pytest.fixture(scope="module", params=list(families.FAMILIES))
def family_run(request, tmp_path_factory):
    name = request.param
    family = families.FAMILIES[name]
    root = tmp_path_factory.mktemp(f"family_{name}")
    model_dir = families.build(family, root / "model")
    changes = deep_update(local_model_params(model_dir), LEARN_TO_STOP)
    changes = deep_update(changes, LEARN_TO_STOP_BY_FAMILY.get(name, {}))
    changes["data"] = {"path": str(short_answers(root / "answers.jsonl"))}
    if TARGETS[name] is not None:
        changes["train"]["lora"] = {"target_modules": TARGETS[name]}
    project = make_project(root, changes, git=False)
    for step in STAGES:
        stage(step, project)
    return name, family, model_dir, project


def read(project, path):
    return json.loads((project / path).read_text())


def test_stop_ids_are_the_familys_end_of_turn_and_eos(family_run):
    _, family, _, project = family_run
    from finetune import modeling

    tokenizer = modeling.load_tokenizer(project / "models/base")
    expected = families.expected_stop_ids(family, tokenizer)
    assert read(project, "metrics/generation.json")["generation.eos_token_id"] == expected
    assert read(project, "data/eval/base.json")["generation"]["generation.eos_token_id"] == expected


def test_tuned_model_answers_and_stops(family_run):
    _, family, _, project = family_run
    import torch

    from finetune import chat_format, modeling
    from finetune.evaluation import generation

    metrics = read(project, "metrics/eval.json")
    assert metrics["tuned.stopped_fraction"] > 0.5, metrics
    samples = [json.loads(line) for line in (project / "metrics/samples.jsonl").read_text().splitlines()]
    assert sum(s["tuned_output"] in ANSWERS for s in samples) > len(samples) / 2, samples
    # Negative control: the same tuned model, stopped by the ChatML literals the old code looked up
    tokenizer = modeling.load_tokenizer(project / "models/base")
    old = [i for i in tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]) if i is not None]
    model = modeling.load_tuned(project / "models/base", project / "models/adapter", "none", torch.float32)
    test = pd.read_parquet(project / "data/processed/test.parquet").head(8)
    conversations = chat_format.conversations(test)
    new = generation.generate(model, tokenizer, conversations, 8, 8)
    assert sum(r["stopped"] for r in new) / len(new) > 0.5
    if family is families.QWEN2:
        assert old == modeling.stop_token_ids(project / "models/base", tokenizer)  # ChatML: the same ids
    else:
        before = generation.generate(model, tokenizer, conversations, 8, 8, stop_ids=old or [len(tokenizer)])
        assert sum(r["stopped"] for r in before) == 0


def test_adapter_covers_the_asked_layers_of_every_block(family_run):
    name, family, _, project = family_run
    from safetensors import safe_open

    with safe_open(project / "models/adapter/adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    found = {
        (m.group(1), m.group(2), m.group(3))
        for k in keys
        if (m := re.search(r"layers\.(\d+)\..*\.(\w+)\.lora_([AB])\.weight$", k))
    }
    asked = TARGETS[name]
    modules = family.linear_layers if asked == "all-linear" else (asked or REFERENCE_TARGETS)
    expected = {(str(layer), module, ab) for layer in range(2) for module in modules for ab in "AB"}
    assert found == expected
    train = read(project, "metrics/train.json")
    assert train["lora_layers"] == len(expected) // 2 and train["lora_target_modules"] == ",".join(sorted(modules))
    assert train["trainable_parameters"] > 0


def test_a_listed_module_the_model_lacks_fails_before_training(family_run):
    name, _, _, project = family_run
    if name != "phi3":
        pytest.skip("the fused-projection family")
    adapter = (project / "models/adapter/adapter_model.safetensors").read_bytes()
    params = (project / "params.yaml").read_text()
    write_params(project, {"train": {"lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}})
    try:
        failed = stage("train", project, check=False)
    finally:
        (project / "params.yaml").write_text(params)
    assert failed.returncode != 0
    assert (
        "q_proj, k_proj, v_proj are not a linear layer of Phi3ForCausalLM, whose linear layers are "
        "down_proj, gate_up_proj, o_proj, qkv_proj" in failed.stderr + failed.stdout
    )
    assert (project / "models/adapter/adapter_model.safetensors").read_bytes() == adapter


def test_merge_is_within_tolerance_and_the_card_names_the_template(family_run):
    _, family, model_dir, project = family_run
    merge = read(project, "metrics/merge.json")
    assert merge["max_abs_logit_diff"] <= merge["tolerance"]
    card = (project / "models/merged/README.md").read_text()
    assert f"`{model_dir}`'s own chat template" in card
    assert "an answer ends at any of " + ", ".join(f"`{t}`" for t in family.stop_tokens) in card
    assert family.end_of_turn in card.split("```text")[1] and "Qwen2's ChatML" not in card
