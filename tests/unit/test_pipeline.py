"""finetune.pipeline: a stage's deps and params keys as DVC reads dvc.yaml, and a params key's value."""

from __future__ import annotations

import pytest
import yaml

from finetune import config, pipeline
from finetune.errors import StageError


def test_the_fingerprint_reads_the_train_stage_of_dvc_yaml(tmp_path):
    """stage_inputs returns dvc.yaml's lists (params filled into `${}` deps), and names what it cannot use."""
    spec = {
        "stages": {
            "train": {
                "cmd": "python -m stages.train",
                "deps": ["stages/train.py", "${data.path}"],
                "params": ["lr", "train.lora"],
            }
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"path": "my.jsonl"}}))
    p = config.parse({"data": {"path": "my.jsonl"}}, ["lr", "data", "train"])
    deps, keys = pipeline.stage_inputs("train", tmp_path)
    assert deps == ["stages/train.py", "my.jsonl"] and keys == ["lr", "train.lora"]
    assert pipeline.param_value(p, "train.lora")["r"] == 8
    with pytest.raises(StageError, match="did not load"):
        pipeline.param_value(config.parse({}, ["lr"]), "train.lora.r")
    with pytest.raises(StageError, match="cannot read stage 'evaluate'"):
        pipeline.stage_inputs("evaluate", tmp_path)


def test_params_of_another_file_are_refused(tmp_path):
    spec = {"stages": {"train": {"cmd": "python -m stages.train", "params": ["lr", {"other.yaml": ["x"]}]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "params.yaml").write_text("lr: 1.0e-05\n")
    with pytest.raises(StageError, match="stage 'train' lists params of other.yaml; only params.yaml keys"):
        pipeline.stage_inputs("train", tmp_path)
