"""merge: a check that a broken merge fails, the bf16 export, the exported model's score, the model card.

The adapter here is made, not trained: LoRA B set to random values moves the tiny model's logits
by far more than merge.tolerance, so a merge that drops or misplaces it cannot pass (a few steps
at lr 1e-5 move them by ~3e-4, below the tolerance).
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

from helpers import REPO, make_project, stage
from stages import evaluation, merge, modeling, params, prompts

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOLERANCE = 1e-3  # params.yaml's merge.tolerance
TEST_ROWS = 12
DATA_COUNTS = {"rows_read": 130, "rows_kept": 120, "dropped_total": 10, "sampled": 120, "train": 108, "test": TEST_ROWS}
EVAL_METRICS = {"base.eval_loss": 6.2345, "tuned.eval_loss": 5.4321, "delta.eval_loss": -0.8024,
                "base.mean_token_accuracy": 0.0123, "tuned.mean_token_accuracy": 0.2345}


# ---------------------------------------------------------------- fixtures


def write_large_adapter(base_dir: Path, out: Path, seed: int = 0) -> None:
    """A LoRA adapter on every projection with random B (peft initialises B to 0): a large effect."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # lora_A's initialisation: the same adapter in every project
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                               LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    model.peft_config["default"].base_model_name_or_path = "tiny"
    model.save_pretrained(out, save_embedding_layers=False)
    modeling.load_tokenizer(base_dir).save_pretrained(out)


def make_merge_project(root: Path, tiny_base: Path, changes: dict | None = None) -> Path:
    """What merge reads, without running the stages before it: base, adapter, test split, metrics."""
    project = make_project(root, changes, git=False)
    shutil.copytree(tiny_base, project / merge.BASE_DIR)
    write_large_adapter(tiny_base, project / merge.ADAPTER_DIR)
    test = pd.read_parquet(REPO / "data/raw/finance_alpaca.parquet")[["instruction", "input", "output"]]
    (project / "data/processed").mkdir(parents=True)
    test.head(TEST_ROWS).to_parquet(project / merge.TEST_DATA, index=False)
    (project / "metrics").mkdir()
    (project / merge.DATA_METRICS).write_text(json.dumps(DATA_COUNTS))
    (project / merge.EVAL_METRICS).write_text(json.dumps(EVAL_METRICS))
    return project


def run_merge(project: Path, monkeypatch) -> None:
    with monkeypatch.context() as m:
        m.chdir(project)
        m.delenv("PARAMS_FILE", raising=False)
        merge.main()


@pytest.fixture(scope="module")
def merged_project(tmp_path_factory, tiny_base):
    """One successful merge (fp32 export) of the large adapter; tests below only read it."""
    project = make_merge_project(tmp_path_factory.mktemp("merge"), tiny_base)
    with pytest.MonkeyPatch.context() as m:
        run_merge(project, m)
    return project


def prompt_batch(tokenizer):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ("What is a bond?", "Classify this bank transaction: DEBIT CARD DENTAL $152.77")]
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.fixture(scope="module")
def reference(merged_project):
    """fp32 logits on two prompts, outside the stage: base alone, and base + adapter through peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = modeling.load_tokenizer(merged_project / merge.ADAPTER_DIR)
    batch = prompt_batch(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(merged_project / merge.BASE_DIR, dtype=torch.float32)
    base_logits = merge.logits(base, batch)
    tuned = PeftModel.from_pretrained(base, str(merged_project / merge.ADAPTER_DIR))
    return {"batch": batch, "base": base_logits, "tuned": merge.logits(tuned, batch)}


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

    merged_dir = merged_project / merge.OUT
    assert not (merged_dir / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith("<|im_start|>")
    logits = merge.logits(model, reference["batch"])
    assert merge.max_difference(reference["tuned"], reference["base"]) > 100 * TOLERANCE  # the adapter matters
    assert merge.max_difference(logits, reference["base"]) > 100 * TOLERANCE
    assert merge.max_difference(logits, reference["tuned"]) <= TOLERANCE


def skip_adapter(original):
    """A merge that drops the adapter: the base comes back unchanged."""
    def merge_and_unload(self, *args, **kwargs):
        return self.unload()
    return merge_and_unload


def wrong_weights(original):
    """A merge that adds layer 0's q_proj delta to layer 1 and the reverse."""
    def merge_and_unload(self, *args, **kwargs):
        a, b = (layer.self_attn.q_proj.lora_B["default"] for layer in self.model.model.layers[:2])
        a.weight.data, b.weight.data = b.weight.data, a.weight.data
        return original(self, *args, **kwargs)
    return merge_and_unload


