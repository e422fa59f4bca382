"""The report's inputs and pages for its tests (tests/unit/report, tests/integration/test_report_stage.py):
dvclive TSVs, metrics and samples written by hand, and reading the HTML and SVG the report makes."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from finetune import paths

LIVE = paths.LIVE_PLOTS
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'
EVAL = {
    "base.eval_loss": 2.5,
    "tuned.eval_loss": 2.0,
    "delta.eval_loss": -0.5,
    "base.chrf": 1.0,
    "tuned.chrf": 7.0,
    "delta.chrf": 6.0,
}


def tsv(column: str, rows) -> str:
    return f"step\t{column}\n" + "".join(f"{s}\t{v}\n" for s, v in rows)


def images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def svg_root(uri: str) -> ET.Element:
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix), uri[:60]
    return ET.fromstring(base64.b64decode(uri[len(prefix) :], validate=True))


def metric_cells(page: str, metric: str) -> list[str]:
    row = re.search(rf"<tr><td>{metric}</td>(.*?)</tr>", page)
    assert row, f"no row for {metric}"
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))


def raw_markup(page: str) -> bool:
    return "<script" in page or "<b>bold" in page


CURVE_VALUES = {
    "loss": [(1, 3.0), (2, 2.5), (3, 2.25), (4, 2.0)],
    "mean_token_accuracy": [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.35)],
    "entropy": [(1, 5.0), (2, 4.5), (3, 4.0), (4, 3.5)],
    "learning_rate": [(1, 1e-3), (2, 7.5e-4), (3, 5e-4), (4, 2.5e-4)],
}


def write_inputs(root: Path, scale: float = 1.0) -> None:
    """What train / evaluate / merge would have written, by hand (values scaled for a second run)."""
    for name, rows in CURVE_VALUES.items():
        scaled = [(s, v * scale) for s, v in rows]
        (root / LIVE / "eval").mkdir(parents=True, exist_ok=True)
        (root / LIVE / f"{name}.tsv").write_text(tsv(name, scaled))
        if name != "learning_rate":
            (root / LIVE / "eval" / f"{name}.tsv").write_text(tsv(name, [scaled[1], scaled[3], scaled[3]]))
    evaluation = {**EVAL, "tuned.eval_loss": 2.0 * scale}
    (root / paths.EVAL_METRICS).write_text(json.dumps(evaluation))
    (root / paths.MERGE_METRICS).write_text(json.dumps({"max_abs_logit_diff": 1e-7, "merged.eval_loss": 2.125}))
    tokens = [4 + i % 5 for i in range(40)]  # per-row results: each row's loss about 2 * scale per token
    nll = [t * scale * (2.0 + (0.3 if i % 2 else -0.3) * (1 + i % 3)) for i, t in enumerate(tokens)]
    scored = {
        "row": list(range(40)),
        "key": [f"k{i}" for i in range(40)],
        "nll": nll,
        "entropy": tokens,
        "correct": [0] * 40,
        "tokens": tokens,
    }
    (root / paths.EVAL_ROWS).parent.mkdir(parents=True, exist_ok=True)
    (root / paths.EVAL_ROWS).write_text(json.dumps({"base": {"scored": scored}, "tuned": {"scored": scored}}))
    samples = [
        {
            "row": i,
            "prompt": f"{HOSTILE} {i}",
            "reference": "ref",
            "base_output": "\n" * 8,
            "tuned_output": f"answer {i} at {scale}",
        }
        for i in range(3)
    ]
    (root / paths.SAMPLES).write_text("".join(json.dumps(s) + "\n" for s in samples))
