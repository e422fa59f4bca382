"""The report's charts: matplotlib (no pyplot, no GUI) to SVG bytes, the same bytes for the same inputs."""

from __future__ import annotations

import math
from io import BytesIO
from typing import Callable

from finetune.evaluation.comparison import METRICS
from finetune.report.runs import Points, fmt

# Same inputs, same bytes: fixed SVG ids, no date, matplotlib's defaults whatever the user's matplotlibrc.
SVG_RC = {"svg.hashsalt": "stages.report", "svg.fonttype": "path"}


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
            ax.plot(
                *zip(*points),
                label=f"{run} {series}".strip(),
                color=f"C{runs.index(run)}",
                linestyle="--" if series == "eval" else "-",
                marker="o" if series == "eval" else None,
            )
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
        ax.set(
            title=f"Training examples: tokens after the chat template (n={len(lengths)}, median {median})",
            xlabel="tokens",
            ylabel="examples",
        )
        ax.title.set_fontsize("medium")
        ax.legend()
        return fig

    return _svg(draw)


def metrics_svg(columns: list[tuple[str, dict]], colours: list[str]) -> bytes | None:
    """One small bar chart per metric (their scales differ), a bar per column that has a number; a column
    whose values hold METRIC_low / METRIC_high (a 95% interval) gets them drawn as an error bar."""

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    names = [m for m in METRICS if any(number(values.get(m)) for _, values in columns)]
    if not names:
        return None

    def draw():
        cols = 3
        fig, axes = _figure(9.6, 2.4 * math.ceil(len(names) / cols), math.ceil(len(names) / cols), cols)
        for ax, name in zip(axes, names):
            bars = [
                (label.replace(": ", ":\n"), values[name], colour)
                for (label, values), colour in zip(columns, colours)
                if number(values.get(name))
            ]
            rects = ax.bar(*zip(*[(label, v) for label, v, _ in bars]), color=[c for _, _, c in bars])
            ax.bar_label(rects, labels=[fmt(v) for _, v, _ in bars], fontsize="small")
            for rect, (_, values) in zip(rects, [(l, v) for (l, v), _ in zip(columns, colours) if number(v.get(name))]):
                low, high = values.get(f"{name}_low"), values.get(f"{name}_high")
                if number(low) and number(high):
                    ax.errorbar(
                        rect.get_x() + rect.get_width() / 2,
                        values[name],
                        color="black",
                        capsize=4,
                        yerr=[[max(values[name] - low, 0)], [max(high - values[name], 0)]],
                    )
                    ax.axhline(0, color="0.5", linewidth=0.8)
            ax.set_title(name, fontsize="medium")
            ax.tick_params(axis="x", labelsize="small")
            ax.margins(y=0.2)
            if not any(v for _, v, _ in bars):
                ax.set_ylim(0, 1)  # all zero: matplotlib would centre an empty axis on 0
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        return fig

    return _svg(draw)
