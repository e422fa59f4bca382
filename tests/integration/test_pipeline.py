"""The whole pipeline under real DVC, on a tiny model: what reruns when, what it produces, and the DVC
workflows around it (fresh clones, remotes, sweeps, local model directories)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest
import torch
import yaml

from helpers import dvc, local_model_params, run, stage, write_params

ALL_STAGES = {
    "check_params",
    "ingest",
    "base",
    "prepare",
    "train",
    "evaluate_base",
    "evaluate",
    "merge",
    "export",
    "report",
}
DOWNSTREAM_OF_BASE = {"prepare", "train", "evaluate_base", "evaluate", "merge", "export", "report"}
UP_TO_DATE = {}  # `dvc status --json` when nothing would run


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def commit(project, message: str) -> None:
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", message], cwd=project)


def status(project) -> dict:
    return json.loads(dvc("status", "--json", cwd=project).stdout)


def restore(project) -> None:
    """Back to the last commit: git files (metrics, dvc.lock, params) and the DVC outputs they name."""
    run(["git", "reset", "-q", "--hard"], cwd=project)
    dvc("checkout", "--force", "-q", cwd=project)


def copy_repo(project, root):
    """An independent copy of a project repo (git, DVC cache and workspace), for tests that change it."""
    copy = root / "repo"
    shutil.copytree(project, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """One full `dvc repro` of a fresh project copy, committed; later tests build on it in order."""
    from helpers import make_project

    project = make_project(tmp_path_factory.mktemp("pipeline"))
    first = dvc("repro", cwd=project)
    commit(project, "first run")
    return project, first


def test_repro_runs_every_stage_and_writes_outputs(reproduced, tmp_path):
    project, first = reproduced
    assert ran(first.stdout) == ALL_STAGES
    data = json.loads((project / "metrics/data.json").read_text())
    assert data["train"] + data["val"] + data["test"] == data["sampled"] == 120
    assert data["rows_read"] == data["rows_kept"] + data["dropped_total"] + data["rows_unchecked"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json"):
        assert (project / "models/adapter" / name).is_file()
    from safetensors.torch import load_file

    adapter = load_file(project / "models/adapter/adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}  # fp32 on a CPU, not TRL's QLoRA bf16
    assert (project / "models/merged/model.safetensors").is_file()
    for out in ("models/base", "models/adapter", "models/merged"):  # stored once: hard links into .dvc/cache
        assert all(f.stat().st_nlink > 1 for f in (project / out).iterdir()), out
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
    dvc("plots", "show", "-o", str(tmp_path / "plots"), cwd=project)
    assert (tmp_path / "plots/index.html").is_file()


def test_second_repro_is_a_no_op(reproduced):
    project, _ = reproduced
    again = dvc("repro", cwd=project)
    assert ran(again.stdout) == set()
    assert status(project) == UP_TO_DATE
    assert dvc("status", "-q", cwd=project, check=False).returncode == 0  # what a CI check runs
    assert run(["git", "status", "--porcelain"], cwd=project).stdout == ""


def test_lr_experiment_reruns_only_what_lr_touches(reproduced):
    project, _ = reproduced
    experiment = dvc("exp", "run", "-S", "lr=2e-5", cwd=project)
    assert ran(experiment.stdout) == {"check_params", "train", "evaluate", "merge", "export", "report"}, (
        experiment.stdout
    )
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout)
    changed = diff["metrics/eval.json"]
    assert "tuned.eval_loss" in changed and changed["tuned.eval_loss"]["diff"] != 0
    assert not any(key.startswith("base.") for key in changed), "base evaluation must stay cached"
    params = dvc("params", "diff", "--json", cwd=project).stdout
    assert "2e-05" in params or "2e-5" in params
    commit(project, "lr 2e-5")


def test_evaluate_param_reruns_evaluation_and_what_reports_it(reproduced):
    project, _ = reproduced
    write_params(project, {"evaluate": {"max_new_tokens": 6}})
    result = dvc("repro", cwd=project)
    # merge too: the model card carries the evaluation's metrics
    assert ran(result.stdout) == {"check_params", "evaluate_base", "evaluate", "merge", "export", "report"}
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout)
    assert any(key.endswith("generated_tokens_mean") for key in diff.get("metrics/eval.json", {}))
    restore(project)


def test_adapter_and_merged_model_generate_the_same(reproduced):
    project, _ = reproduced
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune import modeling
    from finetune.evaluation import generation

    base, adapter, merged_dir = project / "models/base", project / "models/adapter", project / "models/merged"
    tokenizer = modeling.load_tokenizer(adapter)
    prompt = [{"prompt": [{"role": "user", "content": "What is a bond?"}], "completion": []}]

    quantized = modeling.load_tuned(base, adapter, "8bit", torch.float32, expected_base="tiny")
    assert getattr(quantized.base_model.model, "is_loaded_in_8bit", False)
    text = generation.generate(quantized, tokenizer, prompt, batch_size=1, max_new_tokens=8)[0]
    assert text["tokens"] > 0

    unquantized = PeftModel.from_pretrained(modeling.load_model(base, "none"), str(adapter))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)  # plain transformers, no peft
    assert not (merged_dir / "adapter_config.json").exists()
    assert type(merged).__name__ == "Qwen2ForCausalLM"
    expected = generation.generate(unquantized, tokenizer, prompt, batch_size=1, max_new_tokens=12)
    got = generation.generate(merged, tokenizer, prompt, batch_size=1, max_new_tokens=12)
    assert got == expected


# ---------------------------------------------------------------- metrics in git, byte-reproducible

# What `dvc repro -f -s STAGE` must write again byte for byte (same inputs, same machine): its metrics
# files in git, and its dvc.lock entry (the hashes of its cached outputs, e.g. data/eval/base.json).
# train: train.json and dvclive's curves and summary (timings are kept out of both); checkpoints are
# cleared first so it is a fresh run, not a resumed one. Run-to-run-varying files are compared nowhere:
VARYING = {"metrics/train_speed.json": "seconds, tokens/s, peak memory"}
REPRODUCED = {
    "prepare": ["metrics/data.json"],
    "evaluate_base": [],
    "evaluate": ["metrics/eval.json", "metrics/samples.jsonl", "metrics/samples.json", "metrics/generation.json"],
    "merge": ["metrics/merge.json"],
    "train": ["metrics/train.json", "metrics/train_live"],
}


def lock_entry(project, stage: str) -> dict:
    entry = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    entry["outs"] = [o for o in entry.get("outs", []) if o["path"] not in VARYING]
    return entry


@pytest.mark.parametrize("name", list(REPRODUCED))
def test_rerun_writes_the_same_bytes(reproduced, name):
    project, _ = reproduced
    files = REPRODUCED[name]
    lock = lock_entry(project, name)
    if name == "train":
        shutil.rmtree(project / "models/checkpoints")
    rerun = dvc("repro", "-f", "-s", name, cwd=project)
    assert ran(rerun.stdout) == {name}
    try:
        diff = run(["git", "diff", "--exit-code", "--stat", "--", *files], cwd=project, check=False)
        assert diff.returncode == 0, diff.stdout
        assert lock_entry(project, name) == lock
        if name == "train":  # negative control: the same check sees a file that does vary
            assert (
                run(["git", "diff", "--quiet", "--", "metrics/train_speed.json"], cwd=project, check=False).returncode
                == 1
            )
            assert (project / "metrics/train_live/plots/metrics/loss.tsv").is_file()
    finally:
        restore(project)


def test_whole_pipeline_rerun_writes_the_same_bytes(reproduced, tmp_path):
    """`dvc repro -f` of every stage writes every file git keeps (metrics, plots, report.html) byte for byte
    but train_speed.json, every dvc.lock entry (the hashes of models and data) and the model card.

    Negative controls: each compared file in git was rewritten (a file left alone would pass unseen; the card
    needs no such check: DVC removes merge's outputs before it runs, then links the new card to the cache
    object of the same bytes, which keeps its old mtime), and the same diff sees train_speed.json, which
    does vary."""
    project = copy_repo(reproduced[0], tmp_path)
    card = project / "models/merged/README.md"
    card_bytes, lock = card.read_bytes(), {name: lock_entry(project, name) for name in ALL_STAGES}
    kept = run(["git", "ls-files", "metrics"], cwd=project).stdout.split()
    assert {"metrics/report.html", "metrics/eval.json", "metrics/generation.json"} <= set(kept)
    written = {path: (project / path).stat().st_mtime_ns for path in kept}
    shutil.rmtree(project / "models/checkpoints")  # a fresh training run, not a resumed one
    rerun = dvc("repro", "-f", cwd=project)
    assert ran(rerun.stdout) == ALL_STAGES
    diff = run(
        ["git", "diff", "--exit-code", "--stat", "--", ".", *[f":(exclude){v}" for v in VARYING], ":(exclude)dvc.lock"],
        cwd=project,
        check=False,
    )
    assert diff.returncode == 0, diff.stdout
    assert {name: lock_entry(project, name) for name in ALL_STAGES} == lock
    assert card.read_bytes() == card_bytes
    unwritten = [p for p, t in written.items() if (project / p).stat().st_mtime_ns == t and p not in VARYING]
    assert not unwritten, f"not rewritten by the rerun: {unwritten}"
    assert run(["git", "diff", "--quiet", "--", *VARYING], cwd=project, check=False).returncode == 1


# ---------------------------------------------------------------- evaluate refuses a base made otherwise

EVALUATE_WRITES = [
    "metrics/eval.json",
    "metrics/samples.jsonl",
    "metrics/samples.json",
    "metrics/generation.json",
    "data/eval/rows.json",
]


@pytest.mark.parametrize("edited", [True, False])
def test_evaluate_refuses_a_base_made_with_other_settings(reproduced, tmp_path, edited):
    """stages.evaluate with a data/eval/base.json whose generation block says repetition_penalty 1.3: exit 1,
    the file named, nothing written (evaluate's outputs are removed first, so a write of the same bytes shows).

    Negative control (edited=False): the base.json as evaluate_base wrote it; the stage writes every output."""
    project = copy_repo(reproduced[0], tmp_path)
    base_path = project / "data/eval/base.json"
    base = json.loads(base_path.read_text())
    assert base["generation"]["generation.repetition_penalty"] == 1.0
    if edited:
        base["generation"]["generation.repetition_penalty"] = 1.3
        base_path.unlink()  # a DVC output: replaced, not edited in place
        base_path.write_text(json.dumps(base))
    for path in EVALUATE_WRITES:
        (project / path).unlink()
    result = stage("evaluate", project, check=False)
    written = [path for path in EVALUATE_WRITES if (project / path).exists()]
    if edited:
        assert result.returncode == 1, result.stdout + result.stderr
        assert (
            "evaluate: error: data/eval/base.json was generated with other settings (generation.repetition_penalty)"
            in result.stderr
        )
        assert written == []
    else:
        assert result.returncode == 0, result.stderr
        assert written == EVALUATE_WRITES
        assert json.loads((project / "metrics/generation.json").read_text()) == base["generation"]


# ---------------------------------------------------------------- a fresh clone can compare


def metrics_files(project) -> list[str]:
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
    return [m if isinstance(m, str) else next(iter(m)) for s in stages for m in s.get("metrics", [])]


@pytest.mark.parametrize("metrics_in", ["git", "cache"])
def test_a_fresh_clone_shows_head_metrics(reproduced, tmp_path, metrics_in):
    """`dvc metrics show` and `dvc exp show` in a clone read HEAD's numbers from git, before any run.

    "cache" is the negative control: eval.json as a cached output (how it was), which a clone cannot read.
    """
    project = reproduced[0]
    if metrics_in == "cache":
        project = copy_repo(project, tmp_path)
        pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
        pipeline["stages"]["evaluate"]["metrics"] = ["metrics/eval.json"]
        (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        run(["git", "rm", "-q", "--cached", "metrics/eval.json"], cwd=project)
        dvc("commit", "-f", "evaluate", cwd=project)
        commit(project, "eval.json in the cache")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], cwd=tmp_path)
    assert not (clone / ".dvc/cache").exists()

    shown = dvc("metrics", "show", "--json", cwd=clone)
    table = dvc("exp", "show", "--csv", "--no-pager", cwd=clone)
    experiments = json.loads(dvc("exp", "show", "--json", cwd=clone).stdout)
    head = next(row for row in experiments if row["rev"] != "workspace")["data"]["metrics"]
    loaded = {path: bool(head.get(path, {}).get("data")) and "error" not in head[path] for path in metrics_files(clone)}
    failed = "failed to load" in shown.stderr + table.stderr or "!" in re.split(r"[,\n]", table.stdout)
    if metrics_in == "git":
        assert all(loaded.values()), loaded
        assert not failed, shown.stderr + table.stdout + table.stderr
        values = next(iter(json.loads(shown.stdout).values()))["data"]  # the workspace: the checkout of HEAD
        assert values["metrics/eval.json"]["data"] == json.loads((project / "metrics/eval.json").read_text())
    else:
        assert loaded["metrics/eval.json"] is False and failed


# ---------------------------------------------------------------- remote storage


def output_paths(project) -> list[str]:
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"].values()
    return sorted({o["path"] for s in stages for o in s.get("outs", [])})


def tree_bytes(root, rel: str) -> dict[str, str]:
    path = root / rel
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("checkpoints", ["not an output", "an output"])
def test_pull_restores_everything_into_a_fresh_clone(reproduced, tmp_path, checkpoints):
    """dvc push to a local directory remote; a fresh clone with an empty cache pulls, is clean, reruns nothing.

    "an output" is the negative control: models/checkpoints as the `cache: false` output it was, which is
    never pushed, so a pulled clone's status reports it deleted.
    """
    project = copy_repo(reproduced[0], tmp_path)
    if checkpoints == "an output":
        pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
        pipeline["stages"]["train"]["outs"].append({"models/checkpoints": {"persist": True, "cache": False}})
        (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        dvc("commit", "-f", "train", cwd=project)
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "storage", str(remote), cwd=project)
    dvc("push", cwd=project)
    commit(project, "remote")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], cwd=tmp_path)
    assert status(clone) != UP_TO_DATE  # control: before the pull the outputs are missing

    dvc("pull", cwd=clone)
    if checkpoints == "an output":
        assert "models/checkpoints" in json.dumps(status(clone))
        return
    for path in output_paths(project):
        assert tree_bytes(clone, path) == tree_bytes(project, path), path
    assert "models/checkpoints" not in output_paths(project)
    assert status(clone) == UP_TO_DATE
    assert ran(dvc("repro", cwd=clone).stdout) == set()
    assert run(["git", "status", "--porcelain"], cwd=clone).stdout == ""


# ---------------------------------------------------------------- sweeps


def cached_file_md5(project, rev: str, out: str, name: str) -> str:
    """The md5 of file `name` inside directory output `out`, as experiment `rev`'s dvc.lock records it."""
    lock = yaml.safe_load(run(["git", "show", f"{rev}:dvc.lock"], cwd=project).stdout)
    dir_md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == out)
    listing = json.loads((project / ".dvc/cache/files/md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    return next(entry["md5"] for entry in listing if entry["relpath"] == name)


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_queued_sweep_runs_both_and_applies_the_better(reproduced, tmp_path):
    project = copy_repo(reproduced[0], tmp_path)
    dvc("exp", "run", "--queue", "-S", "lr=1e-3,3e-2", cwd=project)
    result = dvc("exp", "run", "--run-all", cwd=project)  # = `dvc queue start`, then follows the logs
    assert result.stdout.count("Running stage 'train'") == 2, result.stdout
    assert "Running stage 'evaluate_base'" not in result.stdout  # base evaluated once, for the whole grid
    assert result.stdout.count("Stage 'evaluate_base' didn't change") == 2

    table = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    runs = {}
    for baseline in table:
        for exp in baseline.get("experiments") or []:
            row = exp["revs"][0]
            runs[row["name"]] = (
                row["rev"],
                row["data"]["params"]["params.yaml"]["data"]["lr"],
                row["data"]["metrics"]["metrics/eval.json"]["data"]["tuned.eval_loss"],
            )
    assert sorted(lr for _, lr, _ in runs.values()) == [1e-3, 3e-2], runs
    (best, (best_rev, _, best_loss)), (other, (other_rev, _, other_loss)) = sorted(runs.items(), key=lambda r: r[1][2])
    assert best_loss < other_loss

    adapter = project / "models/adapter/adapter_model.safetensors"
    expected = cached_file_md5(project, best_rev, "models/adapter", "adapter_model.safetensors")
    assert expected != cached_file_md5(project, other_rev, "models/adapter", "adapter_model.safetensors")
    assert md5(adapter) != expected  # control: the workspace holds the baseline's adapter
    dvc("exp", "apply", best, cwd=project)
    assert md5(adapter) == expected
    assert json.loads((project / "metrics/eval.json").read_text())["tuned.eval_loss"] == best_loss
    assert status(project) == UP_TO_DATE


# ---------------------------------------------------------------- a local model directory is a dependency


def test_edited_local_model_reruns_base_and_everything_after_it(reproduced, tmp_path):
    project = copy_repo(reproduced[0], tmp_path)
    local = tmp_path / "local_model"
    shutil.copytree(project / "models/base", local)  # a complete model directory (the tiny one)
    write_params(project, local_model_params(local))
    assert ran(dvc("repro", "base", cwd=project).stdout) == {"check_params", "base"}  # params changed: checked first
    # Downstream outputs would be the same bytes (same weights, same tokenizer): record them instead of
    # rerunning, so the lock is complete for the local model.
    dvc("commit", "-f", *DOWNSTREAM_OF_BASE, cwd=project)

    unchanged = dvc("repro", cwd=project)  # the directory untouched: nothing runs
    assert ran(unchanged.stdout) == set()
    assert status(project) == UP_TO_DATE
    assert dvc("status", "-q", cwd=project, check=False).returncode == 0

    config = local / "generation_config.json"
    edited = {**json.loads(config.read_text()), "repetition_penalty": 1.1}
    config.unlink()  # a copy of a read-only cache link
    config.write_text(json.dumps(edited))
    assert dvc("status", "-q", cwd=project, check=False).returncode == 1  # DVC itself sees the edit
    assert ran(dvc("repro", "base", cwd=project).stdout) == {"base"}
    # export reads models/merged alone, which a dry run cannot know merge will change
    assert ran(dvc("repro", "--dry", cwd=project).stdout) == DOWNSTREAM_OF_BASE - {"export"}


def tokenizer_files(base_dir, out) -> None:
    """vocab.json + merges.txt (the files model.tiny.tokenizer: local reads) from a saved tokenizer.json."""
    model = json.loads((base_dir / "tokenizer.json").read_text())["model"]
    out.mkdir()
    (out / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def test_edited_tokenizer_directory_reruns_base(reproduced, tmp_path):
    project = copy_repo(reproduced[0], tmp_path)
    tokenizer = tmp_path / "tokenizer"
    tokenizer_files(project / "models/base", tokenizer)
    write_params(project, local_model_params(tokenizer, tokenizer_only=True))
    assert ran(dvc("repro", "base", cwd=project).stdout) == {"check_params", "base"}  # params changed: checked first
    before = lock_entry(project, "base")["outs"]

    assert ran(dvc("repro", "base", cwd=project).stdout) == set()  # untouched: base not rerun

    merges = tokenizer / "merges.txt"
    merges.write_text("".join(merges.read_text().splitlines(keepends=True)[:-20]))  # 20 merges fewer
    assert ran(dvc("repro", "base", cwd=project).stdout) == {"base"}
    assert lock_entry(project, "base")["outs"] != before  # a new models/base: everything after it reruns


# ---------------------------------------------------------------- a refused param removes nothing


def every_output(project) -> dict[str, str]:
    """sha256 of every file of every output and metrics file dvc.lock records (models, data, metrics, report)."""
    found = {}
    for path in output_paths(project):
        found |= tree_bytes(project, path)
    return found


@pytest.mark.parametrize(
    "setting,message",
    [
        ("lr=-1", "lr must be > 0, got -1"),
        ("model.quantization=9bit", "model.quantization must be one of 8bit, 4bit, none, got '9bit'"),
    ],
)
def test_a_refused_param_removes_nothing(reproduced, tmp_path, setting, message):
    """check_params runs first (every stage depends on it): a bad -S stops DVC before it removes any output.

    Negative control: the same run with check_params no dependency of train; DVC then removes train's outputs
    before train refuses the param."""
    project = copy_repo(reproduced[0], tmp_path)
    before = every_output(project)
    assert {"models/adapter/adapter_model.safetensors", "metrics/train.json", "metrics/report.html"} <= before.keys()
    refused = dvc("exp", "run", "-S", setting, cwd=project, check=False)
    assert refused.returncode != 0
    assert f"check_params: error: params.yaml: 1 problem(s):\n  {message}" in refused.stdout + refused.stderr
    assert ran(refused.stdout) == {"check_params"}
    assert every_output(project) == before

    restore(project)
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"]["train"]["deps"].remove("models/params_ok.json")
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    key, value = setting.split("=")
    change = {key: float(value)} if key == "lr" else {"model": {"quantization": value}}
    write_params(project, change)
    assert dvc("repro", "-s", "train", cwd=project, check=False).returncode != 0
    assert not (project / "metrics/train.json").exists()  # the control: what the check prevents
