"""report: the run's curves, data lengths and metrics as images in one offline page -> metrics/report.html.

`dvc plots show` draws the curves with Vega loaded from a CDN, so its page is blank offline. This
page has every chart inline (SVG as data: URIs; no scripts, no fonts, no links), so it opens
anywhere. `--compare REV_A REV_B -o FILE` overlays two git revisions or DVC experiments instead.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
from dataclasses import dataclass
from io import BytesIO, StringIO
from pathlib import Path
from typing import Callable

from stages import errors, io, params, prompts

LIVE_PLOTS = "metrics/train_live/plots/metrics"  # dvclive's TSVs (train; eval/ for the eval series)
EVAL_METRICS = "metrics/eval.json"
MERGE_METRICS = "metrics/merge.json"
SAMPLES = "metrics/samples.jsonl"
TRAIN_DATA = "data/processed/train.parquet"
BASE_DIR = "models/base"
OUT = "metrics/report.html"
COMPARE_OUT = "report_compare.html"

CURVES = {"Loss": "loss", "Mean token accuracy": "mean_token_accuracy", "Entropy": "entropy",
          "Learning rate": "learning_rate"}  # the titles of dvc.yaml's plots
SERIES = {"train": "", "eval": "eval/"}
BAR_METRICS = ("eval_loss", "perplexity", "mean_token_accuracy", "entropy", "rougeL_f1", "chrf",
               "exact_match", "stopped_fraction", "generated_tokens_mean")
SAMPLES_SHOWN = 10
# Same inputs, same bytes: fixed SVG ids, no date, matplotlib's defaults whatever the user's matplotlibrc.
SVG_RC = {"svg.hashsalt": "stages.report", "svg.fonttype": "path"}

Points = list[tuple[float, float]]
Reader = Callable[[str], "str | None"]  # path -> text, None when the file is absent


@dataclass
class Run:
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
        raise io.DataError(f"{source}: expected columns step and {column}, found {reader.fieldnames}")
    for line, row in enumerate(reader, start=2):
        try:
            by_step[float(row["step"])] = float(row[column])
        except (TypeError, ValueError):
            raise io.DataError(f"{source}: line {line}: not a number: {row}") from None
    return sorted(by_step.items())


def read_curves(read: Reader) -> dict[str, dict[str, Points]]:
    curves = {}
    for title, name in CURVES.items():
        curves[title] = {}
        for series, folder in SERIES.items():
            path = f"{LIVE_PLOTS}/{folder}{name}.tsv"
            text = read(path)
            if text is not None:
                curves[title][series] = parse_curve(text, name, path)
    return curves


def flatten(data: dict, prefix: str = "") -> dict:
    """{"merged": {"eval_loss": 1}} and {"merged.eval_loss": 1} both -> {"merged.eval_loss": 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_metrics(read: Reader, path: str) -> dict:
    text = read(path)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise io.DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return flatten(data) if isinstance(data, dict) else {}


def read_samples(read: Reader) -> list[dict]:
    text = read(SAMPLES)
    rows = []
    for line, raw in enumerate((text or "").split("\n"), start=1):
        if raw.strip():
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                raise io.DataError(f"{SAMPLES}: line {line} is not valid JSON") from None
    return rows


def load_run(read: Reader, label: str) -> Run:
    return Run(label, read_curves(read), read_metrics(read, EVAL_METRICS), read_metrics(read, MERGE_METRICS),
               read_samples(read))


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
        raise errors.StageError(f"--compare {rev}: {e}") from None

    def read(path: str) -> str | None:
        if not fs.isfile(path):
            return None
        try:
            return fs.read_text(path, encoding="utf-8")
        except (DvcException, OSError) as e:  # tracked, but its data is not in the cache
            raise errors.StageError(f"--compare {rev}: cannot read {path} ({e}); try `dvc pull`") from None
    return read


# ---------------------------------------------------------------- tables


def prefixed(metrics: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(prefix + ".")}


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


def run_columns(run: Run) -> list[tuple[str, dict]]:
    return [("base", prefixed(run.metrics, "base")), ("tuned", prefixed(run.metrics, "tuned")),
            ("delta (tuned - base)", prefixed(run.metrics, "delta")), ("merged", prefixed(run.merge, "merged"))]


def compare_columns(a: Run, b: Run) -> list[tuple[str, dict]]:
    tuned_a, tuned_b = prefixed(a.metrics, "tuned"), prefixed(b.metrics, "tuned")
    diff = {k: difference(tuned_a.get(k), tuned_b.get(k)) for k in set(tuned_a) | set(tuned_b)}
    return [(f"{a.label}: base", prefixed(a.metrics, "base")), (f"{a.label}: tuned", tuned_a),
            (f"{b.label}: base", prefixed(b.metrics, "base")), (f"{b.label}: tuned", tuned_b),
            (f"tuned: {b.label} - {a.label}", diff)]


# ---------------------------------------------------------------- charts (matplotlib, SVG)


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def _svg(draw: Callable[[], object]) -> bytes:
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context(SVG_RC):
        fig = draw()
        buffer = BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def curve_svg(title: str, lines: list[tuple[str, str, Points]]) -> bytes:
    """(run, series, points) lines: a colour per run, eval dashed with markers (it has few points)."""
    def draw():
        fig, (ax,) = _figure(6.4, 3.6)
        runs = list(dict.fromkeys(run for run, _, _ in lines))
        for run, series, points in lines:
            ax.plot(*zip(*points), label=f"{run} {series}".strip(), color=f"C{runs.index(run)}",
                    linestyle="--" if series == "eval" else "-", marker="o" if series == "eval" else None)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend()
        return fig
    return _svg(draw)


def histogram_svg(lengths: list[int], max_length: int) -> bytes:
    def draw():
        fig, (ax,) = _figure(6.4, 3.6)
        ax.hist(lengths, bins=40, range=(0, max(max(lengths), max_length)), color="C0")
        ax.axvline(max_length, color="C3", linestyle="--", label=f"prepare.max_length = {max_length}")
        median = sorted(lengths)[len(lengths) // 2]
        ax.set(title=f"Training examples: tokens after the chat template (n={len(lengths)}, median {median})",
               xlabel="tokens", ylabel="examples")
        ax.title.set_fontsize("medium")
        ax.legend()
        return fig
    return _svg(draw)


def metrics_svg(columns: list[tuple[str, dict]], colours: list[str]) -> bytes | None:
    """One small bar chart per metric (their scales differ), a bar per column that has a number."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    names = [m for m in BAR_METRICS if any(number(values.get(m)) for _, values in columns)]
    if not names:
        return None

    def draw():
        cols = 3
        fig, axes = _figure(9.6, 2.4 * math.ceil(len(names) / cols), math.ceil(len(names) / cols), cols)
        for ax, name in zip(axes, names):
            bars = [(label.replace(": ", ":\n"), values[name], colour)
                    for (label, values), colour in zip(columns, colours) if number(values.get(name))]
            rects = ax.bar(*zip(*[(label, v) for label, v, _ in bars]), color=[c for _, _, c in bars])
            ax.bar_label(rects, labels=[fmt(v) for _, v, _ in bars], fontsize="small")
            ax.set_title(name, fontsize="medium")
            ax.tick_params(axis="x", labelsize="small")
            ax.margins(y=0.2)
            if not any(v for _, v, _ in bars):
                ax.set_ylim(0, 1)  # all zero: matplotlib would centre an empty axis on 0
        for ax in axes[len(names):]:
            ax.set_visible(False)
        return fig
    return _svg(draw)


# ---------------------------------------------------------------- HTML

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
figure{margin:0}figure img{width:100%;height:auto}.wide{grid-column:1/-1}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
vertical-align:top;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{white-space:pre-wrap;max-width:28em;font-family:monospace;font-size:90%}.na{color:#888}"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def figure_html(title: str, svg: bytes | None, missing: str, wide: bool = False) -> str:
    if svg is None:
        return f'<figure><p class="na">{esc(title)}: n/a ({esc(missing)})</p></figure>'
    return (f'<figure{" class=wide" if wide else ""}><img src="{data_uri(svg)}" alt="{esc(title)}">'
            "</figure>")


def table_html(columns: list[tuple[str, dict]], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(label)}</th>" for label in ["metric", *(c for c, _ in columns)])
    body = "".join("<tr>" + f"<td>{esc(name)}</td>" + "".join(
        f'<td class="num{" na" if v is None else ""}">{esc(fmt(v))}</td>' for v in values) + "</tr>"
        for name, *values in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def shown_text(text) -> str:
    """An answer as text; one of only whitespace (a model that never stops) shown as its repr."""
    if text is None:
        return "n/a"
    return text if str(text).strip() else f"(only whitespace: {text!r})"


def samples_html(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return f'<p class="na">n/a (no {esc(SAMPLES)})</p>'
    head = "".join(f"<th>{esc(header)}</th>" for header, _ in columns)
    body = "".join("<tr>" + "".join(f'<td class="text">{esc(shown_text(row.get(key)))}</td>'
                                    for _, key in columns) + "</tr>" for row in rows[:SAMPLES_SHOWN])
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n" + "\n".join(sections)
            + "\n</body></html>\n")


def curve_figures(runs: list[Run]) -> list[str]:
    figures = []
    for title in CURVES:
        lines = [(run.label, series, points) for run in runs
                 for series, points in run.curves[title].items() if points]
        svg = curve_svg(title, lines) if lines else None
        figures.append(figure_html(title, svg, f"no {LIVE_PLOTS}/{CURVES[title]}.tsv"))
    return figures


def run_page(run: Run, lengths: list[int], max_length: int) -> str:
    columns = run_columns(run)
    check = {k: v for k, v in run.merge.items() if not k.startswith("merged.")}
    charts = [*curve_figures([run]),
              figure_html("Token lengths", histogram_svg(lengths, max_length) if lengths else None, "no rows"),
              figure_html("Base vs tuned", metrics_svg(columns[:2] + columns[3:], ["0.6", "C0", "C2"]),
                          f"no {EVAL_METRICS}", True)]  # base grey, tuned the colour of its curves
    return page("Fine-tuning report", [
        f'<div class="charts">{"".join(charts)}</div>',
        f"<h2>Metrics ({esc(EVAL_METRICS)}, {esc(MERGE_METRICS)})</h2>", table_html(columns, table_rows(columns)),
        "<h2>Merge check</h2>", table_html([("value", check)], table_rows([("value", check)])),
        f"<h2>Sample answers ({esc(SAMPLES)}, first {SAMPLES_SHOWN})</h2>",
        samples_html(run.samples, [("prompt", "prompt"), ("reference", "reference"),
                                   ("base", "base_output"), ("tuned", "tuned_output")]),
    ])


def compare_page(a: Run, b: Run) -> str:
    columns = compare_columns(a, b)
    # by prompt, not row number: revisions with another seed, n or data sample other rows
    answers_b = {row.get("prompt"): row.get("tuned_output") for row in b.samples}
    paired = [{**row, "b": answers_b.get(row.get("prompt"))} for row in a.samples]
    charts = [*curve_figures([a, b]),
              figure_html("Tuned metrics", metrics_svg([columns[0], columns[1], columns[3]], ["0.6", "C0", "C1"]),
                          "no metrics", True)]  # base grey; each run the colour of its curves
    return page(f"Comparison: {a.label} vs {b.label}", [
        f'<div class="charts">{"".join(charts)}</div>',
        f"<h2>Metrics ({esc(EVAL_METRICS)})</h2>", table_html(columns, table_rows(columns)),
        f"<h2>Sample answers ({esc(SAMPLES)}, first {SAMPLES_SHOWN})</h2>",
        samples_html(paired, [("prompt", "prompt"), ("reference", "reference"),
                              (f"{a.label}: tuned", "tuned_output"), (f"{b.label}: tuned", "b")]),
    ])


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.split("\n")[0])
    parser.add_argument("--compare", nargs=2, metavar=("REV_A", "REV_B"),
                        help="two git revisions or DVC experiment names to overlay")
    parser.add_argument("-o", "--output", help=f"the page to write (default {OUT}; {COMPARE_OUT} with --compare)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:
        a, b = (load_run(revision_reader(rev), rev) for rev in args.compare)
        text, out = compare_page(a, b), args.output or COMPARE_OUT
    else:
        import pandas as pd

        from stages import modeling

        p = params.load("prepare")
        lengths = prompts.token_lengths(modeling.load_tokenizer(BASE_DIR), pd.read_parquet(TRAIN_DATA)).tolist()
        text, out = run_page(load_run(workspace_reader, ""), lengths, p.prepare.max_length), args.output or OUT
    with io.atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"report: {len(text) // 1024} KiB -> {out}")


if __name__ == "__main__":
    errors.run(main)
