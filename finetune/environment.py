"""Is this the project's Python? Checked against requirements.txt before a stage imports anything heavy."""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)")


def pins(text: str) -> dict[str, str]:
    """name -> pinned version, from requirements.txt lines like `torch==2.13.0  # comment`."""
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := PIN.match(line))}


def problems(required: dict[str, str]) -> tuple[list[str], list[str]]:
    """(distributions not installed, installed ones at another version than pinned)."""
    missing, other = [], []
    for name, pinned in required.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if found.split("+")[0] != pinned:  # 2.13.0+cu128 is the CUDA build of the 2.13.0 pin
            other.append(f"{name} {found} (pinned {pinned})")
    return missing, other


def check() -> None:
    """Exit with what to do when a pinned package is missing; warn when one differs from its pin.

    PIPELINE_SKIP_ENV_CHECK=1 skips it (an image that brings its own builds, e.g. a GPU box without dvc).
    """
    if not REQUIREMENTS.is_file() or os.environ.get("PIPELINE_SKIP_ENV_CHECK") == "1":
        return
    from finetune.errors import stage_name

    missing, other = problems(pins(REQUIREMENTS.read_text()))
    if missing:
        sys.exit(
            f"{stage_name()}: error: {sys.executable} is not the project's environment ({', '.join(missing)} "
            "not installed). Run `make run` once, then `source .venv/bin/activate` before `dvc repro`."
        )
    if other:
        print(f"{stage_name()}: warning: versions differ from requirements.txt: {'; '.join(other)}", file=sys.stderr)
