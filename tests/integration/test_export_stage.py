"""`python -m stages.export` as dvc.yaml runs it: a file that fails its check fails the stage, after another
type's file was written and checked, and leaves models/gguf and metrics/export.json as they were."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
from gguf_faults import sitecustomize
from helpers import REPO, make_project, stage

from finetune import paths

PREVIOUS = {"models/gguf/model-q8_0.gguf": b"the previous export", paths.EXPORT_METRICS: b'{"previous": true}\n'}
FILES = ["models/gguf/Modelfile", "models/gguf/model-f16.gguf", "models/gguf/model-q8_0.gguf"]


def outputs(project) -> dict[str, bytes]:
    found = [p for p in (project / paths.GGUF_DIR).rglob("*") if p.is_file()] + [project / paths.EXPORT_METRICS]
    return {str(p.relative_to(project)): p.read_bytes() for p in found}


def test_a_failed_check_writes_nothing_and_the_unbroken_stage_replaces_the_export(tmp_path, family_dir):
    project = make_project(tmp_path, {"export": {"gguf": ["f16", "q8_0"]}}, git=False)
    shutil.copytree(family_dir("qwen2"), project / paths.MERGED_DIR)
    (project / paths.TEST_DATA).parent.mkdir(parents=True)
    pd.read_parquet(REPO / "data/raw/finance_alpaca.parquet").head(6).to_parquet(project / paths.TEST_DATA)
    for name, content in PREVIOUS.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(content)
    (tmp_path / "sitecustomize.py").write_text(sitecustomize("q8_0"))

    failed = stage("export", project, check=False, extra_env={"PYTHONPATH": str(tmp_path), "BREAK_GGUF": "1"})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert re.search(r"^export: error: .*layers\.0\.self_attn\.o_proj\.weight \(Q8_0\) differs", failed.stderr, re.M)
    assert "Traceback" not in failed.stderr
    assert re.search(r"^export: f16 .* every tensor within its bound", failed.stdout, re.M)  # written, then lost
    assert outputs(project) == PREVIOUS
    assert not [p.name for p in (project / "models").iterdir() if p.name.startswith(".")]  # no temp dir left

    stage("export", project)  # the control: unbroken, the same project replaces the previous export
    after = outputs(project)
    assert sorted(after) == sorted([*FILES, paths.EXPORT_METRICS])
    assert after["models/gguf/model-q8_0.gguf"] != PREVIOUS["models/gguf/model-q8_0.gguf"]
    metrics = json.loads(after[paths.EXPORT_METRICS])
    assert {"gguf.f16.eval_loss", "gguf.q8_0.eval_loss", "merged.eval_loss"} <= set(metrics)
