"""A run's results as the report reads them: curves, metrics, merge check and sample answers, from the
workspace or from a git revision / DVC experiment; and the tables made of them."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Callable

from finetune import paths
from finetune.errors import DataError, StageError
from finetune.evaluation import comparison, intervals
from finetune.evaluation.comparison import under_prefix

Points = list[tuple[float, float]]
Reader = Callable[[str], "str | None"]  # path -> text, None when the file is absent


@dataclass
class RunResults:
    label: str
    curves: dict[str, dict[str, Points]]  # title -> series ("train", "eval") -> points
    metrics: dict  # eval.json: base.* / tuned.* / delta.*
    merge: dict  # merge.json: merged.* and the parity check
    samples: list[dict]


# ---------------------------------------------------------------- reading


def parse_curve(text: str, column: str, source: str) -> Points:
    """dvclive TSV -> (step, value) sorted by step; a step logged twice (final eval) keeps its last value."""
    by_step: dict[float, float] = {}
    reader = csv.DictReader(StringIO(text), delimiter="\t")
    if reader.fieldnames is None or "step" not in reader.fieldnames or column not in reader.fieldnames:
        raise DataError(f"{source}: expected columns step and {column}, found {reader.fieldnames}")
    for line, row in enumerate(reader, start=2):
        try:
            by_step[float(row["step"])] = float(row[column])
        except (TypeError, ValueError):
            raise DataError(f"{source}: line {line}: not a number: {row}") from None
    return sorted(by_step.items())


def curve_files(pipeline: str = paths.PIPELINE) -> dict[str, dict[str, tuple[str, str]]]:
    """dvc.yaml's top-level plots, the one list of curves: title -> series ("train", "eval") -> (TSV, column).

    DVC refuses dvc.yaml as a stage dependency, so editing the plots does not rerun the report by itself."""
    import yaml

    curves = {}
    for plot in yaml.safe_load(Path(pipeline).read_text(encoding="utf-8")).get("plots", []):
        for title, spec in plot.items():
            curves[title] = {
                ("eval" if "/eval/" in path else "train"): (path, column) for path, column in spec["y"].items()
            }
    return curves


def read_curves(read: Reader, curves: dict[str, dict[str, tuple[str, str]]]) -> dict[str, dict[str, Points]]:
    found = {}
    for title, series_files in curves.items():
        found[title] = {}
        for series, (path, column) in series_files.items():
            text = read(path)
            if text is not None:
                found[title][series] = parse_curve(text, column, path)
    return found


def read_metrics(read: Reader, path: str) -> dict:
    text = read(path)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return comparison.flatten(data) if isinstance(data, dict) else {}


def read_samples(read: Reader) -> list[dict]:
    text = read(paths.SAMPLES)
    rows = []
    for line, raw in enumerate((text or "").split("\n"), start=1):
        if raw.strip():
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                raise DataError(f"{paths.SAMPLES}: line {line} is not valid JSON") from None
    return rows


def load_run(read: Reader, label: str, curves: dict[str, dict[str, tuple[str, str]]]) -> RunResults:
    return RunResults(
        label,
        read_curves(read, curves),
        read_metrics(read, paths.EVAL_METRICS),
        read_metrics(read, paths.MERGE_METRICS),
        read_samples(read),
    )


def read_rows(read: Reader) -> dict | None:
    """The tuned model's per-row results (evaluate's data/eval/rows.json), None when the run has none."""
    text = read(paths.EVAL_ROWS)
    if text is None:
        return None
    try:
        return json.loads(text)["tuned"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f'{paths.EVAL_ROWS}: not evaluate\'s per-row results (no "tuned" part)') from None


def workspace_reader(path: str) -> str | None:
    file = Path(path)
    return file.read_text(encoding="utf-8") if file.is_file() else None


def revision_reader(rev: str) -> Reader:
    """Files as of a git revision or DVC experiment name; DVC outputs come from the cache."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    try:
        fs = DVCFileSystem(".", rev=rev)
        fs.ls(".")  # resolves the revision now, so a typo fails here, by name
    except DvcException as e:
        raise StageError(f"--compare {rev}: {e}") from None

    def read(path: str) -> str | None:
        if not fs.isfile(path):
            return None
        try:
            return fs.read_text(path, encoding="utf-8")
        except (DvcException, OSError) as e:  # tracked, but its data is not in the cache
            raise StageError(f"--compare {rev}: cannot read {path} ({e}); try `dvc pull`") from None

    return read


