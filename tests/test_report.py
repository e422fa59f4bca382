"""The offline report: reading dvclive TSVs and metrics, the table, escaping, the stage under DVC,
the page drawn in headless Chromium, and two experiments compared (report and `dvc plots diff`)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import REPO, dvc, make_project, run
from stages import errors, io, prompts, report

LIVE = report.LIVE_PLOTS
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


def tsv(column: str, rows) -> str:
    return f"step\t{column}\n" + "".join(f"{s}\t{v}\n" for s, v in rows)


def images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def svg_root(uri: str) -> ET.Element:
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix), uri[:60]
    return ET.fromstring(base64.b64decode(uri[len(prefix):], validate=True))


# ---------------------------------------------------------------- reading


def test_curve_is_sorted_by_step_and_a_repeated_step_keeps_its_last_value():
    # The trainer's final evaluate() logs the last step a second time.
    text = tsv("loss", [(3, 2.0), (1, 3.0), (6, 1.5), (6, 1.25)])
    assert report.parse_curve(text, "loss", "x.tsv") == [(1.0, 3.0), (3.0, 2.0), (6.0, 1.25)]


@pytest.mark.parametrize("text, message", [
    (tsv("loss", [(1, 2.0), (2, "nan?")]), "x.tsv: line 3: not a number"),
    (tsv("accuracy", [(1, 2.0)]), "x.tsv: expected columns step and loss"),
    ("", "x.tsv: expected columns step and loss"),
])
def test_a_bad_curve_file_names_the_file_and_line(text, message):
    with pytest.raises(io.DataError, match=re.escape(message)):
        report.parse_curve(text, "loss", "x.tsv")


def test_curves_read_train_and_eval_series_and_skip_absent_files():
    files = {f"{LIVE}/loss.tsv": tsv("loss", [(1, 3.0), (2, 2.0)]),
             f"{LIVE}/eval/loss.tsv": tsv("loss", [(2, 2.5)]),
             f"{LIVE}/learning_rate.tsv": tsv("learning_rate", [(1, 1e-5)])}
    curves = report.read_curves(files.get)
    assert curves["Loss"] == {"train": [(1.0, 3.0), (2.0, 2.0)], "eval": [(2.0, 2.5)]}
    assert curves["Learning rate"] == {"train": [(1.0, 1e-5)]}  # no eval series: none logged
    assert curves["Entropy"] == {}


def test_metrics_read_flat_or_nested_and_a_missing_file_is_empty():
    files = {"flat.json": '{"merged.eval_loss": 1.5, "tolerance": 0.001}',
             "nested.json": '{"merged": {"eval_loss": 1.5}, "tolerance": 0.001}'}
    assert report.read_metrics(files.get, "flat.json") == report.read_metrics(files.get, "nested.json") \
        == {"merged.eval_loss": 1.5, "tolerance": 0.001}
    assert report.read_metrics(files.get, "absent.json") == {}
    with pytest.raises(io.DataError, match="bad.json: invalid JSON at line 1"):
        report.read_metrics({"bad.json": "{"}.get, "bad.json")


# ---------------------------------------------------------------- the table and the page


EVAL = {"base.eval_loss": 2.5, "tuned.eval_loss": 2.0, "delta.eval_loss": -0.5,
        "base.chrf": 1.0, "tuned.chrf": 7.0, "delta.chrf": 6.0}


def metric_cells(page: str, metric: str) -> list[str]:
    row = re.search(rf"<tr><td>{metric}</td>(.*?)</tr>", page)
    assert row, f"no row for {metric}"
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))


@pytest.mark.parametrize("merge, merged_cell", [
    ({"max_abs_logit_diff": 1e-7}, "n/a"),  # merge.json without merged.* keys (today's merge stage)
    ({}, "n/a"),  # no merge.json at all
    ({"merged.eval_loss": 2.125}, "2.125"),
])
def test_table_has_base_tuned_delta_and_merged_or_na(merge, merged_cell):
    columns = report.run_columns(report.Run("", {}, EVAL, merge, []))
    page = report.table_html(columns, report.table_rows(columns))
    assert metric_cells(page, "eval_loss") == ["2.5", "2", "-0.5", merged_cell]
    assert metric_cells(page, "chrf") == ["1", "7", "6", "n/a"]


def test_missing_curves_and_samples_show_as_na_not_a_crash():
    run_ = report.Run("", {t: {} for t in report.CURVES}, {}, {}, [])
    page = report.run_page(run_, [], 64)
    assert len(images(page)) == 0
    assert page.count('class="na"') >= len(report.CURVES) + 3  # curves, histogram, bars, samples


def raw_markup(page: str) -> bool:
    return "<script" in page or "<b>bold" in page


def test_sample_text_is_escaped():
    rows = [{"prompt": HOSTILE, "reference": "r", "base_output": "\n\n\n", "tuned_output": 'a "quoted" answer'}]
    html = report.samples_html(rows, [("prompt", "prompt"), ("base", "base_output"), ("tuned", "tuned_output")])
    assert not raw_markup(html)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "(only whitespace: &#x27;\\n\\n\\n&#x27;)" in html  # an answer of newlines is visible
    # Negative control: the same row put in unescaped is caught.
    assert raw_markup(f"<td>{HOSTILE}</td>")


def test_compare_table_has_both_runs_and_their_difference():
    a = report.Run("main", {}, EVAL, {}, [])
    b = report.Run("exp-2", {}, {**EVAL, "tuned.eval_loss": 1.5}, {}, [])
    columns = report.compare_columns(a, b)
    rows = {row[0]: row[1:] for row in report.table_rows(columns)}
    assert [label for label, _ in columns][-1] == "tuned: exp-2 - main"
    assert rows["eval_loss"] == [2.5, 2.0, 2.5, 1.5, -0.5]


def test_compare_pairs_answers_by_prompt_not_row_number():
    no_curves = {t: {} for t in report.CURVES}
    a = report.Run("main", no_curves, EVAL, {}, [{"row": 0, "prompt": "What is APR?", "tuned_output": "a rate"},
                                          {"row": 1, "prompt": "Define equity.", "tuned_output": "ownership"}])
    b = report.Run("seed-7", no_curves, EVAL, {}, [{"row": 0, "prompt": "Define equity.", "tuned_output": "a stake"},
                                            {"row": 1, "prompt": "What is a bond?", "tuned_output": "a loan"}])
    page = report.compare_page(a, b)
    equity = page[page.index("Define equity."):]
    assert equity.index("a stake") < equity.index("</tr>")  # b's answer to the same prompt, in the same row
    assert "a loan" not in page  # a prompt only b sampled has no row of a's to go in
    apr = page[page.index("What is APR?"):]
    assert "a stake" not in apr[:apr.index("</tr>")]  # control: by row number, b's row 0 would sit here


# ---------------------------------------------------------------- charts


def test_a_chart_is_the_same_bytes_every_time(monkeypatch):
    lines = [("", "train", [(1.0, 3.0), (2.0, 2.0)]), ("", "eval", [(2.0, 2.5)])]
    assert report.curve_svg("Loss", lines) == report.curve_svg("Loss", lines)
    monkeypatch.setattr(report, "SVG_RC", {})  # negative control: matplotlib's random ids come back
    assert report.curve_svg("Loss", lines) != report.curve_svg("Loss", lines)


def test_token_lengths_count_the_chat_template(tiny_tokenizer):
    frame = pd.DataFrame({"instruction": ["What is a bond?", "Define equity."], "input": ["", "in finance"],
                          "output": ["A loan to an issuer.", "Ownership."]})
    lengths = prompts.token_lengths(tiny_tokenizer, frame).tolist()  # what the report plots
    expected, plain = [], []
    for c in prompts.conversations(frame):
        text = tiny_tokenizer.apply_chat_template(c["prompt"] + c["completion"], tokenize=False)
        expected.append(len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]))
        plain.append(len(tiny_tokenizer(c["prompt"][0]["content"] + c["completion"][0]["content"])["input_ids"]))
    assert lengths == expected
    assert all(a > b for a, b in zip(lengths, plain))  # the template's turns are counted


# ---------------------------------------------------------------- the stage, by hand-made inputs

CURVE_VALUES = {"loss": [(1, 3.0), (2, 2.5), (3, 2.25), (4, 2.0)],
                "mean_token_accuracy": [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.35)],
                "entropy": [(1, 5.0), (2, 4.5), (3, 4.0), (4, 3.5)],
                "learning_rate": [(1, 1e-3), (2, 7.5e-4), (3, 5e-4), (4, 2.5e-4)]}


def write_inputs(root: Path, scale: float = 1.0) -> None:
    """What train / evaluate / merge would have written, by hand (values scaled for a second run)."""
    for name, rows in CURVE_VALUES.items():
        scaled = [(s, v * scale) for s, v in rows]
        (root / LIVE / "eval").mkdir(parents=True, exist_ok=True)
        (root / LIVE / f"{name}.tsv").write_text(tsv(name, scaled))
        if name != "learning_rate":
            (root / LIVE / "eval" / f"{name}.tsv").write_text(tsv(name, [scaled[1], scaled[3], scaled[3]]))
    evaluation = {**EVAL, "tuned.eval_loss": 2.0 * scale}
    (root / report.EVAL_METRICS).write_text(json.dumps(evaluation))
    (root / report.MERGE_METRICS).write_text(json.dumps({"max_abs_logit_diff": 1e-7, "merged.eval_loss": 2.125}))
    samples = [{"row": i, "prompt": f"{HOSTILE} {i}", "reference": "ref", "base_output": "\n" * 8,
                "tuned_output": f"answer {i} at {scale}"} for i in range(3)]
    (root / report.SAMPLES).write_text("".join(json.dumps(s) + "\n" for s in samples))


@pytest.fixture(scope="module")
def staged(tmp_path_factory, tiny_base):
    """A project with hand-made inputs; the report stage run by `dvc repro -s report`."""
    project = make_project(tmp_path_factory.mktemp("report"))
    write_inputs(project)
    train = pd.read_parquet(REPO / "data/raw/finance_alpaca.parquet").dropna(subset=["output"]).head(30)
    (project / "data/processed").mkdir(parents=True)
    train.astype("string").to_parquet(project / report.TRAIN_DATA, index=False)
    shutil.copytree(tiny_base, project / report.BASE_DIR)
    result = dvc("repro", "-s", "report", cwd=project)
    assert "Running stage 'report'" in result.stdout
    return project


@pytest.mark.slow
def test_stage_writes_one_self_contained_page(staged):
    page = (staged / report.OUT).read_text()
    uris = images(page)
    assert len(uris) == len(report.CURVES) + 2  # curves, token lengths, base vs tuned
    for uri in uris:
        assert svg_root(uri).tag.endswith("svg")
    assert not re.search(r"<(script|link|iframe|object)\b|@import|url\(|\b(src|href)=\"(?!data:)", page)
    assert not raw_markup(page)
    assert metric_cells(page, "eval_loss") == ["2.5", "2", "-0.5", "2.125"]


@pytest.mark.slow
def test_stage_rerun_gives_the_same_bytes(staged, monkeypatch):
    monkeypatch.chdir(staged)
    report.main(["-o", "again.html"])  # in this process: another process, another matplotlib state
    assert (staged / "again.html").read_bytes() == (staged / report.OUT).read_bytes()


# ---------------------------------------------------------------- drawn, in headless Chromium

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not found (Debian: apt-get install chromium): the report is not checked in a browser")
WIDTH = 1200
# Appended to a copy of the page under test: after load, each image's decoded size and place.
PROBE = """<script>addEventListener("load", () => document.body.setAttribute("data-probe", JSON.stringify({
  height: document.documentElement.scrollHeight,
  images: [...document.images].map(i => { const r = i.getBoundingClientRect();
    return {w: i.naturalWidth, h: i.naturalHeight, box: [r.left, r.top, r.right, r.bottom]}; })})));</script>"""


def chromium(args: list[str], profile: Path) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


def drawn_images(page: Path, work: Path) -> list[dict]:
    """Each <img> as Chromium shows it: decoded size, and the share of non-white pixels in its box."""
    from PIL import Image

    probed = work / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(["--virtual-time-budget=10000", f"--window-size={WIDTH},2000", "--dump-dom", probed.as_uri()],
                   work / "profile")
    found = json.loads(re.search(r'data-probe="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    shot = work / "shot.png"
    chromium(["--virtual-time-budget=10000", f"--window-size={WIDTH},{found['height']}", f"--screenshot={shot}",
              page.as_uri()], work / "profile")
    pixels = Image.open(shot).convert("L")
    for image in found["images"]:
        box = tuple(round(x) for x in image["box"])
        crop = pixels.crop(box)
        area = max(crop.width * crop.height, 1)
        image["ink"] = sum(crop.histogram()[:200]) / area  # darker than light grey
    return found["images"]


def assert_charts_drawn(images_: list[dict], expected: int) -> None:
    assert len(images_) == expected
    for image in images_:
        assert image["w"] > 300 and image["h"] > 150, f"image not decoded: {image}"
        assert image["ink"] > 0.01, f"image blank on screen: {image}"


@pytest.mark.slow
@requires_chromium
def test_chromium_draws_every_chart(staged, tmp_path):
    assert_charts_drawn(drawn_images(staged / report.OUT, tmp_path), len(report.CURVES) + 2)


BLANK_SVG = base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="360">'
                             b'<rect width="100%" height="100%" fill="white"/></svg>').decode()


@pytest.mark.slow
@requires_chromium
@pytest.mark.parametrize("breakage", ["corrupt data URI", "blank image"])
def test_chromium_check_fails_on_a_broken_page(staged, tmp_path, breakage):
    page = (staged / report.OUT).read_text()
    first = images(page)[0]
    bad = first[:40] + "!!not-base64!!" if breakage == "corrupt data URI" else "data:image/svg+xml;base64," + BLANK_SVG
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace(first, bad, 1))
    with pytest.raises(AssertionError, match="image not decoded" if breakage == "corrupt data URI" else "blank"):
        assert_charts_drawn(drawn_images(broken, tmp_path), len(report.CURVES) + 2)


# ---------------------------------------------------------------- two experiments

FAKE_TRAIN = textwrap.dedent("""\
    # Stands in for train + evaluate: writes the report's inputs, scaled by params' lr.
    import json, sys, yaml
    sys.path.insert(0, {tests!r})
    sys.path.append({repo!r})  # benchmarks, which the tests' helpers import; stages stays this copy's
    from test_report import write_inputs
    from pathlib import Path
    write_inputs(Path("."), scale=yaml.safe_load(open("params.yaml"))["lr"])
