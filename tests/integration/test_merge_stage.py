"""`python -m stages.merge`: a broken merge fails and writes nothing, the bf16 export, the exported model's score,
the model card, and an adapter made for another base refused.

The adapter here is made, not trained (tests/merge_faults.py): LoRA B set to random values moves the tiny
model's logits by far more than merge.tolerance, so a merge that drops or misplaces it cannot pass.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from finetune import chat_format, config, merging, modeling, paths
from finetune.evaluation import scoring
from helpers import REPO, make_project, stage
from merge_faults import FAULTS, sitecustomize, write_large_adapter

TOLERANCE = 1e-3  # params.yaml's merge.tolerance
TEST_ROWS = 12
DATA_COUNTS = {"rows_read": 130, "rows_kept": 120, "dropped_total": 10, "sampled": 120, "train": 108, "test": TEST_ROWS}
EVAL_METRICS = {
    "base.eval_loss": 6.2345,
    "tuned.eval_loss": 5.4321,
    "delta.eval_loss": -0.8024,
    "base.mean_token_accuracy": 0.0123,
    "tuned.mean_token_accuracy": 0.2345,
}


# ---------------------------------------------------------------- fixtures


def make_merge_project(root: Path, tiny_base: Path, changes: dict | None = None) -> Path:
    """What merge reads, without running the stages before it: base, adapter, test split, metrics."""
    project = make_project(root, changes, git=False)
    shutil.copytree(tiny_base, project / paths.BASE_DIR)
    write_large_adapter(tiny_base, project / paths.ADAPTER_DIR)
    test = pd.read_parquet(REPO / "data/raw/finance_alpaca.parquet")[["instruction", "input", "output"]]
    (project / "data/processed").mkdir(parents=True)
    test.head(TEST_ROWS).to_parquet(project / paths.TEST_DATA, index=False)
    (project / "metrics").mkdir()
    (project / paths.DATA_METRICS).write_text(json.dumps(DATA_COUNTS))
    (project / paths.EVAL_METRICS).write_text(json.dumps(EVAL_METRICS))
    tuned_rows = {
        "nll": [20.0] * TEST_ROWS,
        "entropy": [30.0] * TEST_ROWS,
        "correct": [1] * TEST_ROWS,
        "tokens": [10] * TEST_ROWS,
    }  # evaluate's per-row sums, for the merged-minus-tuned intervals
    (project / "data/eval").mkdir(parents=True)
    (project / paths.EVAL_ROWS).write_text(json.dumps({"tuned": {"scored": tuned_rows}}))
    return project


def run_merge(project: Path, fault: str | None = None):
    """The stage as dvc.yaml runs it; a fault of tests/merge_faults.py patched in at its start-up."""
    extra_env = None
    if fault is not None:
        (project.parent / "sitecustomize.py").write_text(sitecustomize(fault))
        extra_env = {"PYTHONPATH": str(project.parent)}
    return stage("merge", cwd=project, check=fault is None, extra_env=extra_env)


@pytest.fixture(scope="module")
def merged_project(tmp_path_factory, tiny_base):
    """One successful merge (fp32 export) of the large adapter; tests below only read it."""
    project = make_merge_project(tmp_path_factory.mktemp("merge"), tiny_base)
    run_merge(project)
    return project


def prompt_batch(tokenizer):
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is a bond?", "Classify this bank transaction: DEBIT CARD DENTAL $152.77")
    ]
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.fixture(scope="module")
def reference(merged_project):
    """fp32 logits on two prompts, outside the stage: base alone, and base + adapter through peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = modeling.load_tokenizer(merged_project / paths.ADAPTER_DIR)
    batch = prompt_batch(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(merged_project / paths.BASE_DIR, dtype=torch.float32)
    base_logits = merging.logits(base, batch)
    tuned = PeftModel.from_pretrained(base, str(merged_project / paths.ADAPTER_DIR))
    return {"batch": batch, "base": base_logits, "tuned": merging.logits(tuned, batch)}


def digest(path: Path) -> str:
    """Content of a file or directory tree, to show a failed run left it as it was."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode() + f.read_bytes())
    return h.hexdigest()


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "no YAML front matter"
    return yaml.safe_load(match.group(1))


# ---------------------------------------------------------------- the merge and its check


def test_merged_model_carries_the_adapter(merged_project, reference):
    """Plain transformers loads the export; its logits are base+adapter's, far from the base's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = merged_project / paths.MERGED_DIR
    assert not (merged_dir / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith("<|im_start|>")
    logits = merging.logits(model, reference["batch"])
    assert merging.max_difference(reference["tuned"], reference["base"]) > 100 * TOLERANCE  # the adapter matters
    assert merging.max_difference(logits, reference["base"]) > 100 * TOLERANCE
    assert merging.max_difference(logits, reference["tuned"]) <= TOLERANCE


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_merge_fails_and_writes_nothing(merged_project, tmp_path, fault):
    """The stage itself, with a broken merge or export patched in at start-up: exit 1 with its message, no
    traceback, models/merged and metrics/merge.json as they were."""
    project = shutil.copytree(merged_project, tmp_path / "project")  # a merge that wrongly passes can't spoil others
    before = {path: digest(project / path) for path in (paths.MERGED_DIR, paths.MERGE_METRICS)}
    result = run_merge(project, fault)
    assert result.returncode == 1, result.stderr
    assert re.search(r"^merge: error: " + FAULTS[fault][2], result.stderr, re.M), result.stderr
    assert "Traceback" not in result.stderr
    assert {path: digest(project / path) for path in before} == before


# ---------------------------------------------------------------- bf16 export (the GPU default) on CPU


@pytest.fixture(scope="module")
def bf16_project(tmp_path_factory, tiny_base):
    project = make_merge_project(tmp_path_factory.mktemp("merge_bf16"), tiny_base, {"merge": {"dtype": "bf16"}})
    run_merge(project)
    return project


def test_bf16_export_loads_and_matches_within_bf16_rounding(bf16_project, reference):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bf16_project / paths.MERGED_DIR)  # plain: the saved dtype
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = merging.logits(model, reference["batch"])
    scale = reference["tuned"].abs().max().item()
    # bf16 keeps 8 significant bits (relative step 2**-8 = 0.4%), in the weights and in every
    # activation; through 2 layers the steps add up to ~1-2% of the largest logit here.
    bf16_tolerance = 0.05 * scale
    assert merging.max_difference(logits, reference["tuned"]) <= bf16_tolerance
    assert merging.max_difference(logits, reference["tuned"]) > TOLERANCE  # really bf16, not fp32 relabelled
    assert merging.max_difference(reference["base"], reference["tuned"]) > 10 * bf16_tolerance  # a lost adapter fails


def test_bf16_export_cost_shows_in_merge_metrics(merged_project, bf16_project):
    fp32 = json.loads((merged_project / paths.MERGE_METRICS).read_text())
    bf16 = json.loads((bf16_project / paths.MERGE_METRICS).read_text())
    assert (fp32["export_dtype"], bf16["export_dtype"]) == ("float32", "bfloat16")
    assert fp32["merged.eval_loss"] != bf16["merged.eval_loss"]
    assert abs(fp32["merged.eval_loss"] - bf16["merged.eval_loss"]) < 0.05 * fp32["merged.eval_loss"]


# ---------------------------------------------------------------- the shipped model's score


def test_merged_eval_loss_scores_the_export_as_a_user_loads_it(merged_project):
    from transformers import AutoModelForCausalLM

    metrics = json.loads((merged_project / paths.MERGE_METRICS).read_text())
    test = pd.read_parquet(merged_project / paths.TEST_DATA)
    conversations = chat_format.conversations(test)
    tokenizer = modeling.load_tokenizer(merged_project / paths.MERGED_DIR)
    p = config.load("prepare", "evaluate", path=merged_project / "params.yaml")

    def score(model):
        return scoring.response_metrics(model, tokenizer, conversations, p.evaluate.batch_size, p.prepare.max_length)

    shipped = score(AutoModelForCausalLM.from_pretrained(merged_project / paths.MERGED_DIR))
    base = score(AutoModelForCausalLM.from_pretrained(merged_project / paths.BASE_DIR))
    assert metrics["merged.rows"] == TEST_ROWS
    assert metrics["merged.eval_loss"] == pytest.approx(shipped["eval_loss"], abs=1e-5)
    assert metrics["merged.mean_token_accuracy"] == pytest.approx(shipped["mean_token_accuracy"], abs=1e-9)
    assert metrics["merged.response_tokens"] == shipped["response_tokens"] > 0
    assert abs(metrics["merged.eval_loss"] - base["eval_loss"]) > 0.01  # the score is not the base's


# ---------------------------------------------------------------- the model card


def test_model_card(merged_project):
    from huggingface_hub import ModelCard

    path = merged_project / paths.MERGED_DIR / "README.md"
    card = path.read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "tiny" and meta["library_name"] == "transformers"
    assert meta["license"] == "unknown"  # the tiny base has no card to inherit one from
    assert {"lora", "peft", "trl", "sft"} <= set(meta["tags"])
    assert ModelCard.load(path).data.base_model == "tiny"  # huggingface_hub reads it as a model card
    metrics = json.loads((merged_project / paths.MERGE_METRICS).read_text())
    eval_row = next(line for line in card.splitlines() if line.startswith("| eval_loss |"))
    assert eval_row.split("|")[2:5] == [" 6.2345 ", " 5.4321 ", f" {metrics['merged.eval_loss']:.4f} "]
    assert "`data/raw/finance_alpaca.parquet`: 130 rows read, 120 kept" in card and "12 test" in card
    assert "| `lr` | 1e-05 |" in card and "| `train.lora.r` | 8 |" in card
    assert "python -m finetune.chat" in card


def test_model_card_loading_snippet_runs(merged_project, monkeypatch):
    card = (merged_project / paths.MERGED_DIR / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(merged_project)
    exec(compile(code, "README.md", "exec"), {"print": lambda *a: None})


def test_model_card_is_deterministic_and_follows_its_inputs(merged_project, tmp_path):
    """A rerun writes the same bytes; a changed eval.json changes the card (it is a real input)."""
    project = tmp_path / "again"
    shutil.copytree(merged_project, project)
    card = (merged_project / paths.MERGED_DIR / "README.md").read_bytes()
    run_merge(project)
    assert (project / paths.MERGED_DIR / "README.md").read_bytes() == card
    (project / paths.EVAL_METRICS).write_text(json.dumps({**EVAL_METRICS, "tuned.eval_loss": 4.0}))
    run_merge(project)
    changed = (project / paths.MERGED_DIR / "README.md").read_text()
    assert "| eval_loss | 6.2345 | 4.0000 |" in changed


# ---------------------------------------------------------------- an adapter for another base


def test_merge_refuses_an_adapter_for_another_base(tmp_path, tiny_base):
    from peft import LoraConfig, get_peft_model

    project = make_project(tmp_path, git=False)
    model = get_peft_model(modeling.load_model(tiny_base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.peft_config["default"].base_model_name_or_path = "someone/else"
    model.save_pretrained(project / paths.ADAPTER_DIR, save_embedding_layers=False)
    result = stage("merge", cwd=project, check=False)
    assert result.returncode != 0
    assert (
        "merge: error:" in result.stderr and "trained on base 'someone/else', but model.base is 'tiny'" in result.stderr
    )
    assert not (project / "models/merged").exists() and not (project / "metrics/merge.json").exists()
