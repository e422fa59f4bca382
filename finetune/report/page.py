"""The report as one offline HTML page: every chart inline (SVG data: URIs), no scripts, fonts or links."""

from __future__ import annotations

import base64
import html

from finetune import paths
from finetune.evaluation import intervals
from finetune.report import charts
from finetune.report.runs import Difference, RunResults, compare_columns, fmt, run_columns, table_rows

SAMPLES_SHOWN = 10

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
    return f'<figure{" class=wide" if wide else ""}><img src="{data_uri(svg)}" alt="{esc(title)}"></figure>'


def table_html(columns: list[tuple[str, dict]], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(label)}</th>" for label in ["metric", *(c for c, _ in columns)])
    body = "".join(
        "<tr>"
        + f"<td>{esc(name)}</td>"
        + "".join(f'<td class="num{" na" if v is None else ""}">{esc(fmt(v))}</td>' for v in values)
        + "</tr>"
        for name, *values in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def shown_text(text) -> str:
    """An answer as text; one of only whitespace (a model that never stops) shown as its repr."""
    if text is None:
        return "n/a"
    return text if str(text).strip() else f"(only whitespace: {text!r})"


def samples_html(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return f'<p class="na">n/a (no {esc(paths.SAMPLES)})</p>'
    head = "".join(f"<th>{esc(header)}</th>" for header, _ in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="text">{esc(shown_text(row.get(key)))}</td>' for _, key in columns) + "</tr>"
        for row in rows[:SAMPLES_SHOWN]
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, sections: list[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def curve_figures(runs: list[RunResults], curves: dict[str, dict[str, tuple[str, str]]]) -> list[str]:
    figures = []
    for title, series_files in curves.items():
        lines = [(run.label, series, points) for run in runs for series, points in run.curves[title].items() if points]
        svg = charts.curve_svg(title, lines) if lines else None
        figures.append(figure_html(title, svg, f"no {series_files['train'][0]}"))
    return figures


def run_page(run: RunResults, curves, lengths: list[int], max_length: int) -> str:
    columns = run_columns(run)
    check = {k: v for k, v in run.merge.items() if not k.startswith("merged.")}
    figures = [
        *curve_figures([run], curves),
        figure_html("Token lengths", charts.histogram_svg(lengths, max_length) if lengths else None, "no rows"),
        figure_html(
            "Base vs tuned",
            charts.metrics_svg(columns[:2] + columns[3:], ["0.6", "C0", "C2"]),
            f"no {paths.EVAL_METRICS}",
            True,
        ),  # base grey, tuned the colour of its curves
        figure_html(
            "Tuned - base, paired bootstrap 95% interval",
            charts.metrics_svg([columns[2]], ["C0"]),
            f"no {paths.EVAL_METRICS}",
            True,
        ),
    ]
    return page(
        "Fine-tuning report",
        [
            f'<div class="charts">{"".join(figures)}</div>',
            f"<h2>Metrics ({esc(paths.EVAL_METRICS)}, {esc(paths.MERGE_METRICS)})</h2>",
            table_html(columns, table_rows(columns)),
            "<h2>Merge check</h2>",
            table_html([("value", check)], table_rows([("value", check)])),
            f"<h2>Sample answers ({esc(paths.SAMPLES)}, first {SAMPLES_SHOWN})</h2>",
            samples_html(
                run.samples,
                [("prompt", "prompt"), ("reference", "reference"), ("base", "base_output"), ("tuned", "tuned_output")],
            ),
        ],
    )


def difference_html(diff: Difference | None) -> list[str]:
    """The section "Is the difference real?": b - a per tuned metric, its interval, the verdict, the seed spread."""
    if diff is None:
        return []
    title = f"<h2>Is the difference real? tuned: {esc(diff.b)} - {esc(diff.a)}</h2>"
    if not diff.intervals:
        return [title, f'<p class="na">n/a (a run has no {esc(paths.EVAL_ROWS)}; `dvc pull` it or rerun evaluate)</p>']
    found = diff.intervals
    columns = [
        (f"{diff.b} - {diff.a}", {k: v[0] for k, v in found.items()}),
        ("95% low", {k: v[1] for k, v in found.items()}),
        ("95% high", {k: v[2] for k, v in found.items()}),
        ("verdict", {k: intervals.verdict(v[1], v[2], diff.a, diff.b) for k, v in found.items()}),
    ]
    if diff.spread:
        columns += [
            (f"sd across {len(diff.seeds)} seeds", {k: v[0] for k, v in diff.spread.items() if k in found}),
            ("range across seeds", {k: v[1] for k, v in diff.spread.items() if k in found}),
        ]
    unpaired = "; ".join(
        f"{part}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        for part, counts in diff.dropped.items()
        if any(counts.values())
    )
    shown = esc("Rows left unpaired: " + unpaired) if unpaired else "Every row paired."
    notes = [
        f"<p>Paired bootstrap 95% intervals over the test rows both runs have (matched by prompt and reference). {shown}</p>"
    ]
    if diff.seeds:
        notes.append(
            f"<p>Seed runs: {esc(', '.join(diff.seeds))}. A difference within their spread may be "
            "training noise, which the interval (test rows only) does not cover.</p>"
        )
    return [title, *notes, table_html(columns, table_rows(columns))]


def compare_page(a: RunResults, b: RunResults, curves, diff: Difference | None = None) -> str:
    columns = compare_columns(a, b)
    # by prompt, not row number: revisions with another seed, n or data sample other rows
    answers_b = {row.get("prompt"): row.get("tuned_output") for row in b.samples}
    paired = [{**row, "b": answers_b.get(row.get("prompt"))} for row in a.samples]
    figures = [
        *curve_figures([a, b], curves),
        figure_html(
            "Tuned metrics",
            charts.metrics_svg([columns[0], columns[1], columns[3]], ["0.6", "C0", "C1"]),
            "no metrics",
            True,
        ),
    ]  # base grey; each run the colour of its curves
    return page(
        f"Comparison: {a.label} vs {b.label}",
        [
            f'<div class="charts">{"".join(figures)}</div>',
            f"<h2>Metrics ({esc(paths.EVAL_METRICS)})</h2>",
            table_html(columns, table_rows(columns)),
            *difference_html(diff),
            f"<h2>Sample answers ({esc(paths.SAMPLES)}, first {SAMPLES_SHOWN})</h2>",
            samples_html(
                paired,
                [
                    ("prompt", "prompt"),
                    ("reference", "reference"),
                    (f"{a.label}: tuned", "tuned_output"),
                    (f"{b.label}: tuned", "b"),
                ],
            ),
        ],
    )