def lossy_save(original):
    """An export that loses a weight on the way to disk (the model in memory is intact)."""
    def save_pretrained(self, directory, *args, **kwargs):
        from safetensors.torch import load_file, save_file

        original(self, directory, *args, **kwargs)
        path = Path(directory, "model.safetensors")
        tensors = load_file(path)
        tensors["model.layers.1.mlp.down_proj.weight"].zero_()
        save_file(tensors, path, metadata={"format": "pt"})
    return save_pretrained


PARITY = (r"merged model differs from base\+adapter by \S+ in logits \(merge.tolerance 0.001\); "
          r".*models/merged was not written")
FAULTS = {
    "skip_adapter": (skip_adapter, "peft.tuners.tuners_utils.BaseTuner.merge_and_unload", PARITY),
    "wrong_weights": (wrong_weights, "peft.tuners.tuners_utils.BaseTuner.merge_and_unload", PARITY),
    "lossy_save": (lossy_save, "transformers.PreTrainedModel.save_pretrained",
                   r"models/merged reloaded with plain transformers does not hold the merged weights "
                   r"\(changed: model.layers.1.mlp.down_proj.weight\); models/merged was not written"),
}


def patch(monkeypatch, fault: str) -> None:
    import importlib

    make, target, _ = FAULTS[fault]
    module, owner, name = target.rsplit(".", 2)
    cls = getattr(importlib.import_module(module), owner)
    monkeypatch.setattr(cls, name, make(getattr(cls, name)))


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_merge_fails_and_writes_nothing(merged_project, tmp_path, monkeypatch, fault):
    project = shutil.copytree(merged_project, tmp_path / "project")  # a merge that wrongly passes can't spoil others
    before = {path: digest(project / path) for path in (merge.OUT, merge.METRICS_OUT)}
    patch(monkeypatch, fault)
    with pytest.raises(modeling.ModelError, match=FAULTS[fault][2]):
        run_merge(project, monkeypatch)
    assert {path: digest(project / path) for path in before} == before


@pytest.mark.slow
def test_the_stage_exits_with_its_message(merged_project, tmp_path):
    """`python -m stages.merge` itself, with a merge that drops the adapter patched in at start-up."""
    project = shutil.copytree(merged_project, tmp_path / "project")
    (tmp_path / "sitecustomize.py").write_text(
        "from peft.tuners.tuners_utils import BaseTuner\n"
        "BaseTuner.merge_and_unload = lambda self, *args, **kwargs: self.unload()\n")
    before = {path: digest(project / path) for path in (merge.OUT, merge.METRICS_OUT)}
    result = stage("merge", cwd=project, check=False, extra_env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert re.search(r"^merge: error: " + PARITY, result.stderr, re.M), result.stderr
    assert "Traceback" not in result.stderr
    assert {path: digest(project / path) for path in before} == before


def test_check_export_names_what_differs():
    saved = {"a": torch.ones(2), "b": torch.zeros(2), "c": torch.ones(1)}
    merge.check_export(saved, {k: v.clone() for k, v in saved.items()}, "out")
    cases = [({"a": torch.ones(2), "b": torch.zeros(2)}, "missing: c"),
             ({**saved, "d": torch.ones(1)}, "unexpected: d"),
             ({**saved, "b": torch.full((2,), 1e-3)}, "changed: b"),
             ({**saved, "a": torch.ones(2, dtype=torch.bfloat16)}, "changed: a")]
    for reloaded, message in cases:
        with pytest.raises(modeling.ModelError, match=message):
            merge.check_export(saved, reloaded, "out")


# ---------------------------------------------------------------- bf16 export (the GPU default) on CPU


@pytest.fixture(scope="module")
def bf16_project(tmp_path_factory, tiny_base):
    project = make_merge_project(tmp_path_factory.mktemp("merge_bf16"), tiny_base, {"merge": {"dtype": "bf16"}})
    with pytest.MonkeyPatch.context() as m:
        run_merge(project, m)
    return project


def test_bf16_export_loads_and_matches_within_bf16_rounding(bf16_project, reference):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bf16_project / merge.OUT)  # plain: the saved dtype
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = merge.logits(model, reference["batch"])
    scale = reference["tuned"].abs().max().item()
    # bf16 keeps 8 significant bits (relative step 2**-8 = 0.4%), in the weights and in every
    # activation; through 2 layers the steps add up to ~1-2% of the largest logit here.
    bf16_tolerance = 0.05 * scale
    assert merge.max_difference(logits, reference["tuned"]) <= bf16_tolerance
    assert merge.max_difference(logits, reference["tuned"]) > TOLERANCE  # really bf16, not fp32 relabelled
    assert merge.max_difference(reference["base"], reference["tuned"]) > 10 * bf16_tolerance  # a lost adapter fails