# ---------------------------------------------------------------- tables


def table_rows(columns: list[tuple[str, dict]]) -> list[list]:
    """One row per metric name found in any column: [name, value of each column or None]."""
    names = sorted(set().union(*(values for _, values in columns)))
    return [[name, *(values.get(name) for _, values in columns)] for name in names]


def difference(a, b):
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return b - a if numbers else None


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def run_columns(run: RunResults) -> list[tuple[str, dict]]:
    return [
        ("base", under_prefix(run.metrics, "base")),
        ("tuned", under_prefix(run.metrics, "tuned")),
        ("delta (tuned - base)", under_prefix(run.metrics, "delta")),
        ("merged", under_prefix(run.merge, "merged")),
    ]


def compare_columns(a: RunResults, b: RunResults) -> list[tuple[str, dict]]:
    tuned_a, tuned_b = under_prefix(a.metrics, "tuned"), under_prefix(b.metrics, "tuned")
    diff = {k: difference(tuned_a.get(k), tuned_b.get(k)) for k in set(tuned_a) | set(tuned_b)}
    return [
        (f"{a.label}: base", under_prefix(a.metrics, "base")),
        (f"{a.label}: tuned", tuned_a),
        (f"{b.label}: base", under_prefix(b.metrics, "base")),
        (f"{b.label}: tuned", tuned_b),
        (f"tuned: {b.label} - {a.label}", diff),
    ]


# ---------------------------------------------------------------- two runs: is the difference real?


@dataclass
class Difference:
    """Run b's tuned metrics minus run a's on the test rows both have, with paired bootstrap 95% intervals,
    and (from a seed sweep) the spread of each tuned metric across runs that differ only in their seed."""

    a: str
    b: str
    intervals: dict[str, tuple[float, float, float]]  # metric -> (b - a, low, high)
    dropped: dict[str, dict[str, int]]  # "scored" / "answered" -> rows left unpaired, by reason
    spread: dict[str, tuple[float, float, int]]  # metric -> (standard deviation, max - min, runs)
    seeds: list[str]


def seed_spread(seed_runs: list[RunResults]) -> dict[str, tuple[float, float, int]]:
    """Each tuned metric's sample standard deviation and range across runs (two or more) that differ in their seed."""
    import statistics

    if len(seed_runs) < 2:
        return {}
    tuned = [under_prefix(run.metrics, "tuned") for run in seed_runs]
    out = {}
    for name in sorted(set.intersection(*(set(t) for t in tuned))):
        values = [t[name] for t in tuned]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[name] = (statistics.stdev(values), max(values) - min(values), len(values))
    return out


def difference_of(
    a: RunResults,
    b: RunResults,
    rows_a: dict | None,
    rows_b: dict | None,
    seed_runs: list[RunResults],
    samples: int,
    seed: int,
) -> Difference:
    """The intervals of b - a (none when either run lacks per-row results) and the seed runs' spread."""
    found, dropped = (
        ({}, {}) if rows_a is None or rows_b is None else intervals.compare_runs(rows_a, rows_b, samples, seed)
    )
    return Difference(a.label, b.label, found, dropped, seed_spread(seed_runs), [run.label for run in seed_runs])


def difference_lines(diff: Difference) -> list[str]:
    """The comparison as text: per metric, b - a, its interval, the verdict and the seed spread."""
    lines = [f"tuned: {diff.b} - {diff.a}, paired bootstrap 95% interval over the test rows both runs have"]
    for part, counts in diff.dropped.items():
        if any(counts.values()):
            lines.append(f"  {part} rows left unpaired: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    for name, (value, low, high) in sorted(diff.intervals.items()):
        line = f"  {name}: {value:+.5g} [{low:+.5g}, {high:+.5g}] {intervals.verdict(low, high, diff.a, diff.b)}"
        if name in diff.spread:
            sd, span, n = diff.spread[name]
            line += f"; across {n} seeds sd {sd:.3g}, range {span:.3g}"
        lines.append(line)
    if not diff.intervals:
        lines.append(f"  no intervals: a run has no {paths.EVAL_ROWS} (`dvc pull` it, or rerun evaluate there)")
    return lines
