"""`python -m stages.report`: the page from hand-made inputs under `dvc repro`, the same bytes on a rerun, drawn in
headless Chromium, and two experiments compared (`--compare` and `dvc plots diff`)."""

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

from finetune import paths
from finetune.report import page, runs
from helpers import REPO, dvc, make_project, run, stage
from pages import images, metric_cells, raw_markup, svg_root, write_inputs

CURVES = runs.curve_files(str(REPO / "dvc.yaml"))
CHARTS = len(CURVES) + 3  # curves, token lengths, base vs tuned, tuned - base with intervals


@pytest.fixture(scope="module")
def staged(tmp_path_factory, tiny_base):
    """A project with hand-made inputs; the report stage run by `dvc repro -s report`."""
    project = make_project(tmp_path_factory.mktemp("report"))
    write_inputs(project)
    train = pd.read_parquet(REPO / "data/raw/finance_alpaca.parquet").dropna(subset=["output"]).head(30)
    (project / "data/processed").mkdir(parents=True)
    train.astype("string").to_parquet(project / paths.TRAIN_DATA, index=False)
    shutil.copytree(tiny_base, project / paths.BASE_DIR)
    stage("check_params", project)  # models/params_ok.json, a dep of every stage
    result = dvc("repro", "-s", "report", cwd=project)
    assert "Running stage 'report'" in result.stdout
    return project


def test_stage_writes_one_self_contained_page(staged):
    html = (staged / paths.REPORT).read_text()
    uris = images(html)
    assert len(uris) == CHARTS
    for uri in uris:
        assert svg_root(uri).tag.endswith("svg")
    assert not re.search(r"<(script|link|iframe|object)\b|@import|url\(|\b(src|href)=\"(?!data:)", html)
    assert not raw_markup(html)
    assert metric_cells(html, "eval_loss") == ["2.5", "2", "-0.5", "2.125"]


def test_stage_rerun_gives_the_same_bytes(staged):
    stage("report", staged, args=["-o", "again.html"])  # another process, another matplotlib state
    assert (staged / "again.html").read_bytes() == (staged / paths.REPORT).read_bytes()


# ---------------------------------------------------------------- drawn, in headless Chromium

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not found (Debian: apt-get install chromium): the report is not checked in a browser",
)
WIDTH = 1200
# Appended to a copy of the page under test: after load, each image's decoded size and place.
PROBE = """<script>addEventListener("load", () => document.body.setAttribute("data-probe", JSON.stringify({
  height: document.documentElement.scrollHeight,
  images: [...document.images].map(i => { const r = i.getBoundingClientRect();
    return {w: i.naturalWidth, h: i.naturalHeight, box: [r.left, r.top, r.right, r.bottom]}; })})));</script>"""


def chromium(args: list[str], profile: Path) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


def drawn_images(html: Path, work: Path) -> list[dict]:
    """Each <img> as Chromium shows it: decoded size, and the share of non-white pixels in its box."""
    from PIL import Image

    probed = work / "probed.html"
    probed.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(
        ["--virtual-time-budget=10000", f"--window-size={WIDTH},2000", "--dump-dom", probed.as_uri()], work / "profile"
    )
    found = json.loads(re.search(r'data-probe="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    shot = work / "shot.png"
    chromium(
        [
            "--virtual-time-budget=10000",
            f"--window-size={WIDTH},{found['height']}",
            f"--screenshot={shot}",
            html.as_uri(),
        ],
        work / "profile",
    )
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


@requires_chromium
def test_chromium_draws_every_chart(staged, tmp_path):
    assert_charts_drawn(drawn_images(staged / paths.REPORT, tmp_path), CHARTS)


BLANK_SVG = base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="360">'
    b'<rect width="100%" height="100%" fill="white"/></svg>'
).decode()


@requires_chromium
@pytest.mark.parametrize("breakage", ["corrupt data URI", "blank image"])
def test_chromium_check_fails_on_a_broken_page(staged, tmp_path, breakage):
    html = (staged / paths.REPORT).read_text()
    first = images(html)[0]
    bad = first[:40] + "!!not-base64!!" if breakage == "corrupt data URI" else "data:image/svg+xml;base64," + BLANK_SVG
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace(first, bad, 1))
    with pytest.raises(AssertionError, match="image not decoded" if breakage == "corrupt data URI" else "blank"):
        assert_charts_drawn(drawn_images(broken, tmp_path), CHARTS)


