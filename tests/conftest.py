"""Shared fixtures: tiny models and project copies (helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FAST_PARAMS, REPO, make_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random Qwen2 + BPE tokenizer directory, built once per session (like models/base)."""
    from finetune import config, paths, tiny

    cfg = config.parse(FAST_PARAMS, ["model"]).model.tiny
    model, tokenizer = tiny.build(cfg, str(REPO / paths.EMBEDDED_SAMPLE))
    out = tmp_path_factory.mktemp("tiny_base")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sample():
    """The embedded parquet sample after ingest and cleaning."""
    from finetune.data import cleaning, readers, schema

    path = REPO / "data/raw/finance_alpaca.parquet"
    kept, _ = cleaning.clean(schema.canonicalize(readers.read_any(path), str(path), "drop"))
    return kept


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from finetune import modeling

    return modeling.load_tokenizer(tiny_base)


@pytest.fixture(scope="session")
def merged_dir(tiny_base, tmp_path_factory):
    """A tiny 'models/merged' for the chat: tiny_base with larger random weights, so answers are varied text."""
    import torch

    from finetune import modeling

    model = modeling.load_model(tiny_base, "none")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=gen) * (0.25 if "self_attn" in name else 0.1))
    out = tmp_path_factory.mktemp("merged")
    model.save_pretrained(out)
    modeling.load_tokenizer(tiny_base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def params_file(tmp_path_factory):
    """FAST_PARAMS as a params.yaml (evaluate: greedy, max_new_tokens 8), for PARAMS_FILE."""
    import yaml

    path = tmp_path_factory.mktemp("chat_params") / "params.yaml"
    path.write_text(yaml.safe_dump(FAST_PARAMS))
    return path


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """family name -> a small random local model directory of that family (tests/families.py), built once."""
    import families

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = families.build(families.FAMILIES[name], tmp_path_factory.mktemp(name))
        return built[name]

    return get
