"""finetune.report.runs: reading dvclive TSVs and metrics (a bad file named by file and line), the curves dvc.yaml
lists, and the tables of one run or two."""

from __future__ import annotations

import re

import pytest

from finetune.errors import DataError
from finetune.report import runs
from helpers import REPO
from pages import EVAL, LIVE, tsv

CURVES = runs.curve_files(str(REPO / "dvc.yaml"))


def test_curves_are_dvc_yamls_plots():
    assert list(CURVES) == ["Loss", "Mean token accuracy", "Entropy", "Learning rate"]
    assert CURVES["Loss"] == {"train": (f"{LIVE}/loss.tsv", "loss"), "eval": (f"{LIVE}/eval/loss.tsv", "loss")}
    assert CURVES["Learning rate"] == {"train": (f"{LIVE}/learning_rate.tsv", "learning_rate")}


def test_curve_is_sorted_by_step_and_a_repeated_step_keeps_its_last_value():
    # The trainer's final evaluate() logs the last step a second time.
    text = tsv("loss", [(3, 2.0), (1, 3.0), (6, 1.5), (6, 1.25)])
    assert runs.parse_curve(text, "loss", "x.tsv") == [(1.0, 3.0), (3.0, 2.0), (6.0, 1.25)]


@pytest.mark.parametrize(
    "text, message",
    [
        (tsv("loss", [(1, 2.0), (2, "nan?")]), "x.tsv: line 3: not a number"),
        (tsv("accuracy", [(1, 2.0)]), "x.tsv: expected columns step and loss"),
        ("", "x.tsv: expected columns step and loss"),
    ],
)
def test_a_bad_curve_file_names_the_file_and_line(text, message):
    with pytest.raises(DataError, match=re.escape(message)):
        runs.parse_curve(text, "loss", "x.tsv")


def test_curves_read_train_and_eval_series_and_skip_absent_files():
    files = {
        f"{LIVE}/loss.tsv": tsv("loss", [(1, 3.0), (2, 2.0)]),
        f"{LIVE}/eval/loss.tsv": tsv("loss", [(2, 2.5)]),
        f"{LIVE}/learning_rate.tsv": tsv("learning_rate", [(1, 1e-5)]),
    }
    curves = runs.read_curves(files.get, CURVES)
    assert curves["Loss"] == {"train": [(1.0, 3.0), (2.0, 2.0)], "eval": [(2.0, 2.5)]}
    assert curves["Learning rate"] == {"train": [(1.0, 1e-5)]}  # no eval series: none logged
    assert curves["Entropy"] == {}


def test_metrics_read_flat_or_nested_and_a_missing_file_is_empty():
    files = {
        "flat.json": '{"merged.eval_loss": 1.5, "tolerance": 0.001}',
        "nested.json": '{"merged": {"eval_loss": 1.5}, "tolerance": 0.001}',
    }
    assert (
        runs.read_metrics(files.get, "flat.json")
        == runs.read_metrics(files.get, "nested.json")
        == {"merged.eval_loss": 1.5, "tolerance": 0.001}
    )
    assert runs.read_metrics(files.get, "absent.json") == {}
    with pytest.raises(DataError, match="bad.json: invalid JSON at line 1"):
        runs.read_metrics({"bad.json": "{"}.get, "bad.json")


def test_compare_table_has_both_runs_and_their_difference():
    a = runs.RunResults("main", {}, EVAL, {}, [])
    b = runs.RunResults("exp-2", {}, {**EVAL, "tuned.eval_loss": 1.5}, {}, [])
    columns = runs.compare_columns(a, b)
    rows = {row[0]: row[1:] for row in runs.table_rows(columns)}
    assert [label for label, _ in columns][-1] == "tuned: exp-2 - main"
    assert rows["eval_loss"] == [2.5, 2.0, 2.5, 1.5, -0.5]


def keyed_rows(nll: list[float]) -> dict:
    n = len(nll)
    return {
        "scored": {
            "key": [f"k{i}" for i in range(n)],
            "row": list(range(n)),
            "nll": nll,
            "entropy": [1.0] * n,
            "correct": [1] * n,
            "tokens": [2] * n,
        }
    }


def test_comparison_text_has_the_interval_the_verdict_and_the_seed_spread():
    a = runs.RunResults("main", {}, EVAL, {}, [])
    seeds = [
        runs.RunResults(f"s{i}", {}, {**EVAL, "tuned.eval_loss": v}, {}, []) for i, v in enumerate([1.0, 1.5, 2.0])
    ]
    same = runs.difference_of(a, a, keyed_rows([2.0, 4.0, 6.0]), keyed_rows([2.0, 4.0, 6.0]), seeds, 200, 0)
    assert same.spread["eval_loss"] == pytest.approx((0.5, 1.0, 3))
    text = "\n".join(runs.difference_lines(same))
    assert "eval_loss: +0 [+0, +0] no detectable difference; across 3 seeds sd 0.5, range 1" in text
    lower = runs.difference_of(a, a, keyed_rows([2.0, 4.0, 6.0]), keyed_rows([1.0, 3.0, 5.0]), [], 200, 0)
    assert "eval_loss: -0.5 [-0.5, -0.5] main lower than main" in "\n".join(runs.difference_lines(lower))  # control
    none = runs.difference_of(a, a, None, keyed_rows([1.0]), [], 200, 0)
    assert "no intervals" in "\n".join(runs.difference_lines(none))
