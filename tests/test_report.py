"""`ltrec report` on two tiny real runs (plain vs +GA+AT): the page shows `ltrec eval`'s own numbers,
embeds its images, reaches for nothing online, and renders in headless Chromium."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import write_long_tailed
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.evaluation.report import METRICS, fmt

runner = CliRunner()
TINY = [
    "--set",
    "backbone.dim=16",
    "--set",
    "train.epochs=2",
    "--set",
    "data.max_len=20",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.patience=5",
]
GA_AT = ["--set", "transfer={grad_align: {k: 2, users_per_step: 4, sampling: uniform}, adversarial: {}}"]


def ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    csv = write_long_tailed(folder / "events.csv")
    ok(["init", folder / "proj", "--data", csv])
    runs = [folder / "runs" / "plain", folder / "runs" / "gaat"]
    ok(["train", folder / "proj" / "recipe.yaml", *TINY, "--out", runs[0]])
    ok(["train", folder / "proj" / "recipe.yaml", *TINY, *GA_AT, "--out", runs[1]])
    out = ok(["report", *runs, "--out", folder / "report.html"])
    assert f"wrote {folder / 'report.html'}" in out
    return runs, folder / "report.html"


def slice_rows(page: str) -> dict[tuple[str, str], list[str]]:
    """(slice, metric) → the cells after them in the page's slice table."""
    rows = re.findall(r"<tr><td>(all|head|tail|cold)</td><td>([a-z]+@\d+)</td>(.*?)</tr>", page)
    return {(s, m): re.findall(r"<td>(.*?)</td>", rest) for s, m, rest in rows}


def test_report_shows_eval_numbers(report):
    runs, path = report
    page = path.read_text(encoding="utf-8")
    rows = slice_rows(page)
    for j, run in enumerate(runs):
        evaluated = json.loads(ok(["eval", run, "--json"]))["slices"]
        assert {s for s, _ in rows} == set(evaluated)
        for name, table in evaluated.items():
            for metric in METRICS:
                cells = rows[(name, metric)]
                assert cells[0] == str(table["users"])
                assert cells[1 + j] == fmt(table[metric]), (run.name, name, metric)
    assert re.search(r"<td>[+-]\d\.\d{4} \([+-]\d+\.\d%, p[=<][\d.]+\)</td>", page)  # Δ and p against run 1


def test_report_has_no_nan_cells(report):
    _, path = report
    assert ">nan<" not in path.read_text(encoding="utf-8")


def test_report_is_self_contained(report):
    runs, path = report
    page = path.read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)
    assert len(images) == 4, images  # histogram, long-tail curve, one training figure per run
    assert "training curves and discriminator accuracy: gaat" in images
    assert "training curves: plain" in images
    assert not re.search(r"https?:", page, re.I) and "<script" not in page.lower()
    assert "gaat (sasrec +GA +AT)" in page and "grad_align:" in page and "users_per_step: 4" in page
    threshold = json.loads((runs[0] / "data.json").read_text())["head_threshold"]
    assert f"head/tail threshold {threshold} training events" in page


def test_long_tail_buckets_from_per_user_file(report):
    runs, path = report
    lines = (runs[0] / "users_test.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    ones = [float(r["ndcg@10"]) for r in rows if r["slice"] != "cold" and r["train_events"] == "1"]
    page = path.read_text(encoding="utf-8")
    assert f"<tr><td>1</td><td>{len(ones):,}</td><td>{fmt(np.mean(ones))}</td>" in page


def test_report_user_errors(tmp_path, report):
    runs, _ = report
    r = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such run directory" in r.output
    half = tmp_path / "half"
    half.mkdir()
    for name in ("recipe.yaml", ".ltrec-run.json"):
        shutil.copy(runs[0] / name, half / name)
    r = runner.invoke(app, ["report", str(runs[0]), str(half), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "users_test.csv: missing; run `ltrec eval" in r.output
    assert not (tmp_path / "r.html").exists()


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and under CI this test must run (.ci/run installs it)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI installs and runs it")
    from matplotlib.image import imread

    _, path = report
    shot = tmp_path / "shot.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        path.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.exists(), done.stderr[-2000:]
    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels.min(axis=2) < 0.9).mean() > 0.03  # text, tables and plots, not a blank page
    for colour in ("#1f77b4", "#d62728"):  # the two runs' lines on the long-tail curve
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
        assert (np.abs(pixels - rgb).max(axis=2) < 0.1).sum() > 200, colour


def test_empty_activity_buckets_are_left_out_and_the_histogram_starts_at_the_least_active_user():
    from ltrec.evaluation.report import buckets, long_tail

    run = {
        "slices": np.array(["tail"] * 4 + ["head"] * 2),
        "events": np.array([20, 21, 25, 30, 60, 70]),
        "per_user": {"ndcg@10": np.linspace(0, 0.5, 6), "hr@10": np.ones(6)},
    }
    rows = long_tail(run, buckets(50))
    assert [r["label"] for r in rows if r["users"]] == ["20-49", "50+"]
    assert all(r["users"] == 0 for r in rows if r["label"] not in ("20-49", "50+"))  # the page drops these
