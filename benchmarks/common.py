"""What every benchmark shares: medians after a warm-up, peak memory in a fresh process, machine facts, data."""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; a shared/ inside it where only the checkout travels (a GPU machine).
SHARED = next((d for d in (REPO.parent / "shared", REPO / "shared") if d.is_dir()), REPO.parent / "shared")
ALPACA = SHARED / "data" / "alpaca" / "alpaca_5000.json"  # real Alpaca rows, when present
QWEN2_TOKENIZER = SHARED / "tokenizers" / "qwen2"  # real Qwen2 vocab.json + merges.txt, when present
EMBEDDED_SAMPLE = REPO / "data" / "raw" / "finance_alpaca.parquet"


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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _call_measured(fn: Callable, args: tuple, kwargs: dict) -> dict:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = _peak_rss_mb()
    result = fn(*args, **kwargs)
    measured = {"result": result, "peak_rss_mb": round(_peak_rss_mb(), 1),
                "peak_rss_above_start_mb": round(_peak_rss_mb() - before, 1)}
    if torch.cuda.is_available():
        measured["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return measured


def isolated(fn: Callable, *args, **kwargs) -> dict:
    """fn(*args, **kwargs) in a fresh process, so its peak memory is its own: {"result", "peak_rss_mb", ...}.

    peak_rss_above_start_mb excludes what the child held before fn ran (interpreter, imports).
    fn must be importable at module level (it is pickled by name).
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_call_measured, fn, args, kwargs).result()


def machine() -> dict:
    """Where the figures were measured."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch_threads": torch.get_num_threads(), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    """The installed version of every pinned requirement."""
    from stages import environment

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
