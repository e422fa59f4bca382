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
    from stages import base, params

    cfg = params.parse(FAST_PARAMS, ["model"]).model.tiny
    model, tokenizer = base.build_tiny(cfg, str(REPO / base.TINY_CORPUS))
    out = tmp_path_factory.mktemp("tiny_base")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from stages import modeling

    return modeling.load_tokenizer(tiny_base)
