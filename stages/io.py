"""File helpers: atomic writes and one reader for every supported input format."""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from stages.errors import StageError

if TYPE_CHECKING:  # imported where used: base_source, which runs on every repro, needs only the writers
    import pandas as pd

READERS = (".parquet", ".csv", ".json", ".jsonl")


class DataError(StageError, ValueError):
    """Bad input data: the message names the file, the row or key, and the reason."""


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
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
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


def read_any(path: str | os.PathLike) -> pd.DataFrame:
    """Read parquet / csv / json (list of records) / jsonl by extension, as object columns."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unknown extension {suffix!r}; expected one of {', '.join(READERS)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable parquet file ({e})") from e
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start  # in the file, BOM included
        raise DataError(f"{path}: not UTF-8 (invalid byte 0x{raw[offset]:02x} at byte offset {offset})") from e
    if not text.strip():
        raise DataError(f"{path}: file is empty (only whitespace)")
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".json":
        return _read_json_records(path, text)
    return _read_jsonl(path, text)


def _read_csv(path: Path, text: str) -> pd.DataFrame:
    import pandas as pd

    import io

    buffer = io.StringIO(text)
    # pandas renames a repeated header to "name.1": refuse instead, columns are never renamed.
    header = next(csv.reader(buffer), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header")
    buffer.seek(0)
    try:
        # keep_default_na=False: the text "NA" or "null" is data, not a missing value;
        # only a truly empty field counts as missing.
        frame = pd.read_csv(buffer, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: file has no header row") from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed CSV ({e})") from e
    return frame.astype(object).where(frame.notna(), None)


def _read_json_records(path: Path, text: str) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is {type(record).__name__}, expected an object")
    return _frame(data)


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    from tqdm.auto import tqdm

    records = []
    # Not splitlines(): it also splits at U+2028, U+0085 etc., which JSON allows unescaped in strings.
    lines = tqdm(text.split("\n"), desc=f"reading {path.name}", unit="lines", disable=None, leave=False)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from e
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {lineno} is {type(record).__name__}, expected an object")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return _frame(records)


def _frame(records: list[dict]) -> pd.DataFrame:
    import pandas as pd

    # dtype=object keeps each value as parsed: otherwise a column of ints with a null turns into
    # floats and the number 7 would become the text "7.0".
    return pd.DataFrame(records, dtype=object)
