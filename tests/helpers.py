"""Helpers shared by the tests: paths, the subprocess environment, temp git+dvc copies of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ALPACA = SHARED / "data" / "alpaca" / "alpaca_5000.json"
QWEN2_TOKENIZER = SHARED / "tokenizers" / "qwen2"
BIN = Path(sys.executable).parent

# Small enough that a whole `dvc repro` takes seconds on 2 cores, same code path as the default.
FAST_PARAMS = {
    "prepare": {"n": 120, "test_fraction": 0.25, "max_length": 256},
    "model": {"tiny": {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                       "num_heads": 2, "num_kv_heads": 1}},
    "train": {"epochs": 1, "max_steps": 6, "save_steps": 3, "logging_steps": 1, "eval_steps": 3},
    "evaluate": {"batch_size": 8, "num_samples": 4, "max_new_tokens": 8},
    "merge": {"num_prompts": 2},
}


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def env() -> dict:
    """Subprocess environment: the venv first on PATH (dvc.yaml runs `python`), no hub, no colour."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
             GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600,
        extra_env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd=cwd, check=check)


def stage(name: str, cwd: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, check=check, extra_env=extra_env)


def write_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False))


def make_project(root: Path, params: dict | None = None, git: bool = True) -> Path:
    """A copy of the project (code, pipeline, embedded data) with fast params; a git+dvc repo if asked."""
    project = root / "project"
    project.mkdir()
    for name in ("stages", "data/raw"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "requirements.txt"):
        shutil.copy(REPO / name, project / name)
    write_params(project, deep_update(yaml.safe_load(yaml.safe_dump(FAST_PARAMS)), params or {}))
    if git:
        run(["git", "init", "-q"], cwd=project)
        dvc("init", "-q", cwd=project)
        shutil.copy(REPO / ".dvc/config", project / ".dvc/config")  # the project's cache link type
        dvc("config", "core.autostage", "true", cwd=project)
    shutil.copytree(REPO / ".dvc/plots", project / ".dvc/plots")  # the table template for samples
    if git:
        run(["git", "add", "-A"], cwd=project)
        run(["git", "commit", "-qm", "init"], cwd=project)
    return project


requires_alpaca = pytest.mark.skipif(not ALPACA.is_file(), reason=f"{ALPACA} not present")
requires_qwen2_tokenizer = pytest.mark.skipif(
    not (QWEN2_TOKENIZER / "vocab.json").is_file(), reason=f"{QWEN2_TOKENIZER} not present"
)
