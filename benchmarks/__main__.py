"""python -m benchmarks run [--only NAME ...] [--json PATH] [--quick]"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import common  # noqa: E402

# Modules in benchmarks/, each with `run(quick: bool) -> dict` whose "table" is a list of [label, value]
# rows to print, and whose other keys go to the JSON as they are.
BENCHMARKS = ("data", "train", "evaluate", "dvc")
DEFAULT_JSON = common.REPO / "benchmarks" / "results" / "latest.json"


def print_table(name: str, rows: list) -> None:
    width = max((len(str(label)) for label, _ in rows), default=0)
    print(f"\n== {name}")
    for label, value in rows:
        print(f"  {str(label):<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmarks, print a table, write JSON")
    run.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    run.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON.relative_to(common.REPO)}")
    run.add_argument("--quick", action="store_true", help="fewer repeats and rows: a smoke test, not figures")
    args = parser.parse_args(argv)

    os.chdir(common.REPO)  # params.yaml and data/raw are read relative to the repo root
    report = {
        "machine": common.machine(),
        "versions": common.versions(),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "benchmarks": {},
    }
    print(f"machine: {report['machine']}")
    for name in args.only or BENCHMARKS:
        start = time.perf_counter()
        result = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["benchmarks"][name] = result
        print_table(name, result.get("table", []))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n-> {args.json}")


if __name__ == "__main__":
    sys.exit(main())
