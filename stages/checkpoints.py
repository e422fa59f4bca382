"""Resumable training: find the last complete checkpoint, never resume a different run's."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

FINGERPRINT_FILE = "fingerprint.json"
# What Trainer writes for a LoRA run; a checkpoint missing any of them is not resumable.
REQUIRED_FILES = ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json",
                  "optimizer.pt", "scheduler.pt")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file under a directory (names and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def fingerprint(settings: dict, inputs: list[str | os.PathLike]) -> str:
    """Identity of a training run: its settings and the exact bytes of its inputs."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in inputs:
        h.update(file_digest(path).encode())
    return h.hexdigest()


def is_complete(checkpoint: Path) -> bool:
    return all((checkpoint / name).is_file() and (checkpoint / name).stat().st_size > 0 for name in REQUIRED_FILES)


def latest_complete(output_dir: str | os.PathLike) -> Path | None:
    """The highest-step checkpoint with every file present; incomplete ones are skipped with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir()),
        reverse=True,
    )
    for _, checkpoint in found:
        if is_complete(checkpoint):
            return checkpoint
        missing = [n for n in REQUIRED_FILES if not (checkpoint / n).is_file()]
        warnings.warn(f"skipping incomplete checkpoint {checkpoint} (missing or empty: {', '.join(missing) or 'a file'})")
    return None


def resume_point(output_dir: str | os.PathLike, run_id: str) -> Path | None:
    """Where to resume this run from; clears checkpoints left by a run with other settings or inputs."""
    output_dir = Path(output_dir)
    stamp = output_dir / FINGERPRINT_FILE
    previous = json.loads(stamp.read_text())["fingerprint"] if stamp.is_file() else None
    if previous != run_id:
        if output_dir.exists():
            print(f"train: clearing checkpoints in {output_dir}: they belong to a run with other params or inputs")
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": run_id}) + "\n")
        os.replace(tmp, stamp)
        return None
    return latest_complete(output_dir)
