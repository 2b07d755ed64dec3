"""Fitted blends, the settings they were fitted with, stored negatives and export's parity check: a damaged,
edited or mismatched file is a one-line error (exit 2) naming the file and key, through the real CLI.

Bundles (`bundle.json`, `model.onnx`) are damaged in tests/test_reliability_inference.py.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import ok, train_run, write_events
from typer.testing import CliRunner

from ltrec.cli import app

runner = CliRunner()
BLENDS = "{pop_blend: {weights: [0.0, 1.0]}, transition_blend: {weights: [0.0, 1.0], neighbours: 5}}"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fitted")
    events = write_events(folder / "events.csv", users=60)
    blended = train_run(folder, events, "gru4rec", epochs=1, dim=8, max_len=20, name="blended", evaluation=BLENDS)
    sampled = train_run(folder, events, "pop", max_len=20, name="sampled", evaluation="{mode: sampled, negatives: 5}")
    return {"blended": blended, "sampled": sampled}


def copy(base, tmp_path, name) -> Path:
    shutil.copytree(base[name], tmp_path / name)
    return tmp_path / name


def fails(args, *expected) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    for text in expected:
        assert text in lines[0], r.output
    return lines[0]


def edited(change):
    def edit(path: Path) -> None:
        saved = json.loads(path.read_text())
        change(saved)
        path.write_text(json.dumps(saved))

    return edit


def raw(data: bytes):
    return lambda path: path.write_bytes(data)


def put(*keys, value):
    def change(saved):
        node = saved
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value(node[keys[-1]]) if callable(value) else value

    return change


def drop(key):
    return lambda saved: saved.pop(key)


def both(*changes):
    return lambda saved: [change(saved) for change in changes]


POP, TRANS = "pop_blend.json", "transition_blend.json"
BLEND = ("settings", "eval")
DAMAGE = [  # (id, file, edit, message)
    *(
        (
            f"{f}-nan-weight",
            f,
            edited(put("weights", value=lambda w: [float("nan"), *w[1:]])),
            "weights.0: Input should be a finite number",
        )
        for f in (POP, TRANS)
    ),
    *(
        (
            f"{f}-inf-weight",
            f,
            edited(put("weights", value=lambda w: [float("inf"), *w[1:]])),
            "weights.0: Input should be a finite number",
        )
        for f in (POP, TRANS)
    ),
    *(
        (
            f"{f}-negative-weight",
            f,
            edited(put("weights", value=lambda w: [-1.0, *w[1:]])),
            "weights.0: Input should be greater than or equal to 0 (got -1.0)",
        )
        for f in (POP, TRANS)
    ),
    *(
        (
            f"{f}-weight-not-a-candidate",
            f,
            edited(put("weights", value=lambda w: [0.5, *w[1:]])),
            "weight 0.5 is not one of the candidates [0.0, 1.0] a fit chooses from",
        )
        for f in (POP, TRANS)
    ),
    *(
        (
            f"{f}-weight-missing",
            f,
            edited(put("weights", value=lambda w: w[:-1])),
            "(top level): 6 weights for 7 buckets (one per bucket)",
        )
        for f in (POP, TRANS)
    ),
    *(
        (
            f"{f}-weights-text",
            f,
            edited(put("weights", value="high")),
            "weights: Input should be a valid array (got 'high')",
        )
        for f in (POP, TRANS)
    ),
    (
        "pop-decreasing-edges",
        POP,
        edited(both(put("edges", value=[5, 3]), put(*BLEND, "pop_blend", "edges", value=[5, 3]))),
        "settings.eval.pop_blend: edges must increase (got [5, 3])",
    ),
    (
        "transition-decreasing-edges",
        TRANS,
        edited(put(*BLEND, "transition_blend", "edges", value=[5, 3])),
        "settings.eval.transition_blend: edges must increase (got [5, 3])",
    ),
    (
        "pop-edges-not-the-settings",
        POP,
        edited(put("edges", value=[2, 3, 5, 8, 13, 22])),
        "edges [2, 3, 5, 8, 13, 22] differ from the settings' [2, 3, 5, 8, 13, 21]",
    ),
    (
        "pop-edge-zero",
        POP,
        edited(put("edges", value=lambda e: [0, *e[1:]])),
        "edges.0: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "transition-direction-sideways",
        TRANS,
        edited(put("direction", value="sideways")),
        "direction: Input should be 'forward' or 'both'",
    ),
    (
        "transition-direction-not-a-candidate",
        TRANS,
        edited(both(put("direction", value="both"), put(*BLEND, "transition_blend", "directions", value=["forward"]))),
        "direction 'both' is not one of the candidates ['forward']",
    ),
    (
        "transition-window-nan",
        TRANS,
        edited(put(*BLEND, "transition_blend", "window", value=float("nan"))),
        "settings.eval.transition_blend.window: Input should be a valid integer",
    ),
    (
        "transition-neighbours-negative",
        TRANS,
        edited(put(*BLEND, "transition_blend", "neighbours", value=-5)),
        "settings.eval.transition_blend.neighbours: Input should be greater than or equal to 1 (got -5)",
    ),
    ("transition-settings-missing", TRANS, edited(drop("settings")), "settings: Field required"),
    (
        "pop-own-section-missing",
        POP,
        edited(put(*BLEND, "pop_blend", value=None)),
        "settings: the blend's own settings are missing",
    ),
    (
        "pop-metric-not-a-metric",
        POP,
        edited(put("settings", "train", "monitor", "metric", value="auc")),
        "settings.train.monitor.metric: String should match pattern",
    ),
    ("pop-unknown-key", POP, edited(put("note", value=1)), "note: Extra inputs are not permitted"),
    *(
        (
            f"{f}-legacy",
            f,
            edited(both(drop("settings"), drop("format"))),
            "written by an older ltrec, which did not record the settings a blend is fitted with; refit it: "
            "`ltrec eval ",
        )
        for f in (POP, TRANS)
    ),
    *(
        (
            f"{f}-newer-format",
            f,
            edited(put("format", value=2)),
            "written by a newer ltrec (format 2, this ltrec reads 1); upgrade ltrec or refit it: `ltrec eval ",
        )
        for f in (POP, TRANS)
    ),
    ("pop-not-json", POP, raw(b"{"), "pop_blend.json: not valid JSON"),
    ("pop-empty", POP, raw(b""), "pop_blend.json: not valid JSON"),
    ("transition-a-list", TRANS, raw(b"[1, 2]"), "transition_blend.json: (top level): Input should be an object"),
    ("transition-not-utf8", TRANS, raw(b'{"format": "\xff"}'), "transition_blend.json: "),
]


@pytest.mark.parametrize("name, edit, message", [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_a_damaged_fitted_blend_is_refused_at_export(base, tmp_path, name, edit, message):
    run = copy(base, tmp_path, "blended")
    edit(run / name)
    line = fails(["export", run, "--out", tmp_path / "bundle"], f"{run / name}: ", message)
    assert "ltrec eval" in line and not (tmp_path / "bundle").exists()


MISMATCH = [  # (--set, key, fitted, asked)
    ("eval.transition_blend.window=3", "eval.transition_blend.window", "5", "3"),
    ("eval.transition_blend.last=2", "eval.transition_blend.last", "5", "2"),
    ("eval.transition_blend.neighbours=7", "eval.transition_blend.neighbours", "5", "7"),
    ("eval.transition_blend.directions=[both]", "eval.transition_blend.directions", '["forward", "both"]', '["both"]'),
    ("eval.pop_blend.edges=[2, 4]", "eval.pop_blend.edges", "[2, 3, 5, 8, 13, 21]", "[2, 4]"),
    ("eval.pop_blend.weights=[0.0, 3.0]", "eval.pop_blend.weights", "[0.0, 1.0]", "[0.0, 3.0]"),
    ("eval.mask_seen=false", "eval.mask_seen", "true", "false"),
    ("eval.pop_blend=null", "eval.pop_blend", '{"edges": [2, 3, 5, 8, 13, 21], "weights": [0.0, 1.0]}', "null"),
]


@pytest.mark.parametrize("override, key, fitted, asked", MISMATCH, ids=[m[1] for m in MISMATCH])
def test_export_under_other_settings_than_the_fit_is_refused(base, tmp_path, override, key, fitted, asked):
    run = base["blended"]
    fails(
        ["export", run, "--out", tmp_path / "bundle", "--set", override],
        f"{key}: the blend was fitted with {fitted} but the recipe (with any --set) says {asked}",
        "refit it with these settings (`ltrec eval ",
        "or pass the fitted ones (--set ",
    )
    assert not (tmp_path / "bundle").exists()


def test_a_blend_refitted_under_other_settings_exports_only_with_them(base, tmp_path):
    run = copy(base, tmp_path, "blended")
    ok(["eval", run, "--set", "eval.transition_blend.window=3"])  # refits and saves under window 3
    fails(
        ["export", run, "--out", tmp_path / "b"],
        "eval.transition_blend.window: the blend was fitted with 3 but the recipe (with any --set) says 5",
        f"(`ltrec eval {run}`)",
        "(--set eval.transition_blend.window=3)",
    )
    ok(["export", run, "--out", tmp_path / "b", "--set", "eval.transition_blend.window=3"])  # the advice works
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["transition_blend"]["settings"]["eval"]["transition_blend"]["window"] == 3


def test_parity_sees_nan():
    """NaN compares unequal to everything, so a check that only measures |a - b| reports 0 for NaN."""
    from ltrec.blend.popularity import FittedPopBlend
    from ltrec.deploy.export import TopKScorer, check_parity, to_onnx
    from ltrec.models import BACKBONES

    torch.manual_seed(0)
    backbone = BACKBONES["gru4rec"](9, 4, dim=4).eval()
    history = np.array([[0, 0, 1, 2], [3, 4, 5, 6]], np.int64)
    for weights, finite in (([0.5, 0.5], True), ([float("nan"), 0.5], False)):
        scorer = TopKScorer(backbone, 3, FittedPopBlend(torch.tensor([3]), torch.tensor(weights), torch.ones(9))).eval()
        parity = check_parity(to_onnx(scorer, 4, {}), scorer, history, 3)
        assert np.isfinite(parity["max_abs_score_diff"]) == finite, parity


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def first_target(run: Path) -> int:
    from ltrec.runtime.build import load_run

    recipe, seqs = load_run(run)
    return int(seqs.eval_inputs("test", recipe.data.max_len)[2][0])


NEGATIVES = [  # (id, change to the stored array or bytes, message)
    ("random-bytes", lambda a, run: np.random.default_rng(0).bytes(500), "not a stored negatives array"),
    ("truncated", lambda a, run: npy(a)[:-40], "not a stored negatives array"),
    ("floats", lambda a, run: a.astype(np.float64), "expected (60, 5) item ids, found (60, 5) float64"),
    ("one-column-short", lambda a, run: a[:, :-1], "expected (60, 5) item ids, found (60, 4) int64"),
    ("id-zero", lambda a, run: np.where(np.arange(a.size).reshape(a.shape) == 7, 0, a), "item ids outside 1..95"),
    (
        "id-past-the-catalogue",
        lambda a, run: np.where(np.arange(a.size).reshape(a.shape) == 7, 96, a),
        "item ids outside 1..95 (found 1..96)",
    ),
    (
        "the-target",
        lambda a, run: np.concatenate([np.full((len(a), 1), first_target(run)), a[:, 1:]], axis=1),
        "row 0 holds the user's target or an item of its history",
    ),
    ("an-item-twice", lambda a, run: np.concatenate([a[:, :1], a[:, :-1]], axis=1), "row 0 holds the same item twice"),
    ("huge", lambda a, run: npy(np.ones((60, 5000), np.int64)), "is larger than 1 MB"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in NEGATIVES], ids=[c[0] for c in NEGATIVES])
def test_stored_negatives_are_validated_on_load(base, tmp_path, change, message):
    run = copy(base, tmp_path, "sampled")
    path = run / "negatives_test_5.npy"
    data = change(np.load(path, allow_pickle=False), run)
    path.write_bytes(data if isinstance(data, bytes) else npy(data))
    fails(["eval", run], f"{path}: ", message)


@pytest.mark.parametrize("name", ["blended", "sampled"])  # the blends' fit evaluates validation first
def test_more_sampled_negatives_than_a_user_has_items_is_a_recipe_error(base, name):
    fails(
        ["eval", base[name], "--set", "eval.mode=sampled", "--set", "eval.negatives=1000"],
        "eval.negatives: 1000 negatives per user, but some user has only ",
        "items besides the target and history (95 items in all); lower eval.negatives (e.g. --set eval.negatives=",
    )


def test_the_catalogue_is_broad():
    assert len(DAMAGE) >= 30 and len(MISMATCH) >= 8 and len(NEGATIVES) >= 9
