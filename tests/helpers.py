"""Helpers shared by the tests: paths, the subprocess environment, temp git+dvc copies of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import common
from benchmarks.common import ALPACA, PROJECT_FILES, QWEN2_TOKENIZER, REPO, SHARED, deep_update  # noqa: F401 (for the tests)

BIN = Path(sys.executable).parent

# A whole `dvc repro` in seconds on 2 cores, same code path as the default: one copy, which the
# benchmarks' --quick runs too.
FAST_PARAMS = common.QUICK_PARAMS


def env() -> dict:
    """Subprocess environment: the venv first on PATH (dvc.yaml runs `python`), no hub, no colour, and one
    OpenMP thread unless set (tiny models gain nothing from two; spinning threads on a shared 2-core machine
    make a run 2-5x slower)."""
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    return e


def run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd=cwd, check=check)


def stage(
    name: str, cwd: Path, check: bool = True, extra_env: dict | None = None, args: list[str] | tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`python -m stages.<name> [args]` in cwd, as dvc.yaml runs it (tests never import a stage module)."""
    return run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, check=check, extra_env=extra_env)


def write_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False))


def local_model_params(directory: str | os.PathLike, tokenizer_only: bool = False) -> dict:
    """params that make base read `directory` (model.local_dir): a whole model, or with `tokenizer_only` the
    tiny model's tokenizer files. The one place tests name a local model."""
    if tokenizer_only:
        return {"model": {"local_dir": str(directory), "tiny": {"tokenizer": "local"}}}
    return {"model": {"base": "local", "local_dir": str(directory)}}


def make_project(root: Path, params: dict | None = None, git: bool = True) -> Path:
    """A copy of the project (benchmarks.common.PROJECT_FILES: code, pipeline, embedded data) with fast params;
    a git+dvc repo if asked."""
    project = root / "project"
    project.mkdir()
    dvc_files = [name for name in PROJECT_FILES if name.split("/")[0] == ".dvc"]  # `dvc init` refuses a .dvc/
    for name in [n for n in PROJECT_FILES if n not in dvc_files] + ([] if git else dvc_files):
        copy(REPO / name, project / name)
    write_params(project, deep_update(FAST_PARAMS, params or {}))
    if git:
        run(["git", "init", "-q"], cwd=project)
        dvc("init", "-q", cwd=project)
        for name in dvc_files:  # the project's cache link type, the samples' table template
            copy(REPO / name, project / name)
        dvc("config", "core.autostage", "true", cwd=project)
        run(["git", "add", "-A"], cwd=project)
        run(["git", "commit", "-qm", "init"], cwd=project)
    return project


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    else:
        shutil.copy(src, dst)


requires_alpaca = pytest.mark.skipif(not ALPACA.is_file(), reason=f"{ALPACA} not present")
requires_qwen2_tokenizer = pytest.mark.skipif(
    common.qwen2_tokenizer_dir() is None, reason=f"{QWEN2_TOKENIZER} not present"
)
