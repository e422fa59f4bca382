"""What every benchmark shares: medians after a warm-up, peak memory in a fresh process, machine facts, data,
and temp copies of the project whose stages run as subprocesses."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from finetune.measure import status_mb

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; a shared/ inside it where only the checkout travels (a GPU machine).
SHARED = next((d for d in (REPO.parent / "shared", REPO / "shared") if d.is_dir()), REPO.parent / "shared")
ALPACA = SHARED / "data" / "alpaca" / "alpaca_5000.json"  # real Alpaca rows, when present
QWEN2_TOKENIZER = SHARED / "tokenizers" / "qwen2"  # real Qwen2 vocab.json + merges.txt, when present
EMBEDDED_SAMPLE = REPO / "data" / "raw" / "finance_alpaca.parquet"
# What a copy of the project needs to run its stages and its pipeline.
PROJECT_FILES = (
    "stages",
    "finetune",
    "data/raw",
    "models/local_model",
    ".dvc/plots",
    ".dvc/config",
    "dvc.yaml",
    "params.yaml",
    "requirements.txt",
    ".gitignore",
    ".dvcignore",
)


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, Any]:
    """Median wall time of fn() over `repeats` calls after `warmup` untimed ones; and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _call_measured(fn: Callable, args: tuple, kwargs: dict) -> dict:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = fn(*args, **kwargs)
    measured = {"result": result, "peak_rss_mb": round(status_mb("VmHWM"), 1)}
    if torch.cuda.is_available():
        measured["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return measured


def isolated(fn: Callable, *args, **kwargs) -> dict:
    """fn(*args, **kwargs) in a fresh process, so its peak memory is its own: {"result", "peak_rss_mb", ...}.
    fn must be importable at module level (it is pickled by name).
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_call_measured, fn, args, kwargs).result()


def machine() -> dict:
    """Where the figures were measured."""
    import torch

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    """The installed version of every pinned requirement."""
    from finetune import environment

    out = {}
    for name in environment.pins(environment.REQUIREMENTS.read_text()):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def data_source() -> str:
    """Real Alpaca rows when ../shared has them, else the embedded sample."""
    return str(ALPACA if ALPACA.is_file() else EMBEDDED_SAMPLE)


def qwen2_tokenizer_dir() -> str | None:
    return str(QWEN2_TOKENIZER) if (QWEN2_TOKENIZER / "vocab.json").is_file() else None


# A whole `dvc repro` in seconds on 2 cores, through the same code as the default (the tests' FAST_PARAMS).
QUICK_PARAMS = {
    "prepare": {"n": 120, "test_fraction": 0.25, "max_length": 256},
    "model": {
        "tiny": {
            "vocab_size": 512,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 2,
            "num_heads": 2,
            "num_kv_heads": 1,
        }
    },
    "train": {"epochs": 1, "max_steps": 6, "save_steps": 3, "logging_steps": 1, "eval_steps": 3},
    "evaluate": {"batch_size": 8, "num_samples": 4, "max_new_tokens": 8},
    "merge": {"num_prompts": 2},
}


def deep_update(base: dict, changes: dict) -> dict:
    """A copy of base with changes merged in: nested dicts key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict):
            value = deep_update(out[key] if isinstance(out.get(key), dict) else {}, value)
        out[key] = value
    return out


def copy_project(root: Path, changes: dict | None = None) -> Path:
    """A copy of the project in root (created): PROJECT_FILES, with params.yaml deep-updated by changes."""
    import yaml

    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copy(src, dst)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_update(params, changes or {}), sort_keys=False))
    return root


# Starts the stage and reports its rusage. The stage's peak RSS must come from a process that is small
# itself: Linux carries a parent's peak RSS over into a forked child's ru_maxrss, even across exec.
_LAUNCHER = """import json, os, subprocess, sys, time
start = time.perf_counter()
_, status, use = os.wait4(subprocess.Popen(sys.argv[2:]).pid, 0)
json.dump([os.waitstatus_to_exitcode(status), time.perf_counter() - start, use.ru_utime + use.ru_stime,
           use.ru_maxrss / 1024], open(sys.argv[1], "w"))
"""


def run_stage(name: str, project: Path, env: dict | None = None, cpus: int | None = None) -> dict:
    """`python -m stages.<name>` in project: its wall and CPU seconds and its own peak RSS (MB).

    env: variables set (None: removed) over this process's, offline; cpus: pin it to that many CPUs.
    Output goes to project/<name>.log; a failure raises SystemExit with the log's end.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    log = project / f"{name}.log"
    pin = (lambda: os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])) if cpus else None
    with tempfile.NamedTemporaryFile("r", suffix=".json") as figures, log.open("w") as out:
        subprocess.run(
            [sys.executable, "-c", _LAUNCHER, figures.name, sys.executable, "-m", f"stages.{name}"],
            cwd=project,
            env={k: v for k, v in env.items() if v is not None},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,
            check=True,
        )
        code, seconds, cpu_seconds, peak_mb = json.load(figures)
    if code:
        raise SystemExit(
            f"stages.{name} failed ({code}) in {project}; the end of {log.name}:\n{log.read_text()[-4000:]}"
        )
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "log": str(log),
    }
