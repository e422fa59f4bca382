"""Resumable training: find the last complete checkpoint, never resume a different run's."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path

from finetune import files

FINGERPRINT_FILE = "fingerprint.json"
TRAINER_STATE = "trainer_state.json"
RNG_STATE = "rng_state.pth"
# What Trainer writes for a single-process LoRA run; a checkpoint missing any of them is not resumable
# (without rng_state.pth dropout would draw differently from an uninterrupted run).
REQUIRED_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    TRAINER_STATE,
    "optimizer.pt",
    "scheduler.pt",
    RNG_STATE,
)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def fingerprint(settings: dict, inputs: list[str | os.PathLike]) -> str:
    """Identity of a training run: its settings and the exact bytes of its inputs."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in inputs:
        h.update(files.digest(path).encode())
    return h.hexdigest()


def step_of(checkpoint: str | os.PathLike) -> int:
    """The global step of a checkpoint-N directory."""
    m = CHECKPOINT.match(Path(checkpoint).name)
    if not m:
        raise ValueError(f"{checkpoint} is not a checkpoint-N directory")
    return int(m.group(1))


def _state(checkpoint: Path) -> dict | None:
    try:
        return json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return None


def required_files(processes: int = 1) -> tuple[str, ...]:
    """REQUIRED_FILES of a run of `processes` processes: with several, each writes its own rng_state_<rank>.pth."""
    if processes == 1:
        return REQUIRED_FILES
    ranks = tuple(f"rng_state_{rank}.pth" for rank in range(processes))
    return tuple(n for n in REQUIRED_FILES if n != RNG_STATE) + ranks


def missing_files(checkpoint: str | os.PathLike, processes: int = 1) -> list[str]:
    """Required files that are absent or empty, and trainer_state.json or an RNG state if it is not whole.

    The main process writes trainer_state.json after its other files, so a valid one for this step means
    those were written completely. The other processes write their RNG states in no order with it: those
    must be whole zip archives (torch.save's format; one cut short lacks the closing record).
    """
    checkpoint = Path(checkpoint)
    names = required_files(processes)
    missing = [n for n in names if not (checkpoint / n).is_file() or (checkpoint / n).stat().st_size == 0]
    if TRAINER_STATE not in missing:
        state = _state(checkpoint)
        if not isinstance(state, dict) or state.get("global_step") != step_of(checkpoint):
            missing.append(f"{TRAINER_STATE} (truncated or for another step)")
    missing += [
        f"{n} (truncated)"
        for n in names
        if n.startswith("rng_state") and n not in missing and not zipfile.is_zipfile(checkpoint / n)
    ]
    return missing


def is_complete(checkpoint: str | os.PathLike, processes: int = 1) -> bool:
    return Path(checkpoint).is_dir() and not missing_files(checkpoint, processes)


def is_final(checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint was saved at the last step of its run (training was done)."""
    state = _state(Path(checkpoint)) or {}
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def latest_complete(output_dir: str | os.PathLike, below: int | None = None, processes: int = 1) -> Path | None:
    """The highest-step checkpoint (under step `below`, if given) with every file of a `processes`-process run.

    Incomplete ones are skipped with a warning; names other than checkpoint-<digits> are ignored.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        (
            (int(m.group(1)), p)
            for p in output_dir.iterdir()
            if (m := CHECKPOINT.match(p.name)) and p.is_dir() and (below is None or int(m.group(1)) < below)
        ),
        reverse=True,
    )
    for _, checkpoint in found:
        missing = missing_files(checkpoint, processes)
        if not missing:
            return checkpoint
        warnings.warn(
            f"skipping incomplete checkpoint {checkpoint} (missing or empty: {', '.join(missing)})", stacklevel=2
        )
    return None


def rewind_live(live_dir: str | os.PathLike, step: int) -> None:
    """Make a killed run's dvclive directory resumable at `step`.

    Rows logged after `step` are dropped (the resumed run logs those steps again), and a summary
    or params file cut off mid-write by the kill is removed (dvclive would fail to read it; it is
    written again at the next log).
    """
    import yaml

    live_dir = Path(live_dir)
    for tsv in sorted(live_dir.rglob("*.tsv")):
        lines = tsv.read_text().splitlines(keepends=True)
        if not lines or lines[0].split("\t")[0].strip() != "step":
            continue
        kept = [lines[0]] + [ln for ln in lines[1:] if (s := _row_step(ln)) is not None and s <= step]
        if len(kept) != len(lines):
            with files.atomic_path(tsv) as tmp:
                tmp.write_text("".join(kept))
    for name, load in (("metrics.json", json.loads), ("params.yaml", yaml.safe_load)):
        path = live_dir / name
        if not path.is_file():
            continue
        try:
            whole = isinstance(load(path.read_text()), dict)
        except (ValueError, yaml.YAMLError):
            whole = False
        if not whole:
            path.unlink()


def _row_step(line: str) -> int | None:
    try:
        return int(line.split("\t")[0])
    except ValueError:
        return None


def resume_point(output_dir: str | os.PathLike, run_id: str, processes: int = 1) -> Path | None:
    """Where to resume this run (of `processes` processes) from; clears checkpoints of other settings or inputs."""
    output_dir = Path(output_dir)
    stamp = output_dir / FINGERPRINT_FILE
    try:
        previous = json.loads(stamp.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):  # none, or unreadable: nothing proves whose they are
        previous = None
    if previous != run_id:
        if output_dir.exists():
            print(f"train: clearing checkpoints in {output_dir}: they belong to a run with other params or inputs")
            shutil.rmtree(output_dir)
        files.write_json(stamp, {"fingerprint": run_id})
        return None
    checkpoint = latest_complete(output_dir, processes=processes)
    if checkpoint is not None and is_final(checkpoint):
        # Trainer resumed at its last step still takes one more optimizer step (a mid-epoch max_steps);
        # redo the last stretch from the checkpoint before instead, which ends exactly where it should.
        print(f"train: {checkpoint} ends a finished run; redoing the steps after the checkpoint before it")
        checkpoint = latest_complete(output_dir, below=step_of(checkpoint), processes=processes)
    return checkpoint
