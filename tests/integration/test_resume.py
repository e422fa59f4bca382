"""Resumable training end to end: kill train after a checkpoint, rerun, get the uninterrupted run's result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import helpers
from finetune.training import checkpoints

MAX_STEPS, SAVE_STEPS = 8, 2
# Tiny model (FAST_PARAMS), short rows, 8 optimizer steps of 2 rows (1 x 2 accumulated), a checkpoint every 2.
# lr 3e-3: a step moves the adapter far past the tolerances, so a resume that restores the wrong optimizer, scheduler
# or RNG state ends elsewhere (the controls below); at lr 1e-5 a step moves a weight by about 1e-5.
PARAMS = {
    "lr": 3e-3,
    "prepare": {"n": 60, "max_length": 128, "too_long": "truncate"},
    "train": {
        "max_steps": MAX_STEPS,
        "save_steps": SAVE_STEPS,
        "save_total_limit": 2,
        "logging_steps": 1,
        "eval_steps": 0,
        "batch_size": 1,
        "grad_accum": 2,
    },
}
CKPT = "models/checkpoints"
LOSS_TSV = "metrics/train_live/plots/metrics/loss.tsv"
TOL = 1e-4
PREPARED_OUTS = ("data/interim", "models/base", "data/processed", "metrics/data.json")


# ---------------------------------------------------------------- helpers


def copy_project(src: Path, root: Path) -> Path:
    dst = root / "project"
    shutil.copytree(src, dst)
    return dst


def train(project: Path) -> subprocess.CompletedProcess:
    return helpers.stage("train", project)


def start(cmd: list[str], project: Path, log: Path, **kwargs) -> subprocess.Popen:
    """Run in the background; output goes to a file (a pipe nobody reads would fill up and stall the child)."""
    with log.open("w") as out:
        return subprocess.Popen(
            cmd,
            cwd=project,
            env=helpers.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_sigint,
            **kwargs,
        )


def default_sigint() -> None:
    """A suite run as a background job (`make test &`) ignores SIGINT, and an ignored signal stays
    ignored across exec: the child would finish instead of being interrupted. With SIGINT at its
    default, the child's Python installs its usual Ctrl-C handling."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before it was killed:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def logged_steps(project: Path, tsv: str = LOSS_TSV) -> list[int]:
    path = project / tsv
    if not path.is_file():
        return []
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:] if line.split("\t")[0].isdigit()]


def complete_checkpoint(project: Path, step: int):
    return lambda: checkpoints.is_complete(project / CKPT / f"checkpoint-{step}")


def latest(project: Path) -> Path | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a checkpoint cut off by the kill is expected
        return checkpoints.latest_complete(project / CKPT)


def metrics(project: Path) -> dict:
    """What the run learned, and how it ran (resumed_from_step lives with the timings)."""
    learned = json.loads((project / "metrics/train.json").read_text())
    return {
        **learned,
        "resumed_from_step": json.loads((project / "metrics/train_speed.json").read_text())["resumed_from_step"],
    }


