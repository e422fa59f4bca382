"""`python -m stages.base` with model.base a local directory (recorded, not copied) or a hub id offline."""

from __future__ import annotations

import json

from finetune import modeling
from helpers import local_model_params, make_project, stage, write_params


def test_local_directory_base(tmp_path, tiny_base):
    """model.base local reads model.local_dir: base records it, later stages load from it."""
    project = make_project(tmp_path, git=False)
    write_params(project, local_model_params(tiny_base))
    stage("base", cwd=project)
    source = json.loads((project / "models/base/source.json").read_text())
    assert source.items() >= {"kind": "local", "path": str(tiny_base.resolve())}.items()  # + its sha256
    assert (project / "models/base/tokenizer.json").is_file()
    assert not (project / "models/base/model.safetensors").exists()  # no second copy of the weights
    model = modeling.load_model(project / "models/base", "8bit")
    assert model.config.vocab_size == modeling.load_tokenizer(project / "models/base").__len__()


def test_hub_id_offline_says_how_to_use_a_local_directory(tmp_path):
    project = make_project(tmp_path, git=False)
    write_params(project, {"model": {"base": "Qwen/Qwen2-0.5B-Instruct"}})
    result = stage("base", cwd=project, check=False, extra_env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode != 0
    assert "base: error: model.base: could not download 'Qwen/Qwen2-0.5B-Instruct'" in result.stderr
    assert "-S model.base=local -S model.local_dir=" in result.stderr
    assert not (project / "models/base").exists()


def test_a_directory_as_model_base_says_how_to_use_it(tmp_path, tiny_base):
    project = make_project(tmp_path, git=False)
    write_params(project, {"model": {"base": str(tiny_base)}})
    result = stage("base", cwd=project, check=False)
    assert result.returncode == 1
    assert f"-S model.base=local -S model.local_dir={tiny_base}" in result.stderr
    assert not (project / "models/base").exists()


def test_local_without_a_model_names_the_directory(tmp_path):
    project = make_project(tmp_path, git=False)
    write_params(project, {"model": {"base": "local"}})  # the placeholder: a README, no model
    result = stage("base", cwd=project, check=False)
    assert result.returncode == 1
    assert "model.local_dir: models/local_model has no config.json" in result.stderr
    assert not (project / "models/base").exists()