""")


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """A git+dvc repo whose one stage writes the report's inputs, run at lr=1 (committed) and lr=0.5 (an
    experiment named half), with the project's own `plots:` definitions."""
    root = tmp_path_factory.mktemp("experiments")
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "requirements.txt", root)
    (root / "fake_train.py").write_text(FAKE_TRAIN.format(tests=str(REPO / "tests"), repo=str(REPO)))
    (root / "params.yaml").write_text("lr: 1.0\n")
    pipeline = {"stages": {"fake_train": {
        "cmd": "python fake_train.py", "deps": ["fake_train.py"], "params": ["lr"],
        "outs": ["metrics/train_live", report.SAMPLES, report.MERGE_METRICS], "metrics": [report.EVAL_METRICS]}},
        "plots": yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (root / "metrics").mkdir()
    run(["git", "init", "-q"], cwd=root)
    dvc("init", "-q", cwd=root)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")  # the samples table's template
    dvc("repro", cwd=root)
    run(["git", "add", "-A"], cwd=root)
    run(["git", "commit", "-qm", "lr 1"], cwd=root)
    dvc("exp", "run", "-n", "half", "-S", "lr=0.5", cwd=root)
    return root


def line_colours(svg: ET.Element) -> set[str]:
    styles = " ".join(e.get("style", "") for e in svg.iter() if e.tag.endswith("path"))
    return set(re.findall(r"stroke: (#1f77b4|#ff7f0e)", styles))  # matplotlib's C0 and C1


@pytest.mark.slow
def test_compare_overlays_two_experiments(experiments, monkeypatch):
    monkeypatch.chdir(experiments)
    report.main(["--compare", "HEAD", "half", "-o", "cmp.html"])
    page = (experiments / "cmp.html").read_text()
    uris = images(page)
    assert len(uris) == len(report.CURVES) + 1
    assert line_colours(svg_root(uris[0])) == {"#1f77b4", "#ff7f0e"}  # loss: one colour per experiment
    assert metric_cells(page, "eval_loss") == ["2.5", "2", "2.5", "1", "-1"]
    assert "answer 0 at 1.0" in page and "answer 0 at 0.5" in page
    # Negative control: one run's page draws its loss in one colour.
    files = lambda path: (experiments / path).read_text() if (experiments / path).is_file() else None  # noqa: E731
    single = report.run_page(report.load_run(files, ""), [], 64)
    assert line_colours(svg_root(images(single)[0])) == {"#1f77b4"}


@pytest.mark.slow
def test_compare_with_an_unknown_revision_fails_by_name(experiments, monkeypatch):
    monkeypatch.chdir(experiments)
    with pytest.raises(errors.StageError, match="--compare no-such-exp: unknown Git revision"):
        report.main(["--compare", "HEAD", "no-such-exp"])


@pytest.mark.slow
def test_dvc_plots_diff_overlays_the_experiments_with_the_project_definitions(experiments):
    data = json.loads(dvc("plots", "diff", "HEAD", "half", "--json", cwd=experiments).stdout)["data"]
    for title in report.CURVES:
        (plot,) = data[title]
        assert plot["revisions"] == ["HEAD", "half"]
        values = plot["content"]["data"]["values"]
        assert {row["rev"] for row in values} == {"HEAD", "half"}, title
    losses = {(r["rev"], r["step"]): float(r["loss"]) for r in data["Loss"][0]["content"]["data"]["values"]
              if r.get("filename") == "loss.tsv"}
    assert losses[("half", "1")] == losses[("HEAD", "1")] / 2