def adapter(project: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(project / "models/adapter/adapter_model.safetensors")


def assert_same_result(project: Path, reference: dict, live_history: bool = True) -> None:
    """Same losses as the uninterrupted run, same adapter (dtype included), same dvclive history."""
    import torch

    got = metrics(project)
    assert got["global_step"] == MAX_STEPS
    for key in ("train_loss", "eval_loss", "last_logged_loss"):
        assert got[key] == pytest.approx(reference["metrics"][key], abs=TOL), key
    assert got["tokens_seen"] == reference["metrics"]["tokens_seen"]
    weights = adapter(project)
    assert weights.keys() == reference["adapter"].keys()
    for name, tensor in weights.items():
        assert tensor.dtype == reference["adapter"][name].dtype, name  # a resumed bf16 adapter must stay bf16
        torch.testing.assert_close(tensor, reference["adapter"][name], atol=1e-6, rtol=1e-4, msg=name)
    if not live_history:
        return
    # dvclive: every step once, in order (rows the killed run logged after its checkpoint are dropped)
    assert logged_steps(project) == list(range(1, MAX_STEPS + 1))
    rows = [line.split("\t") for line in (project / LOSS_TSV).read_text().splitlines()[1:]]
    expected = [line.split("\t") for line in reference["loss_tsv"][1:]]
    assert [float(loss) for _, loss in rows] == pytest.approx([float(loss) for _, loss in expected], abs=TOL)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """ingest, base and prepare run once; each test trains in its own copy."""
    project = helpers.make_project(tmp_path_factory.mktemp("prepared"), params=PARAMS, git=False)
    for name in ("ingest", "base", "prepare"):
        helpers.stage(name, project)
    return project


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> dict:
    """The uninterrupted run every resumed one must reproduce."""
    project = copy_project(prepared, tmp_path_factory.mktemp("reference"))
    result = train(project)
    assert "resuming from" not in result.stdout
    assert metrics(project)["resumed_from_step"] == 0
    return {
        "project": project,
        "metrics": metrics(project),
        "adapter": adapter(project),
        "loss_tsv": (project / LOSS_TSV).read_text().splitlines(),
    }


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_killed_train_resumes_to_the_uninterrupted_result(prepared, reference, tmp_path, sig):
    project = copy_project(prepared, tmp_path)
    log = tmp_path / "killed.log"
    proc = start([sys.executable, "-m", "stages.train"], project, log)
    try:
        wait_for(complete_checkpoint(project, SAVE_STEPS), proc, log)
        # one more step logged: the killed run leaves dvclive rows past its last checkpoint
        wait_for(lambda: any(s > SAVE_STEPS for s in logged_steps(project)), proc, log)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, log.read_text()[-2000:]
    assert not (project / "metrics/train.json").exists() and not (project / "models/adapter").exists()
    resume_at = latest(project)
    assert resume_at is not None
    step = checkpoints.step_of(resume_at)
    assert SAVE_STEPS <= step < MAX_STEPS

    result = train(project)
    assert f"resuming from {CKPT}/checkpoint-{step}" in result.stdout
    assert metrics(project)["resumed_from_step"] == step
    assert_same_result(project, reference)


def test_changed_param_clears_checkpoints(reference, tmp_path):
    project = copy_project(reference["project"], tmp_path)
    stamp = project / CKPT / checkpoints.FINGERPRINT_FILE
    old_stamp = stamp.read_text()
    assert latest(project) is not None  # a finished run leaves checkpoints (persist) that would be resumed
    helpers.write_params(project, {"lr": 1e-3})

    result = train(project)
    assert "clearing checkpoints" in result.stdout
    assert "resuming from" not in result.stdout
    got = metrics(project)
    assert got["resumed_from_step"] == 0 and got["global_step"] == MAX_STEPS
    assert got["eval_loss"] != pytest.approx(reference["metrics"]["eval_loss"], abs=TOL)  # really another run
    assert stamp.read_text() != old_stamp
    assert logged_steps(project) == list(range(1, MAX_STEPS + 1))


def test_checkpoint_missing_a_file_is_skipped(reference, tmp_path):
    project = copy_project(reference["project"], tmp_path)
    last, previous = (project / CKPT / f"checkpoint-{s}" for s in (MAX_STEPS, MAX_STEPS - SAVE_STEPS))
    assert checkpoints.is_complete(last) and checkpoints.is_complete(previous)
    (last / "optimizer.pt").unlink()
    shutil.rmtree(project / "models/adapter")
    (project / "metrics/train.json").unlink()

    result = train(project)
    assert "skipping incomplete checkpoint" in result.stderr and "optimizer.pt" in result.stderr
    assert f"resuming from {CKPT}/checkpoint-{MAX_STEPS - SAVE_STEPS}" in result.stdout
    assert metrics(project)["resumed_from_step"] == MAX_STEPS - SAVE_STEPS
    assert checkpoints.is_complete(last)  # saved again by the resumed run
    assert_same_result(project, reference)


# A resume that loses part of the checkpoint's state, put in place at the train stage's start-up (sitecustomize):
# Trainer's own loading of that state replaced by nothing.
RESUME_FAULTS = {
    "fresh_optimizer": "_load_optimizer_and_scheduler",  # Adam moments and the lr schedule start again
    "no_rng_state": "_load_rng_state",  # dropout draws as a fresh run does, not as step 6 of this one
}


def differs_from_reference(project: Path, reference: dict) -> float:
    """The largest difference of the adapter from the uninterrupted run's, after checking the run itself completed."""
    import torch

    assert metrics(project)["global_step"] == MAX_STEPS
    weights = adapter(project)
    return max(
        float((weights[name].float() - reference["adapter"][name].float()).abs().max())
        for name in weights
        if name in reference["adapter"] and torch.is_floating_point(weights[name])
    )


@pytest.mark.parametrize("fault", RESUME_FAULTS)
def test_a_resume_that_loses_optimizer_or_rng_state_fails_the_comparison(reference, tmp_path, fault):
    """Negative controls of every resume test here: each loss of state must fail assert_same_result."""
    project = copy_project(reference["project"], tmp_path)
    shutil.rmtree(project / CKPT / f"checkpoint-{MAX_STEPS}")  # resume from checkpoint-6: two steps to go
    shutil.rmtree(project / "models/adapter")
    (project / "metrics/train.json").unlink()
    (tmp_path / "sitecustomize.py").write_text(
        f"import transformers\ntransformers.Trainer.{RESUME_FAULTS[fault]} = lambda self, checkpoint=None: None\n"
    )
    result = helpers.stage("train", project, extra_env={"PYTHONPATH": str(tmp_path)})
    assert f"resuming from {CKPT}/checkpoint-{MAX_STEPS - SAVE_STEPS}" in result.stdout
    assert differs_from_reference(project, reference) > 1e-4  # 100x assert_same_result's atol
    with pytest.raises(AssertionError):
        assert_same_result(project, reference, live_history=False)


def test_killed_after_last_checkpoint_does_not_overtrain(reference, tmp_path):
    """Killed after the final checkpoint (during the last evaluation or saving the adapter), then rerun.

    Trainer resumed at max_steps would take a 9th step; train redoes the last stretch instead.
    """
    project = copy_project(reference["project"], tmp_path)
    assert checkpoints.is_final(project / CKPT / f"checkpoint-{MAX_STEPS}")
    shutil.rmtree(project / "models/adapter")
    (project / "metrics/train.json").unlink()

    result = train(project)
    assert "ends a finished run" in result.stdout
    assert f"resuming from {CKPT}/checkpoint-{MAX_STEPS - SAVE_STEPS}" in result.stdout
    assert metrics(project)["resumed_from_step"] == MAX_STEPS - SAVE_STEPS
    assert_same_result(project, reference)


def test_dvc_repro_resumes_after_sigkill(prepared, reference, tmp_path):
    """`dvc repro` killed mid-train, then rerun: DVC leaves models/checkpoints alone (no output), train resumes."""
    project = helpers.make_project(tmp_path, params=PARAMS)  # git + dvc
    # ingest, base and prepare as already run: recorded in dvc.lock instead of run again (saves time)
    for out in PREPARED_OUTS:
        (project / out).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (prepared / out).is_dir() else shutil.copy2)(prepared / out, project / out)
    helpers.stage("check_params", project)  # models/params_ok.json, a dep of every stage
    helpers.dvc("commit", "-f", "check_params", "ingest", "base", "prepare", cwd=project)
    assert "train" in helpers.dvc("status", cwd=project).stdout
    log = tmp_path / "repro.log"
    # its own process group: dvc runs `python -m stages.train` as a child, and both must die
    proc = start([str(helpers.BIN / "dvc"), "repro", "train"], project, log, start_new_session=True)
    try:
        wait_for(complete_checkpoint(project, SAVE_STEPS), proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (project / "metrics/train.json").exists()
    resume_at = latest(project)
    assert resume_at is not None

    result = helpers.dvc("repro", "train", cwd=project)
    assert f"resuming from {CKPT}/checkpoint-" in result.stdout, result.stdout + result.stderr
    got = metrics(project)
    assert got["resumed_from_step"] == checkpoints.step_of(resume_at) >= SAVE_STEPS
    assert got["global_step"] == MAX_STEPS
    # the same params and data as the reference: the same run, resumed, dvclive's history included
    # (metrics/train_live is a persist output: DVC keeps it, train rewinds it to the checkpoint)
    assert_same_result(project, reference)
    status = helpers.dvc("status", "train", cwd=project)
    assert "changed" not in status.stdout, status.stdout
