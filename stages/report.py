"""report: the run's curves, data lengths and metrics as images in one offline page -> metrics/report.html.

`dvc plots show` draws the curves with Vega loaded from a CDN, so its page is blank offline. This
page has every chart inline (SVG as data: URIs; no scripts, no fonts, no links), so it opens
anywhere. `--compare REV_A REV_B -o FILE` overlays two git revisions or DVC experiments instead, with the
paired bootstrap interval of B's tuned metrics minus A's; `--seeds REV REV ...` adds the spread of the tuned
metrics across runs that differ only in train.seed (a seed sweep).
"""

import argparse

from finetune import errors, files, paths
from finetune.report import page, runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--compare", nargs=2, metavar=("REV_A", "REV_B"), help="two git revisions or DVC experiment names to overlay"
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        metavar="REV",
        default=[],
        help="with --compare: runs of a seed sweep; their tuned metrics' spread is shown next to the interval",
    )
    parser.add_argument("--bootstrap-samples", type=int, default=1000, help="resamples behind each interval")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resamples")
    parser.add_argument(
        "-o", "--output", help=f"the page to write (default {paths.REPORT}; {paths.COMPARE_REPORT} with --compare)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.seeds and (not args.compare or len(args.seeds) < 2):
        raise errors.StageError("--seeds needs --compare REV_A REV_B and at least two seed runs")
    curves = runs.curve_files()
    if args.compare:
        readers = [runs.revision_reader(rev) for rev in args.compare]
        a, b = (runs.load_run(read, rev, curves) for read, rev in zip(readers, args.compare))
        seed_runs = [runs.load_run(runs.revision_reader(rev), rev, curves) for rev in args.seeds]
        diff = runs.difference_of(
            a, b, *(runs.read_rows(read) for read in readers), seed_runs, args.bootstrap_samples, args.bootstrap_seed
        )
        print("\n".join(runs.difference_lines(diff)))
        text, out = page.compare_page(a, b, curves, diff), args.output or paths.COMPARE_REPORT
    else:
        import pandas as pd

        from finetune import chat_format, config, modeling

        p = config.load("prepare")
        tokenizer = modeling.load_tokenizer(paths.BASE_DIR)
        lengths = chat_format.token_lengths(tokenizer, pd.read_parquet(paths.TRAIN_DATA)).tolist()
        run = runs.load_run(runs.workspace_reader, "", curves)
        text, out = page.run_page(run, curves, lengths, p.prepare.max_length), args.output or paths.REPORT
    with files.atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"report: {len(text) // 1024} KiB -> {out}")


if __name__ == "__main__":
    errors.run(main)