# ---------------------------------------------------------------- two experiments

FAKE_TRAIN = textwrap.dedent("""\
    # Stands in for train + evaluate: writes the report's inputs, scaled by params' lr.
    import sys, yaml
    sys.path.insert(0, {tests!r})  # tests/pages.py; finetune stays this copy's
    from pages import write_inputs
    from pathlib import Path
    write_inputs(Path("."), scale=yaml.safe_load(open("params.yaml"))["lr"])
""")


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """A git+dvc repo whose one stage writes the report's inputs, run at lr=1 (committed) and lr=0.5 (an
    experiment named half), with the project's own `plots:` definitions."""
    root = tmp_path_factory.mktemp("experiments")
    for code in ("stages", "finetune"):
        shutil.copytree(REPO / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "requirements.txt", root)
    (root / "fake_train.py").write_text(FAKE_TRAIN.format(tests=str(REPO / "tests")))
    (root / "params.yaml").write_text("lr: 1.0\n")
    pipeline = {
        "stages": {
            "fake_train": {
                "cmd": "python fake_train.py",
                "deps": ["fake_train.py"],
                "params": ["lr"],
                "outs": ["metrics/train_live", paths.SAMPLES, paths.MERGE_METRICS, paths.EVAL_ROWS],
                "metrics": [paths.EVAL_METRICS],
            }
        },
        "plots": yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"],
    }
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


def test_compare_overlays_two_experiments(experiments):
    stage("report", experiments, args=["--compare", "HEAD", "half", "-o", "cmp.html"])
    html = (experiments / "cmp.html").read_text()
    uris = images(html)
    assert len(uris) == len(CURVES) + 1
    assert line_colours(svg_root(uris[0])) == {"#1f77b4", "#ff7f0e"}  # loss: one colour per experiment
    assert metric_cells(html, "eval_loss") == ["2.5", "2", "2.5", "1", "-1"]
    assert "answer 0 at 1.0" in html and "answer 0 at 0.5" in html
    # Negative control: one run's page draws its loss in one colour.
    files = lambda path: (experiments / path).read_text() if (experiments / path).is_file() else None  # noqa: E731
    single = page.run_page(runs.load_run(files, "", CURVES), CURVES, [], 64)
    assert line_colours(svg_root(images(single)[0])) == {"#1f77b4"}


def test_compare_gives_the_paired_interval_from_each_revisions_rows(experiments):
    result = stage(
        "report", experiments, args=["--compare", "HEAD", "half", "--seeds", "HEAD", "half", "-o", "cmp.html"]
    )
    # half's rows (lr 0.5) have half the loss of HEAD's, read from the DVC cache of each revision
    assert re.search(
        r"eval_loss: -0\.99\d* \[-1\.\d+, -0\.8\d+\] half lower than HEAD; across 2 seeds sd 0.707, range 1",
        result.stdout,
    ), result.stdout
    section = (experiments / "cmp.html").read_text().split("Is the difference real?")[1]
    assert metric_cells(section, "eval_loss")[3] == "half lower than HEAD"
    # Control: a revision against itself: an interval of [0, 0] and no detectable difference.
    same = stage("report", experiments, args=["--compare", "half", "half", "-o", "same.html"])
    assert "eval_loss: +0 [+0, +0] no detectable difference" in same.stdout, same.stdout


def test_compare_with_an_unknown_revision_fails_by_name(experiments):
    result = stage("report", experiments, check=False, args=["--compare", "HEAD", "no-such-exp"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(r"^report: error: --compare no-such-exp: unknown Git revision", result.stderr, re.M), result.stderr


def test_dvc_plots_diff_overlays_the_experiments_with_the_project_definitions(experiments):
    data = json.loads(dvc("plots", "diff", "HEAD", "half", "--json", cwd=experiments).stdout)["data"]
    for title in CURVES:
        (plot,) = data[title]
        assert plot["revisions"] == ["HEAD", "half"]
        values = plot["content"]["data"]["values"]
        assert {row["rev"] for row in values} == {"HEAD", "half"}, title
    losses = {
        (r["rev"], r["step"]): float(r["loss"])
        for r in data["Loss"][0]["content"]["data"]["values"]
        if r.get("filename") == "loss.tsv"
    }
    assert losses[("half", "1")] == losses[("HEAD", "1")] / 2
