"""GGUF files of the three families' small random models (tests/families.py through the root conftest's
family_dir), written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported(family_dir, tmp_path_factory):
    """(family, type) -> a GGUF written by the export's converter (once per session)."""
    from finetune.export import gguf

    files: dict[tuple[str, str], Path] = {}

    def get(family: str, kind: str = "q8_0") -> Path:
        if (family, kind) not in files:
            path = tmp_path_factory.mktemp("gguf") / f"{family}-{kind}.gguf"
            gguf.write(kind, family_dir(family), path, "test-model")
            files[family, kind] = path
        return files[family, kind]

    return get
