"""finetune.report.charts: the same inputs draw the same SVG bytes."""

from __future__ import annotations

from finetune.report import charts


def test_a_chart_is_the_same_bytes_every_time(monkeypatch):
    lines = [("", "train", [(1.0, 3.0), (2.0, 2.0)]), ("", "eval", [(2.0, 2.5)])]
    assert charts.curve_svg("Loss", lines) == charts.curve_svg("Loss", lines)
    monkeypatch.setattr(charts, "SVG_RC", {})  # negative control: matplotlib's random ids come back
    assert charts.curve_svg("Loss", lines) != charts.curve_svg("Loss", lines)
