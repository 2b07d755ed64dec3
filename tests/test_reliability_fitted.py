"""The fitted ensemble, the settings it was fitted with, stored negatives and export's parity check: a damaged,
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
ENSEMBLE = "{ensemble: {weights: [0.0, 1.0], members: [{kind: pop}, {kind: transitions, neighbours: 5}]}}"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fitted")
    events = write_events(folder / "events.csv", users=60)
    blended = train_run(folder, events, "gru4rec", epochs=1, dim=8, max_len=20, name="blended", evaluation=ENSEMBLE)
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


ENS = "ensemble.json"
SECTION = ("settings", "eval", "ensemble")


def first_weight(value):
    return put("weights", value=lambda w: [[value, *w[0][1:]], *w[1:]])


DAMAGE = [  # (id, file, edit, message)
    ("nan-weight", ENS, edited(first_weight(float("nan"))), "weights.0.0: Input should be a finite number"),
    ("inf-weight", ENS, edited(first_weight(float("inf"))), "weights.0.0: Input should be a finite number"),
    (
        "negative-weight",
        ENS,
        edited(first_weight(-1.0)),
        "weights.0.0: Input should be greater than or equal to 0 (got -1.0)",
    ),
    (
        "weight-not-a-candidate",
        ENS,
        edited(first_weight(0.5)),
        "weight 0.5 is not one of the candidates [0.0, 1.0] a fit chooses from",
    ),
    (
        "bucket-missing",
        ENS,
        edited(put("weights", value=lambda w: w[:-1])),
        "(top level): weights: expected 7 rows (one per bucket) of 3 (one per member)",
    ),
    (
        "member-weight-missing",
        ENS,
        edited(put("weights", value=lambda w: [row[:-1] for row in w])),
        "(top level): weights: expected 7 rows (one per bucket) of 3 (one per member)",
    ),
    ("weights-text", ENS, edited(put("weights", value="high")), "weights: Input should be a valid array (got 'high')"),
    (
        "decreasing-edges",
        ENS,
        edited(both(put("edges", value=[5, 3]), put(*SECTION, "edges", value=[5, 3]))),
        "settings.eval.ensemble: edges must increase (got [5, 3])",
    ),
    (
        "edges-not-the-settings",
        ENS,
        edited(put("edges", value=[2, 3, 5, 8, 13, 22])),
        "edges [2, 3, 5, 8, 13, 22] differ from the settings' [2, 3, 5, 8, 13, 21]",
    ),
    (
        "edge-zero",
        ENS,
        edited(put("edges", value=lambda e: [0, *e[1:]])),
        "edges.0: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "members-not-the-settings",
        ENS,
        edited(put("members", value=["model", "ease", "transitions"])),
        "members ['model', 'ease', 'transitions'] differ from the settings' ['model', 'pop', 'transitions']",
    ),
    (
        "member-kind-unknown",
        ENS,
        edited(put(*SECTION, "members", value=[{"kind": "sideways"}, {"kind": "transitions"}])),
        "settings.eval.ensemble.members.0: Input tag 'sideways' found using 'kind' does not match",
    ),
    (
        "window-nan",
        ENS,
        edited(put(*SECTION, "members", 1, "window", value=float("nan"))),
        "settings.eval.ensemble.members.1.transitions.window: Input should be a valid integer",
    ),
    (
        "neighbours-negative",
        ENS,
        edited(put(*SECTION, "members", 1, "neighbours", value=-5)),
        "settings.eval.ensemble.members.1.transitions.neighbours: Input should be greater than or equal to 1 (got -5)",
    ),
    ("settings-missing", ENS, edited(drop("settings")), "settings: Field required"),
    ("own-section-missing", ENS, edited(put(*SECTION, value=None)), "settings.eval.ensemble: Input should be"),
    (
        "metric-not-a-metric",
        ENS,
        edited(put("settings", "train", "monitor", "metric", value="auc")),
        "settings.train.monitor.metric: String should match pattern",
    ),
    ("valid-above-one", ENS, edited(put("valid", value=2.0)), "valid: Input should be less than or equal to 1"),
    (
        "checkpoint-without-a-run-member",
        ENS,
        edited(put("checkpoints", value=["0123456789abcdef"])),
        "checkpoints: expected 0 (one per run member), got 1",
    ),
    ("unknown-key", ENS, edited(put("note", value=1)), "note: Extra inputs are not permitted"),
    (
        "no-format",
        ENS,
        edited(drop("format")),
        "not a fitted ensemble written by this ltrec; refit it: `ltrec eval ",
    ),
    (
        "newer-format",
        ENS,
        edited(put("format", value=3)),
        "written by a newer ltrec (format 3, this ltrec reads 2); upgrade ltrec or refit it: `ltrec eval ",
    ),
    ("not-json", ENS, raw(b"{"), "ensemble.json: not valid JSON"),
    ("empty", ENS, raw(b""), "ensemble.json: not valid JSON"),
    ("a-list", ENS, raw(b"[1, 2]"), "ensemble.json: (top level): Input should be an object"),
    ("not-utf8", ENS, raw(b'{"format": "\xff"}'), "ensemble.json: "),
]


@pytest.mark.parametrize("name, edit, message", [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_a_damaged_fitted_ensemble_is_refused_at_export(base, tmp_path, name, edit, message):
    run = copy(base, tmp_path, "blended")
    edit(run / name)
    line = fails(["export", run, "--out", tmp_path / "bundle"], f"{run / name}: ", message)
    assert "ltrec eval" in line and not (tmp_path / "bundle").exists()


MISMATCH = [  # (--set, key, fitted, asked)
    (
        "eval.ensemble.members=[{kind: pop}, {kind: transitions, neighbours: 7}]",
        "eval.ensemble.members",
        '"neighbours": 5}]',
        '"neighbours": 7}]',
    ),
    ("eval.ensemble.edges=[2, 4]", "eval.ensemble.edges", "[2, 3, 5, 8, 13, 21]", "[2, 4]"),
    ("eval.ensemble.weights=[0.0, 3.0]", "eval.ensemble.weights", "[0.0, 1.0]", "[0.0, 3.0]"),
    ("eval.ensemble.rounds=1", "eval.ensemble.rounds", "2", "1"),
    ("eval.mask_seen=false", "eval.mask_seen", "true", "false"),
]


@pytest.mark.parametrize("override, key, fitted, asked", MISMATCH, ids=[m[1] for m in MISMATCH])
def test_export_under_other_settings_than_the_fit_is_refused(base, tmp_path, override, key, fitted, asked):
    run = base["blended"]
    fails(
        ["export", run, "--out", tmp_path / "bundle", "--set", override],
        f"{key}: the ensemble was fitted with ",
        f"{fitted} but the recipe (with any --set) says ",
        f"{asked}; refit it with these settings (`ltrec eval ",
        "or pass the fitted ones (--set ",
    )
    assert not (tmp_path / "bundle").exists()


def test_an_ensemble_refitted_under_other_settings_exports_only_with_them(base, tmp_path):
    run = copy(base, tmp_path, "blended")
    ok(["eval", run, "--set", "eval.ensemble.edges=[3]"])  # refits and saves under edges [3]
    fails(
        ["export", run, "--out", tmp_path / "b"],
        "eval.ensemble.edges: the ensemble was fitted with [3] but the recipe (with any --set) says",
        f"(`ltrec eval {run}`)",
        "(--set 'eval.ensemble.edges=[3]')",
    )
    ok(["export", run, "--out", tmp_path / "b", "--set", "eval.ensemble.edges=[3]"])  # the advice works
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["ensemble"]["settings"]["eval"]["ensemble"]["edges"] == [3]


def test_parity_sees_nan():
    """NaN compares unequal to everything, so a check that only measures |a - b| reports 0 for NaN."""
    from ltrec.deploy.export import TopKScorer, check_parity, to_onnx
    from ltrec.ensemble.scores import Ensemble
    from ltrec.models import BACKBONES

    torch.manual_seed(0)
    backbone = BACKBONES["gru4rec"](9, 4, dim=4).eval()
    history = np.array([[0, 0, 1, 2], [3, 4, 5, 6]], np.int64)
    pop = BACKBONES["pop"](9, 4)
    pop.counts.copy_(torch.arange(9.0))
    for weights, finite in (([[1.0, 0.5], [1.0, 0.5]], True), ([[1.0, float("nan")], [1.0, 0.5]], False)):
        ensemble = Ensemble([pop], ["pop"], torch.tensor([3]), torch.tensor(weights))
        scorer = TopKScorer(backbone, 3, ensemble).eval()
        parity = check_parity(to_onnx(scorer, 4, {}), scorer, history, np.array([7, 8]), 3)
        assert np.isfinite(parity["max_score_diff"]) == finite, parity


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


@pytest.mark.parametrize("name", ["blended", "sampled"])  # the ensemble's fit evaluates validation first
def test_more_sampled_negatives_than_a_user_has_items_is_a_recipe_error(base, name):
    fails(
        ["eval", base[name], "--set", "eval.mode=sampled", "--set", "eval.negatives=1000"],
        "eval.negatives: 1000 negatives per user, but some user has only ",
        "items besides the target and history (95 items in all); lower eval.negatives (e.g. --set eval.negatives=",
    )


def test_the_catalogue_is_broad():
    assert len(DAMAGE) >= 25 and len(MISMATCH) >= 5 and len(NEGATIVES) >= 9