def test_bf16_export_cost_shows_in_merge_metrics(merged_project, bf16_project):
    fp32 = json.loads((merged_project / merge.METRICS_OUT).read_text())
    bf16 = json.loads((bf16_project / merge.METRICS_OUT).read_text())
    assert (fp32["export_dtype"], bf16["export_dtype"]) == ("float32", "bfloat16")
    assert fp32["merged.eval_loss"] != bf16["merged.eval_loss"]
    assert abs(fp32["merged.eval_loss"] - bf16["merged.eval_loss"]) < 0.05 * fp32["merged.eval_loss"]


# ---------------------------------------------------------------- the shipped model's score


def test_merged_eval_loss_scores_the_export_as_a_user_loads_it(merged_project):
    from transformers import AutoModelForCausalLM

    metrics = json.loads((merged_project / merge.METRICS_OUT).read_text())
    test = pd.read_parquet(merged_project / merge.TEST_DATA)
    conversations = prompts.conversations(test)
    tokenizer = modeling.load_tokenizer(merged_project / merge.OUT)
    p = params.load("prepare", "evaluate", path=merged_project / "params.yaml")

    def score(model):
        return evaluation.response_metrics(model, tokenizer, conversations, p.evaluate.batch_size, p.prepare.max_length)

    shipped = score(AutoModelForCausalLM.from_pretrained(merged_project / merge.OUT))
    base = score(AutoModelForCausalLM.from_pretrained(merged_project / merge.BASE_DIR))
    assert metrics["merged.rows"] == TEST_ROWS
    assert metrics["merged.eval_loss"] == pytest.approx(shipped["eval_loss"], abs=1e-5)
    assert metrics["merged.mean_token_accuracy"] == pytest.approx(shipped["mean_token_accuracy"], abs=1e-9)
    assert metrics["merged.response_tokens"] == shipped["response_tokens"] > 0
    assert abs(metrics["merged.eval_loss"] - base["eval_loss"]) > 0.01  # the score is not the base's


def test_score_rows():
    assert merge.score_rows(10, 0) == list(range(10))
    assert merge.score_rows(10, 20) == list(range(10))
    subset = merge.score_rows(100, 7)
    assert len(subset) == 7 == len(set(subset)) and subset == sorted(subset) and subset == merge.score_rows(100, 7)
    assert subset != list(range(7))  # a seeded sample, not the head of the split


def test_eval_rows_param():
    assert params.parse({"merge": {"eval_rows": 200}}, ["merge"]).merge.eval_rows == 200
    with pytest.raises(params.ParamsError, match=r"merge.eval_rows must be >= 0 \(0: all test rows\), got -1"):
        params.parse({"merge": {"eval_rows": -1}}, ["merge"])


# ---------------------------------------------------------------- the model card


def test_model_card(merged_project):
    from huggingface_hub import ModelCard

    path = merged_project / merge.OUT / "README.md"
    card = path.read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "tiny" and meta["library_name"] == "transformers"
    assert meta["license"] == "unknown"  # the tiny base has no card to inherit one from
    assert {"lora", "peft", "trl", "sft"} <= set(meta["tags"])
    assert ModelCard.load(path).data.base_model == "tiny"  # huggingface_hub reads it as a model card
    metrics = json.loads((merged_project / merge.METRICS_OUT).read_text())
    eval_row = next(line for line in card.splitlines() if line.startswith("| eval_loss |"))
    assert eval_row.split("|")[2:5] == [" 6.2345 ", " 5.4321 ", f" {metrics['merged.eval_loss']:.4f} "]
    assert "`data/raw/finance_alpaca.parquet`: 130 rows read, 120 kept" in card and "12 test" in card
    assert "| `lr` | 1e-05 |" in card and "| `train.lora.r` | 8 |" in card
    assert "python -m stages.chat" in card


def test_model_card_loading_snippet_runs(merged_project, monkeypatch):
    card = (merged_project / merge.OUT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(merged_project)
    exec(compile(code, "README.md", "exec"), {"print": lambda *a: None})


def test_model_card_is_deterministic_and_follows_its_inputs(merged_project, tmp_path, monkeypatch):
    """A rerun writes the same bytes; a changed eval.json changes the card (it is a real input)."""
    project = tmp_path / "again"
    shutil.copytree(merged_project, project)
    card = (merged_project / merge.OUT / "README.md").read_bytes()
    run_merge(project, monkeypatch)
    assert (project / merge.OUT / "README.md").read_bytes() == card
    (project / merge.EVAL_METRICS).write_text(json.dumps({**EVAL_METRICS, "tuned.eval_loss": 4.0}))
    run_merge(project, monkeypatch)
    changed = (project / merge.OUT / "README.md").read_text()
    assert "| eval_loss | 6.2345 | 4.0000 |" in changed


def test_base_license_is_inherited(tmp_path):
    assert merge.base_license(str(tmp_path)) == "unknown"
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Qwen2\n")
    assert merge.base_license(str(tmp_path)) == "apache-2.0"
