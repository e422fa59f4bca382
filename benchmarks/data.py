"""data: `python -m stages.ingest` then `python -m stages.prepare` on a generated million-row file.

Real Alpaca rows (../shared/data/alpaca when present, else the embedded sample) repeated and
made unique (" (variant k)" on the instruction, so every prompt is distinct), written as parquet,
then both stages run as subprocesses in a temp copy of the project with the default params and
the default tiny tokenizer (its models/base is built once, untimed). Each stage's wall seconds,
CPU seconds (user + sys) and peak RSS are medians over the repeats after a warm-up. The children
are pinned to 2 CPUs (the target is for 2 cores) and, like `dvc repro` from a shell, may use
tokenizers' threads. Target (issue 10): ingest + prepare under 60 s and under 4 GB.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import common

ROWS, QUICK_ROWS = 1_000_000, 50_000
CPUS = 2
STAGES = ("ingest", "prepare")


def alpaca_rows(n_rows: int) -> pd.DataFrame:
    """n_rows rows of the data source, repeated; every repeat's instruction gets its own suffix."""
    from finetune.data import readers, schema

    source = common.data_source()
    rows = schema.canonicalize(readers.read_any(source), source, "drop").astype(object)
    repeats = -(-n_rows // len(rows))
    frame = pd.concat([rows] * repeats, ignore_index=True).iloc[:n_rows]
    copy = (frame.index // len(rows)).to_numpy()
    suffix = pd.Series([f" (variant {k})" if k else "" for k in copy], index=frame.index)
    frame["instruction"] = frame["instruction"].where(frame["instruction"].isna(), frame["instruction"] + suffix)
    return frame


def project(root: Path, data_path: Path) -> Path:
    """A copy of the project pointed at data_path, with models/base built (tiny default)."""
    project = common.copy_project(root, {"data": {"path": str(data_path)}})
    run_stage("base", project)
    return project


def run_stage(name: str, project: Path) -> dict:
    """common.run_stage on CPUS CPUs, with tokenizers' threads as a shell's `dvc repro` has them."""
    return common.run_stage(name, project, env={"TOKENIZERS_PARALLELISM": None}, cpus=CPUS)


def run(quick: bool) -> dict:
    n_rows = QUICK_ROWS if quick else ROWS
    repeats, warmup = (1, 0) if quick else (3, 1)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        data_path = tmp / f"alpaca_{n_rows}.parquet"
        alpaca_rows(n_rows).to_parquet(data_path, index=False)
        generated_seconds = time.perf_counter() - start
        root = project(tmp / "project", data_path)
        runs = []
        for i in range(warmup + repeats):
            figures = {name: run_stage(name, root) for name in STAGES}
            if i >= warmup:
                runs.append(figures)
        counts = json.loads((root / "metrics/data.json").read_text())

    def median(stage: str, key: str) -> float:
        return round(statistics.median(r[stage][key] for r in runs), 2)

    result = {stage: {key: median(stage, key) for key in ("seconds", "cpu_seconds", "peak_rss_mb")} for stage in STAGES}
    total = round(statistics.median(sum(r[s]["seconds"] for s in STAGES) for r in runs), 2)
    peak = max(result[s]["peak_rss_mb"] for s in STAGES)
    result.update(
        rows=n_rows,
        source=common.data_source(),
        cpus=CPUS,
        repeats=repeats,
        warmup=warmup,
        generate_seconds=round(generated_seconds, 1),
        total_seconds=total,
        peak_rss_mb=peak,
        target={"total_seconds": 60, "peak_rss_mb": 4096},
        prepare_counts=counts,
        load_average=os.getloadavg(),
    )
    result["table"] = [
        ["rows", f"{n_rows:,} ({Path(common.data_source()).name}, made unique)"],
        *[[f"{s} wall / cpu", f"{result[s]['seconds']:.1f} s / {result[s]['cpu_seconds']:.1f} s"] for s in STAGES],
        *[[f"{s} peak RSS", f"{result[s]['peak_rss_mb']:,.0f} MB"] for s in STAGES],
        ["ingest + prepare", f"{total:.1f} s (target < 60 s), peak {peak:,.0f} MB (target < 4,096 MB)"],
        [
            "prepare counted",
            f"{counts['rows_kept']:,} kept, {counts['dropped_total']:,} dropped, "
            f"{counts.get('rows_unchecked', 0):,} not needed, "
            f"{counts.get('length_checked', 0):,} length-checked",
        ],
        ["load average", " ".join(f"{x:.1f}" for x in result["load_average"]) + f" ({os.cpu_count()} cores)"],
    ]
    return result
