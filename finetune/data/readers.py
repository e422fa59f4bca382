"""Reading the user's data: a parquet / csv / json (a list of records) / jsonl file, by extension, as object
columns; or a folder: shards of one split or several (data/train-00000-of-00002.parquet, test.jsonl), or a
`datasets` save_to_disk Dataset / DatasetDict."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

READERS = (".parquet", ".csv", ".json", ".jsonl")
# A shard's split: its file name without the shard number (train-00000-of-00002.parquet -> train), as the
# hub's parquet exports and `hf download --repo-type dataset` name them.
_SHARD = re.compile(r"^(?P<split>.+?)(?:[-_]\d+(?:-of-\d+)?)?$")


def read_data(path: str | os.PathLike, split: str = "") -> tuple[pd.DataFrame, str]:
    """A file (read_any) or a folder (read_folder): (the rows, what was read, for messages)."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path, split)
    return read_any(path), str(path)


def read_folder(folder: Path, split: str = "") -> tuple[pd.DataFrame, str]:
    """A save_to_disk dataset (datasets.load_from_disk), or the data files under `folder` grouped by split.

    `split` picks one where there are several; empty: the only one. Every shard of a split is read and the
    rows concatenated in file-name order (train-00000 before train-00001)."""
    import pandas as pd

    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _saved_dataset(folder, split)
    splits: dict[str, list[Path]] = {}
    for file in sorted(folder.rglob("*")):
        if (
            file.is_file()
            and file.suffix.lower() in READERS
            and not any(p.startswith(".") for p in file.relative_to(folder).parts)
        ):
            splits.setdefault(_SHARD.match(file.stem.lower())["split"], []).append(file)
    if not splits:
        raise DataError(f"{folder}: a folder with no data files ({', '.join(READERS)}) and no save_to_disk dataset")
    name = _pick(folder, split, sorted(splits))
    shards = splits[name]
    kinds = sorted({f.suffix.lower() for f in shards})
    if len(kinds) > 1:
        raise DataError(f"{folder}: split {name!r} mixes file types ({', '.join(kinds)}); keep one")
    frames = [read_any(f) for f in shards]
    columns = [list(f.columns) for f in frames]
    for file, names in zip(shards[1:], columns[1:]):
        if names != columns[0]:
            raise DataError(f"{file}: columns {names} differ from {shards[0]}'s {columns[0]}")
    where = f"{folder} (split {name!r}: {len(shards)} file(s))"
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], where


def _pick(folder: Path, split: str, found: list[str]) -> str:
    if split:
        if split not in found:
            raise DataError(f"{folder}: no split {split!r} (data.split); splits found: {', '.join(found)}")
        return split
    if len(found) > 1:
        raise DataError(f"{folder}: several splits ({', '.join(found)}); set data.split to one of them")
    return found[0]


def _saved_dataset(folder: Path, split: str) -> tuple[pd.DataFrame, str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as e:  # datasets raises several types for a damaged folder
        raise DataError(f"{folder}: not a readable save_to_disk dataset ({e})") from e
    where = str(folder)
    if isinstance(loaded, datasets.DatasetDict):
        name = _pick(folder, split, sorted(loaded))
        loaded, where = loaded[name], f"{folder} (split {name!r})"
    elif split:
        raise DataError(f'{folder}: a single saved dataset has no splits, but data.split is {split!r}; set it to ""')
    if not len(loaded):
        raise DataError(f"{where}: no rows")
    return _frame(loaded.to_list()), where


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
