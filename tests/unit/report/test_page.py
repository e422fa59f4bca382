"""finetune.report.page: the table, n/a for what is missing, every text escaped, two runs paired by prompt."""

from __future__ import annotations

import pytest

from finetune.report import page, runs
from helpers import REPO
from pages import EVAL, HOSTILE, images, metric_cells, raw_markup

CURVES = runs.curve_files(str(REPO / "dvc.yaml"))


@pytest.mark.parametrize(
    "merge, merged_cell",
    [
        ({"max_abs_logit_diff": 1e-7}, "n/a"),  # merge.json without merged.* keys (today's merge stage)
        ({}, "n/a"),  # no merge.json at all
        ({"merged.eval_loss": 2.125}, "2.125"),
    ],
)
def test_table_has_base_tuned_delta_and_merged_or_na(merge, merged_cell):
    columns = runs.run_columns(runs.RunResults("", {}, EVAL, merge, []))
    html = page.table_html(columns, runs.table_rows(columns))
    assert metric_cells(html, "eval_loss") == ["2.5", "2", "-0.5", merged_cell]
    assert metric_cells(html, "chrf") == ["1", "7", "6", "n/a"]


def test_missing_curves_and_samples_show_as_na_not_a_crash():
    run_ = runs.RunResults("", {t: {} for t in CURVES}, {}, {}, [])
    html = page.run_page(run_, CURVES, [], 64)
    assert len(images(html)) == 0
    assert html.count('class="na"') >= len(CURVES) + 3  # curves, histogram, bars, samples


def test_sample_text_is_escaped():
    rows = [{"prompt": HOSTILE, "reference": "r", "base_output": "\n\n\n", "tuned_output": 'a "quoted" answer'}]
    html = page.samples_html(rows, [("prompt", "prompt"), ("base", "base_output"), ("tuned", "tuned_output")])
    assert not raw_markup(html)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "(only whitespace: &#x27;\\n\\n\\n&#x27;)" in html  # an answer of newlines is visible
    # Negative control: the same row put in unescaped is caught.
    assert raw_markup(f"<td>{HOSTILE}</td>")


def test_compare_pairs_answers_by_prompt_not_row_number():
    no_curves = {t: {} for t in CURVES}
    a = runs.RunResults(
        "main",
        no_curves,
        EVAL,
        {},
        [
            {"row": 0, "prompt": "What is APR?", "tuned_output": "a rate"},
            {"row": 1, "prompt": "Define equity.", "tuned_output": "ownership"},
        ],
    )
    b = runs.RunResults(
        "seed-7",
        no_curves,
        EVAL,
        {},
        [
            {"row": 0, "prompt": "Define equity.", "tuned_output": "a stake"},
            {"row": 1, "prompt": "What is a bond?", "tuned_output": "a loan"},
        ],
    )
    html = page.compare_page(a, b, CURVES)
    equity = html[html.index("Define equity.") :]
    assert equity.index("a stake") < equity.index("</tr>")  # b's answer to the same prompt, in the same row
    assert "a loan" not in html  # a prompt only b sampled has no row of a's to go in
    apr = html[html.index("What is APR?") :]
    assert "a stake" not in apr[: apr.index("</tr>")]  # control: by row number, b's row 0 would sit here


def test_compare_page_shows_the_interval_and_no_detectable_difference():
    no_curves = {t: {} for t in CURVES}
    a, b = runs.RunResults("main", no_curves, EVAL, {}, []), runs.RunResults("exp", no_curves, EVAL, {}, [])
    diff = runs.Difference(
        "main",
        "exp",
        {"eval_loss": (0.01, -0.02, 0.04), "chrf": (-3.0, -5.0, -1.0)},
        {"scored": {"only_in_a": 2, "only_in_b": 0, "repeated_key": 0}},
        {"eval_loss": (0.03, 0.07, 3)},
        ["s1", "s2", "s3"],
    )
    html = page.compare_page(a, b, CURVES, diff)
    section = html[html.index("Is the difference real?") :]
    assert metric_cells(section, "eval_loss") == ["0.01", "-0.02", "0.04", "no detectable difference", "0.03", "0.07"]
    assert metric_cells(section, "chrf") == ["-3", "-5", "-1", "exp lower than main", "n/a", "n/a"]
    assert "only_in_a 2" in section and "s1, s2, s3" in section
    assert "Is the difference real?" not in page.compare_page(a, b, CURVES)  # control: no difference, no section
