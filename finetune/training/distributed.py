"""Several training processes: accelerate launch (torchrun underneath), each process on its share of a step.

With train.num_processes > 1 the train stage starts itself again under `accelerate launch`: one process
per GPU with NCCL, or CPU processes with gloo. Every process draws from the same seeded order and takes
an equal share of each optimizer step's examples; only the main process clears checkpoints, logs and
writes outputs.
"""

from __future__ import annotations

import os
import sys

import torch

from finetune import config


def per_process_batch(t: config.TrainParams) -> tuple[int, int]:
    """(per-device batch, accumulation steps) so that an optimizer step still sees batch_size * grad_accum examples.

    Each of train.num_processes processes takes an equal share (params checks it divides). The accumulation
    is divided when it can be (batch 2 x accum 4 on 2 processes: 2 x 2 each); otherwise the per-device
    batch shrinks, never grows (memory), to the largest size that divides the share (2 x 1 on 2: 1 x 1).
    Every process draws from the same seeded order, so a step covers the same examples at any count, except
    an epoch's last step, which accelerate evens out across processes by repeating its first examples.
    """
    share = t.batch_size * t.grad_accum // t.num_processes
    batch = max(b for b in range(1, t.batch_size + 1) if share % b == 0)
    return batch, share // batch


def launched() -> bool:
    """Whether a launcher (accelerate launch --multi_gpu, torchrun) started this process as one of its set."""
    return "WORLD_SIZE" in os.environ


def processes_started() -> int:
    """How many processes a launcher started (torchrun's WORLD_SIZE), 1 under plain `python -m stages.train`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_command(processes: int) -> list[str]:
    """`accelerate launch` of this stage on this machine. --multi_gpu selects torchrun, which also runs CPU
    processes (the stage sets use_cpu, so accelerate picks gloo); port 0: a free one, so runs never collide.
    Precision is the stage's own (train.precision), so accelerate's is left at no."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        str(processes),
        "--main_process_port",
        "0",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "stages.train",
    ]


def cpu_threads(processes: int, cores: int, requested: int | None) -> int:
    """Threads per CPU process: the cores shared out (2 processes on 2 cores: 1 each), never above OMP_NUM_THREADS."""
    share = max(1, cores // processes)
    return min(share, requested) if requested else share


LAUNCHER_PID = "TRAIN_LAUNCHER_PID"


def relaunch(processes: int) -> None:
    """Replace this process (DVC's child: Ctrl-C and SIGTERM reach it) with accelerate's launcher, which
    starts `processes` copies of the stage and stops them all when it is stopped."""
    env = {**os.environ, LAUNCHER_PID: str(os.getpid())}  # the launcher keeps this pid
    if not torch.cuda.is_available():
        requested = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS", "").isdigit() else None
        env["OMP_NUM_THREADS"] = str(cpu_threads(processes, len(os.sched_getaffinity(0)), requested))
    command = launch_command(processes)
    print(f"train: starting {processes} processes: accelerate launch {' '.join(command[3:])}", flush=True)
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


def die_with_launcher() -> None:
    """torchrun starts each process in a session of its own, so a launcher killed outright (SIGKILL, where
    it cannot stop them first) would leave them training and writing beside the rerun: on Linux, ask the
    kernel to kill this process with its parent, and stop now if that parent is already gone."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.environ.get(LAUNCHER_PID) not in (None, str(os.getppid())):
        sys.exit("train: error: the launcher died while this process started")


def check_process_count(t: config.TrainParams) -> None:
    """A launch by hand must match params: dvc.lock records train.num_processes, and the batch split follows it."""
    started = processes_started()
    if started != t.num_processes:
        raise config.error(
            f"train.num_processes is {t.num_processes}, but the launcher started {started} processes: set "
            f"train.num_processes: {started}, or run `python -m stages.train` (or dvc repro), which starts "
            "train.num_processes processes itself"
        )


def processes_note(t: config.TrainParams) -> str:
    """For the start line: the process count, backend and CPU threads (empty for one process)."""
    if t.num_processes == 1:
        return ""
    batch, accum = per_process_batch(t)
    threads = "" if torch.cuda.is_available() else f", {torch.get_num_threads()} thread(s) each"
    return (
        f"{t.num_processes} processes ({torch.distributed.get_backend()}{threads}; batch {batch} x accum {accum} "
        f"each = {t.batch_size * t.grad_accum} per step), "
    )


def is_main(args) -> bool:
    """The one process (of all machines) that clears checkpoints, logs and writes outputs."""
    return args.process_index == 0


def from_main(args, fn):
    """fn(), run on the main process only, its result (or its exception) handed to every process:
    the others would otherwise wait in the broadcast until the backend's timeout."""
    from accelerate.utils import broadcast_object_list

    outcome = [None, None]
    if is_main(args):
        try:
            outcome[0] = fn()
        except Exception as e:  # raised again below, on every process
            outcome[1] = e
    if args.world_size > 1:
        outcome = broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]
