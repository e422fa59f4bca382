"""The pipeline as DVC reads dvc.yaml: what a stage lists as its inputs, for code that must cover the same list."""

from __future__ import annotations

import os

from pydantic import BaseModel

from finetune import paths
from finetune.errors import StageError

PIPELINE = paths.PIPELINE


def param_value(p, key: str):
    """The value of a dotted params key (`train.lora.r`, `lr`) in a loaded Params, sections as plain dicts."""
    value = p
    for part in key.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise StageError(f"{PIPELINE} lists params key {key!r}, which this stage did not load from params.yaml")
    return value.model_dump() if isinstance(value, BaseModel) else value


def stage_inputs(stage: str, root: str | os.PathLike = ".") -> tuple[list[str], list[str]]:
    """A stage's deps and params.yaml keys, as DVC reads dvc.yaml (its `${...}` filled in by DVC itself).

    The one list of what a stage reads: DVC reruns the stage when one changes, and the stage's own
    fingerprint of resumable state covers the same list, so the two cannot drift.
    """
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root), uninitialized=True) as repo:
            spec = next(s for s in repo.index.stages if s.name == stage)
    except (DvcException, StopIteration) as e:
        raise StageError(
            f"{PIPELINE}: cannot read stage {stage!r} ({type(e).__name__}: {e}); run from the project root"
        ) from e
    deps, keys = [], []
    for dep in spec.deps:
        if not isinstance(dep, ParamsDependency):
            deps.append(dep.def_path)
        elif dep.def_path != paths.PARAMS:  # another params file: not one this code can look up
            raise StageError(
                f"{PIPELINE}: stage {stage!r} lists params of {dep.def_path}; only {paths.PARAMS} keys are supported"
            )
        else:
            keys += dep.params
    return deps, keys
