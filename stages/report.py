"""report: the run's curves, data lengths and metrics as images in one offline page -> metrics/report.html.

`dvc plots show` draws the curves with Vega loaded from a CDN, so its page is blank offline. This
page has every chart inline (SVG as data: URIs; no scripts, no fonts, no links), so it opens
anywhere. `--compare REV_A REV_B -o FILE` overlays two git revisions or DVC experiments instead.
"""

import argparse

from finetune import errors, files, paths
from finetune.report import page, runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.split("\n")[0])
    parser.add_argument("--compare", nargs=2, metavar=("REV_A", "REV_B"),
                        help="two git revisions or DVC experiment names to overlay")
    parser.add_argument("-o", "--output",
                        help=f"the page to write (default {paths.REPORT}; {paths.COMPARE_REPORT} with --compare)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    curves = runs.curve_files()
    if args.compare:
        a, b = (runs.load_run(runs.revision_reader(rev), rev, curves) for rev in args.compare)
        text, out = page.compare_page(a, b, curves), args.output or paths.COMPARE_REPORT
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
