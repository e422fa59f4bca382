"""File helpers: atomic writes, JSON, and content digests of files and directories."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # imported where used: stages that only write JSON load no pandas
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it replaces `path` in one rename.

    Works for files and directories. On any error (or kill) the temp path is removed
    or left under a dot-name that is never read, and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp dirs of an earlier write of this path that was killed: nothing reads them, but they
    # would pile up (a merged model each). DVC's repo lock means no other writer is live.
    # Eight ?: mkdtemp's random part, so "a" never matches the temp dir of "a.b".
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            # A directory can't be os.replace'd over a non-empty one: move the old aside first.
            old = path.parent / f".{path.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: dict | list) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def digest(path: str | os.PathLike, known: dict | None = None, seen: dict | None = None) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents; hidden ones, such as
    .git or download bookkeeping, skipped). A file's digest is reused from `known` while its size,
    mtime and inode are unchanged (as DVC does), and every file's is recorded in `seen`."""
    path = Path(path)
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    )
    h = hashlib.sha256()
    for f in files:
        stat = f.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        hit = (known or {}).get(str(f))
        file_hash = hit[1] if hit and hit[0] == stamp else _sha256(f)
        if seen is not None:
            seen[str(f)] = [stamp, file_hash]
        h.update(f"{f.name if f == path else f.relative_to(path).as_posix()}\0{file_hash}\n".encode())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
