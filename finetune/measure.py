"""Peak memory, read one way everywhere: the train stage's metrics and the benchmarks."""

from __future__ import annotations


def status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB. Not ru_maxrss: a spawned child (fork, then exec)
    starts with its parent's ru_maxrss, while exec resets VmHWM."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by torch on CUDA; else this process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return status_mb("VmHWM")
