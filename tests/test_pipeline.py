"""The whole pipeline under real DVC, on a tiny model: what reruns when, and what it produces."""

from __future__ import annotations

import json
import re

import pytest
import torch

from helpers import dvc, run, write_params

ALL_STAGES = {"ingest", "base", "prepare", "train", "evaluate_base", "evaluate", "merge", "report"}


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def commit(project, message: str) -> None:
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", message], cwd=project)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """One full `dvc repro` of a fresh project copy, committed; later tests build on it in order."""
    from helpers import make_project

    project = make_project(tmp_path_factory.mktemp("pipeline"))
    first = dvc("repro", cwd=project)
    commit(project, "first run")
    return project, first


def test_repro_runs_every_stage_and_writes_outputs(reproduced):
    project, first = reproduced
    assert ran(first.stdout) == ALL_STAGES
    data = json.loads((project / "metrics/data.json").read_text())
    assert data["train"] + data["val"] + data["test"] == data["sampled"] == 120
    assert data["rows_read"] == data["rows_kept"] + data["dropped_total"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json"):
        assert (project / "models/adapter" / name).is_file()
    from safetensors.torch import load_file

    adapter = load_file(project / "models/adapter/adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}  # fp32 on a CPU, not TRL's QLoRA bf16
    assert (project / "models/merged/model.safetensors").is_file()
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["global_step"] == 6 and train["eval_loss"] > 0
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    for metric in ("eval_loss", "perplexity", "mean_token_accuracy", "entropy", "rougeL_f1", "chrf"):
        assert {f"base.{metric}", f"tuned.{metric}", f"delta.{metric}"} <= evaluation.keys()
    samples = (project / "metrics/samples.jsonl").read_text().splitlines()
    assert len(samples) == 4
    assert {"prompt", "reference", "base_output", "tuned_output"} <= json.loads(samples[0]).keys()
    merge = json.loads((project / "metrics/merge.json").read_text())
    assert merge["max_abs_logit_diff"] <= merge["tolerance"]
    # dvclive wrote per-step curves at trainer steps, and dvc can draw them.
    loss_curve = (project / "metrics/train_live/plots/metrics/loss.tsv").read_text().splitlines()
    assert loss_curve[0].split("\t") == ["step", "loss"] and len(loss_curve) > 3
    dvc("plots", "show", "-o", "plots_html", cwd=project)
    assert (project / "plots_html/index.html").is_file()


def test_second_repro_is_a_no_op(reproduced):
    project, _ = reproduced
    again = dvc("repro", cwd=project)
    assert ran(again.stdout) == set()
    assert "up to date" in dvc("status", cwd=project).stdout


def test_lr_experiment_reruns_only_what_lr_touches(reproduced):
    project, _ = reproduced
    experiment = dvc("exp", "run", "-S", "lr=2e-5", cwd=project)
    assert ran(experiment.stdout) == {"train", "evaluate", "merge", "report"}, experiment.stdout
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout)
    changed = diff["metrics/eval.json"]
    assert "tuned.eval_loss" in changed and changed["tuned.eval_loss"]["diff"] != 0
    assert not any(key.startswith("base.") for key in changed), "base evaluation must stay cached"
    params = dvc("params", "diff", "--json", cwd=project).stdout
    assert "2e-05" in params or "2e-5" in params
    commit(project, "lr 2e-5")


def test_evaluate_param_reruns_only_evaluation(reproduced):
    project, _ = reproduced
    write_params(project, {"evaluate": {"max_new_tokens": 6}})
    result = dvc("repro", cwd=project)
    assert ran(result.stdout) == {"evaluate_base", "evaluate", "report"}
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout)
    assert any(key.endswith("generated_tokens_mean") for key in diff.get("metrics/eval.json", {}))
    run(["git", "checkout", "--", "params.yaml"], cwd=project)


def test_adapter_and_merged_model_generate_the_same(reproduced):
    project, _ = reproduced
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from stages import evaluation, modeling

    base, adapter, merged_dir = project / "models/base", project / "models/adapter", project / "models/merged"
    tokenizer = modeling.load_tokenizer(adapter)
    prompt = [{"prompt": [{"role": "user", "content": "What is a bond?"}], "completion": []}]

    quantized = modeling.load_tuned(base, adapter, "8bit", torch.float32, expected_base="tiny")
    assert getattr(quantized.base_model.model, "is_loaded_in_8bit", False)
    text = evaluation.generate(quantized, tokenizer, prompt, batch_size=1, max_new_tokens=8)[0]
    assert text["tokens"] > 0

    unquantized = PeftModel.from_pretrained(modeling.load_model(base, "none"), str(adapter))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)  # plain transformers, no peft
    assert not (merged_dir / "adapter_config.json").exists()
    assert type(merged).__name__ == "Qwen2ForCausalLM"
    expected = evaluation.generate(unquantized, tokenizer, prompt, batch_size=1, max_new_tokens=12)
    got = evaluation.generate(merged, tokenizer, prompt, batch_size=1, max_new_tokens=12)
    assert got == expected
