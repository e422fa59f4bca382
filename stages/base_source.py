"""base_source: content fingerprints of the local directories the base stage reads -> models/base_source.json.

DVC cannot see a directory named by a param (a local `model.base`, a `model.tiny.tokenizer` dir).
This stage runs on every `dvc repro` (always_changed; standard library only, well under a second)
and writes the same bytes while those files are unchanged; base depends on its output, so base and
everything after it rerun exactly when the files change. Per-file digests are cached by size, mtime
and inode (as DVC does), so a large model is not read again while it is untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from stages import errors, params

OUT = "models/base_source.json"
DIGEST_CACHE = "models/.base_source_cache.json"  # gitignored; only spares rereading unchanged files


def local_dir(value: str) -> Path | None:
    """The directory a param names, or None for 'tiny', 'bpe' or a hub id (as modeling.resolve_pretrained decides)."""
    path = Path(value).expanduser()
    return path.resolve() if path.is_dir() else None


def files(directory: Path) -> list[Path]:
    """Every file under `directory`, except hidden ones (.git, .cache/huggingface download bookkeeping)."""
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def file_digest(path: Path, known: dict, seen: dict) -> str:
    """sha256 of a file; reused from `known` while its size, mtime and inode are unchanged, recorded in `seen`."""
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    hit = known.get(str(path))
    if hit and hit[0] == stamp:
        digest = hit[1]
    else:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    seen[str(path)] = [stamp, digest]
    return digest


def fingerprint(directory: Path, known: dict | None = None, seen: dict | None = None) -> dict:
    """sha256 over the relative names and the contents of a directory's files."""
    known, seen = known or {}, {} if seen is None else seen
    h = hashlib.sha256()
    found = files(directory)
    for f in found:
        h.update(f"{f.relative_to(directory).as_posix()}\0{file_digest(f, known, seen)}\n".encode())
    return {"path": str(directory), "sha256": h.hexdigest(), "files": len(found)}


def sources(cfg: params.ModelParams, known: dict | None = None, seen: dict | None = None) -> dict:
    """What base builds from: each watched param's value, or the fingerprint of the directory it names."""
    watched = {"model.base": cfg.base}
    if cfg.base == "tiny":  # the tiny model's tokenizer: 'bpe' (trained here) or a directory
        watched["model.tiny.tokenizer"] = cfg.tiny.tokenizer
    found = {}
    for key, value in watched.items():
        directory = None if value in ("tiny", "bpe") else local_dir(value)
        found[key] = fingerprint(directory, known, seen) if directory else value
    return found


def read_cache() -> dict:
    try:
        cache = json.loads(Path(DIGEST_CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_atomically(path: str, text: str) -> None:
    """io.write_json's temp + rename, without importing pandas (this stage runs on every repro)."""
    tmp = Path(f"{path}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    p = params.load("model")
    seen: dict = {}
    found = sources(p.model, read_cache(), seen)
    write_atomically(OUT, json.dumps(found, indent=2, sort_keys=True) + "\n")
    write_atomically(DIGEST_CACHE, json.dumps(seen) + "\n")
    shown = {key: value if isinstance(value, str) else value["sha256"][:12] for key, value in found.items()}
    print(f"base_source: {shown} -> {OUT}")


if __name__ == "__main__":
    errors.run(main)
