"""Several training processes, trained: 2 CPU processes (gloo) against one, and a killed 2-process run resumed.

The comparison is made exact up to float rounding: LoRA dropout 0 (no per-process dropout draws) and
the same seeded data order, which accelerate deals out batch by batch, so an optimizer step of 2
processes x accumulation 2 covers the same 4 examples as 1 process x accumulation 4, and the loss is
normalised by the tokens of all processes (transformers' num_items_in_batch). What remains is the
order of float sums (gradients all-reduced as two partial sums instead of accumulated in one), about
1e-7 relative per step: measured at most 5e-7 in the loss and 1e-7 in the adapter weights over these
6 steps. TOL = 1e-4 leaves a wide margin for other CPUs and BLAS builds, yet a changed effective batch
(the negative control: the 2-process run without its accumulation adjusted, i.e. 8 examples per step)
moves the step losses by ~5e-2, far outside it. lr 1e-2 makes the updates large enough to count:
the adapter weights move by ~6e-2 and the validation loss drops by ~6e-2 in 6 steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import helpers
from finetune.training import checkpoints

MAX_STEPS, SAVE_STEPS = 6, 2
PARAMS = {
    "lr": 1e-2,
    "prepare": {"n": 60, "max_length": 128, "too_long": "truncate"},
    "train": {
        "max_steps": MAX_STEPS,
        "save_steps": SAVE_STEPS,
        "logging_steps": 1,
        "eval_steps": 0,
        "batch_size": 1,
        "grad_accum": 4,
        "lora": {"dropout": 0.0},
    },
}
TOL = 1e-4  # on every logged step loss and the validation loss (see the module docstring)
WEIGHT_TOL = 1e-5
CKPT = "models/checkpoints"
LOSS_TSV = "metrics/train_live/plots/metrics/loss.tsv"


# ---------------------------------------------------------------- 2 CPU processes against one


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """ingest, base and prepare run once (they are not under test here); each run trains in its own copy."""
    project = helpers.make_project(tmp_path_factory.mktemp("prepared"), params=PARAMS, git=False)
    for name in ("ingest", "base", "prepare"):
        helpers.stage(name, project)
    return project


def copy_of(prepared: Path, root: Path, name: str, **train_changes) -> Path:
    project = root / name
    shutil.copytree(prepared, project)
    if train_changes:
        helpers.write_params(project, {"train": train_changes})
    return project


def start_train(project: Path, threads: int | None = 1, **kwargs) -> subprocess.Popen:
    env = helpers.env()
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = (project / "train.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def finish(proc: subprocess.Popen, project: Path) -> str:
    proc.wait(timeout=900)
    output = (project / "train.log").read_text()
    assert proc.returncode == 0, output[-4000:]
    return output


def loss_curve(project: Path) -> dict[int, float]:
    rows = [line.split("\t") for line in (project / LOSS_TSV).read_text().splitlines()[1:]]
    steps = [int(step) for step, _ in rows]
    assert steps == list(range(1, MAX_STEPS + 1)), f"each step logged once, in order: {steps}"
    return {int(step): float(loss) for step, loss in rows}


def metrics(project: Path) -> dict:
    return json.loads((project / "metrics/train.json").read_text())


def adapter(project: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(project / "models/adapter/adapter_model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory) -> dict[str, Path]:
    """one: 1 process x accum 4; wider: 1 process x accum 8 (the negative control: what 2 processes
    give when accumulation is not divided); two: 2 processes, accum 2 each. The two 1-process runs
    share the 2 cores (one thread each), then the 2-process run gets them."""
    root = tmp_path_factory.mktemp("runs")
    projects = {
        "one": copy_of(prepared, root, "one"),
        "wider": copy_of(prepared, root, "wider", grad_accum=8),
        "two": copy_of(prepared, root, "two", num_processes=2),
    }
    pair = {name: start_train(projects[name]) for name in ("one", "wider")}
    for name, proc in pair.items():
        finish(proc, projects[name])
    # no OMP_NUM_THREADS: train shares the cores out itself
    finish(start_train(projects["two"], threads=None), projects["two"])
    return projects


def test_two_cpu_processes_match_one_with_the_same_effective_batch(runs):
    one, two, wider = runs["one"], runs["two"], runs["wider"]
    output = (two / "train.log").read_text()
    assert "train: starting 2 processes: accelerate launch --multi_gpu" in output
    cores = len(os.sched_getaffinity(0))
    assert f"2 processes (gloo, {max(1, cores // 2)} thread(s) each; batch 1 x accum 2 each = 4 per step)" in output

    # one adapter, one metrics file, one set of curves: written by the main process only
    assert output.count("-> models/adapter") == 1
    assert (two / "models/adapter/adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (two / "metrics").iterdir()) == [
        "data.json",
        "train.json",
        "train_live",
        "train_speed.json",
    ]
    assert not [p for p in (two / "models").iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert json.loads((two / "metrics/train_speed.json").read_text())["processes"] == 2
    for step in range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS):  # the last save_total_limit ones are kept
        if (two / CKPT / f"checkpoint-{step}").exists():
            assert checkpoints.is_complete(two / CKPT / f"checkpoint-{step}", processes=2)

    # the same run as one process with the same effective batch, up to float rounding
    assert max_difference(loss_curve(two), loss_curve(one)) < TOL
    m_one, m_two = metrics(one), metrics(two)
    assert m_two["global_step"] == m_one["global_step"] == MAX_STEPS
    assert m_two["eval_loss"] == pytest.approx(m_one["eval_loss"], abs=TOL)
    assert m_two["tokens_seen"] == m_one["tokens_seen"]  # counted over both processes
    assert max_weight_difference(adapter(two), adapter(one)) < WEIGHT_TOL

    # negative control: a different effective batch is far outside the tolerance
    assert max_difference(loss_curve(wider), loss_curve(one)) > 10 * TOL
    assert max_weight_difference(adapter(wider), adapter(one)) > 10 * WEIGHT_TOL


def test_killed_two_process_run_resumes_to_the_uninterrupted_result(runs, prepared, tmp_path):
    """SIGKILL the launcher (as `kill -9` of dvc's process group would): its processes, in sessions of
    their own, must die with it, and the rerun resumes from the last checkpoint to the same result."""
    import psutil

    project = copy_of(prepared, tmp_path, "killed", num_processes=2)
    proc = start_train(project, threads=None, start_new_session=True)
    try:
        first = project / CKPT / f"checkpoint-{SAVE_STEPS}"
        deadline = time.monotonic() + 600
        while not checkpoints.is_complete(first, processes=2):
            assert proc.poll() is None, (project / "train.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, "processes outlived their launcher"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (project / "metrics/train.json").exists()
    resume_at = checkpoints.latest_complete(project / CKPT, processes=2)
    assert resume_at is not None and SAVE_STEPS <= checkpoints.step_of(resume_at) < MAX_STEPS

    output = finish(start_train(project, threads=None), project)
    assert f"resuming from {CKPT}/checkpoint-{checkpoints.step_of(resume_at)}" in output
    reference = runs["two"]
    assert max_difference(loss_curve(project), loss_curve(reference)) < TOL  # each step once, same values
    assert metrics(project)["eval_loss"] == pytest.approx(metrics(reference)["eval_loss"], abs=TOL)
    assert metrics(project)["tokens_seen"] == metrics(reference)["tokens_seen"]
    assert max_weight_difference(adapter(project), adapter(reference)) < WEIGHT_TOL
