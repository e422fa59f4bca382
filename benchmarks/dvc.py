"""DVC's own overhead: a no-op `dvc repro` and `dvc status` on a completed pipeline (target: under 3 s),
and the disk the outputs and the cache take together (hard links: a model is stored once).

Measured in the project when its pipeline is complete (after `make run`); otherwise in a temp copy that
runs `dvc repro` first (default params; --quick: common.QUICK_PARAMS, a tiny model and few rows).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

TARGET_SECONDS = 3.0
UP_TO_DATE = {}  # `dvc status --json` of an up-to-date pipeline


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    return subprocess.run(
        [str(bin_dir / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True, check=True
    )


def is_complete(project: Path) -> bool:
    try:
        return json.loads(dvc(project, "status", "--json").stdout) == UP_TO_DATE
    except (subprocess.CalledProcessError, ValueError):
        return False


def init_repo(project: Path) -> None:
    """Make a project copy a git + DVC repository, everything committed, keeping its .dvc/ files
    (`dvc init` refuses an existing .dvc/)."""
    kept = project.with_name(project.name + ".dvc-files")
    (project / ".dvc").rename(kept)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, "init", "-q")
    shutil.copytree(kept, project / ".dvc", dirs_exist_ok=True)
    shutil.rmtree(kept)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "copy"],
        cwd=project,
        check=True,
    )


def completed_copy(root: Path, quick: bool) -> tuple[Path, float]:
    """A temp git+dvc copy of the project (QUICK_PARAMS when quick, else the project's), after `dvc repro`."""
    project = common.copy_project(root / "project", common.QUICK_PARAMS if quick else {})
    init_repo(project)
    start = time.perf_counter()
    dvc(project, "repro")
    return project, time.perf_counter() - start


def cached_outputs(project: Path) -> list[str]:
    """The outputs dvc.yaml keeps in the DVC cache (not the `cache: false` ones, which live in git)."""
    import yaml

    found = []
    for spec in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values():
        for entry in (e for kind in ("outs", "metrics", "plots") for e in spec.get(kind) or []):
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            if (options or {}).get("cache", True) and (project / path).exists():
                found.append(path)
    return sorted(found)


def du_kb(project: Path, *paths: str) -> int:
    """Disk used by `paths` together: du counts a hard-linked file once per invocation."""
    out = subprocess.run(["du", "-skc", *paths], cwd=project, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def link_type(project: Path, outputs: list[str]) -> str:
    files = [
        f
        for out in outputs
        for f in ([project / out] if (project / out).is_file() else (project / out).rglob("*"))
        if f.is_file() or f.is_symlink()
    ]
    if not files:
        return "none"
    if all(f.is_symlink() for f in files):
        return "symlink"
    if all(f.stat().st_nlink > 1 for f in files):
        return "hardlink"
    return "copy (or reflink)"


def run(quick: bool) -> dict:
    repeats = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as tmp:
        if not quick and is_complete(common.REPO):
            project, setup = common.REPO, {"where": "the project (pipeline complete)", "repro_seconds": None}
        else:
            project, seconds = completed_copy(Path(tmp), quick)
            setup = {
                "where": f"temp copy, {'tiny test' if quick else 'default'} params",
                "repro_seconds": round(seconds, 1),
            }
        repro, _ = common.median_seconds(lambda: dvc(project, "repro"), repeats=repeats, warmup=1)
        status, shown = common.median_seconds(lambda: dvc(project, "status", "--json"), repeats=repeats, warmup=1)
        assert json.loads(shown.stdout) == UP_TO_DATE, shown.stdout  # a no-op: nothing else changed
        outputs = cached_outputs(project)
        workspace, cache = du_kb(project, *outputs), du_kb(project, ".dvc/cache")
        together = du_kb(project, *outputs, ".dvc/cache")
        links = link_type(project, outputs)
        configured = dvc(project, "config", "cache.type").stdout.strip()
    result = {
        **setup,
        "noop_repro_seconds": round(repro, 2),
        "status_seconds": round(status, 2),
        "target_seconds": TARGET_SECONDS,
        "meets_target": repro < TARGET_SECONDS and status < TARGET_SECONDS,
        "cache_type_config": configured,
        "link_type_found": links,
        "workspace_outputs_mb": round(workspace / 1024, 1),
        "cache_mb": round(cache / 1024, 1),
        "workspace_plus_cache_mb": round(together / 1024, 1),
        "stored_twice_mb": round((together - cache) / 1024, 1),  # output bytes outside the cache: copies
    }
    result["table"] = [
        ["measured in", result["where"]],
        ["no-op dvc repro (median s)", result["noop_repro_seconds"]],
        ["dvc status (median s)", result["status_seconds"]],
        [f"both under {TARGET_SECONDS:g} s", result["meets_target"]],
        ["cache link type (config / found)", f"{configured or '(default)'} / {links}"],
        ["outputs in workspace (MB)", result["workspace_outputs_mb"]],
        [".dvc/cache (MB)", result["cache_mb"]],
        ["workspace + cache on disk (MB)", result["workspace_plus_cache_mb"]],
        ["of which outputs stored twice (MB)", result["stored_twice_mb"]],
        ["with copies it would be (MB)", round((workspace + cache) / 1024, 1)],
    ]
    return result
