"""Content fingerprints of the local directories the base stage reads (a local model.base, a tokenizer dir).

DVC cannot see a directory named by a param (a local `model.base`, a `model.tiny.tokenizer` dir).
This stage runs on every `dvc repro` (always_changed; no pandas or torch, well under a second)
and writes the same bytes while those files are unchanged; base depends on its output, so base and
everything after it rerun exactly when the files change. Per-file digests are cached by size, mtime
and inode (as DVC does), so a large model is not read again while it is untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune import config, files, paths


def local_dir(value: str) -> Path | None:
    """The directory a param names, or None for 'tiny', 'bpe' or a hub id (as modeling.resolve_pretrained decides)."""
    if value in ("tiny", "bpe"):
        return None
    path = Path(value).expanduser()
    return path.resolve() if path.is_dir() else None


def fingerprint(directory: Path, known: dict | None = None, seen: dict | None = None) -> dict:
    return {"path": str(directory), "sha256": files.digest(directory, known, seen)}


def sources(cfg: config.ModelParams, known: dict | None = None, seen: dict | None = None) -> dict:
    """What base builds from: each watched param's value, or the fingerprint of the directory it names."""
    watched = {"model.base": cfg.base}
    if cfg.base == "tiny":  # the tiny model's tokenizer: 'bpe' (trained here) or a directory
        watched["model.tiny.tokenizer"] = cfg.tiny.tokenizer
    found = {key: fingerprint(directory, known, seen) if (directory := local_dir(value)) else value
             for key, value in watched.items()}
    template = Path(cfg.chat_template).expanduser()
    if cfg.chat_template not in ("auto", "chatml") and template.is_file():  # a .jinja file: its content
        found["model.chat_template"] = fingerprint(template.resolve(), known, seen)
    return found


def read_cache() -> dict:
    try:
        cache = json.loads(Path(paths.BASE_SOURCE_CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}
