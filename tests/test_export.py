"""ONNX bundles: parity with torch for every backbone, bundle.json, the exclude input, no half bundles.

Tiny models are trained through the real CLI once per module (about a second each).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ltrec.deploy.export
from ltrec.cli import app
from ltrec.runtime.build import build_model, load_run
from ltrec.runtime.checkpoint import load_torch

runner = CliRunner()
MUSIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-music" / "interactions.csv"
MAX_LEN = 50
NEW = ("caser", "narm", "bert4rec")  # each also goes train → eval → export → predict below


def write_events(path: Path, users: int = 200, items: int = 100, seed: int = 0) -> Path:
    """Zipf-like lengths (3..40, so eval's max_len window holds every history) and Zipf-like item popularity;
    users mostly walk item → item + 1. Item ids are strings ("i7") so vocab order is not id order."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    pop /= pop.sum()
    rows = ["user_id,item_id,timestamp"]
    for u in range(users):
        item = int(rng.choice(items, p=pop)) + 1
        for t in range(min(2 + int(rng.zipf(1.5)), 40)):
            rows.append(f"u{u},i{item},{1000 + t}")
            item = item % items + 1 if rng.random() < 0.7 else int(rng.choice(items, p=pop)) + 1
    path.write_text("\n".join(rows) + "\n")
    return path


def ok(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def train_run(
    folder: Path,
    csv: Path,
    kind: str,
    epochs: int = 2,
    dim: int = 16,
    max_len: int = MAX_LEN,
    transfer: str = "",
    extra: str = "",
    name: str = "",
    evaluation: str = "",
) -> Path:
    name = name or kind + ("-transfer" if transfer else "")
    recipe = folder / f"{name}.yaml"
    dims = (f", dim: {dim}" if kind != "pop" else "") + extra
    recipe.write_text(
        f"name: tiny-{kind}\ndata: {{source: {csv}, max_len: {max_len}}}\n"
        f"backbone: {{kind: {kind}{dims}}}\ntrain: {{epochs: {epochs}, batch_size: 64}}\n"
        + (f"transfer: {transfer}\n" if transfer else "")
        + (f"eval: {evaluation}\n" if evaluation else "")
    )
    ok(["train", recipe, "--out", folder / name])
    return folder / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    csv = write_events(folder / "events.csv")
    runs = {kind: train_run(folder, csv, kind) for kind in ("gru4rec", "sasrec", "pop", *NEW)}
    # the exported model is the backbone, whatever trained it
    both = "{grad_align: {k: 2, users_per_step: 8, sampling: uniform}, adversarial: {weight: 0.1}}"
    runs.update(
        {f"{kind}-transfer": train_run(folder, csv, kind, transfer=both) for kind in ("gru4rec", "sasrec", "bert4rec")}
    )  # bert4rec: its cloze loss under both components
    runs["sasrec-plain-input"] = train_run(
        folder, csv, "sasrec", extra=", input_norm: false", name="sasrec-plain-input"
    )
    branch = "{user_branch: {weight: 1.0}}"  # the head→tail map is inside the exported graph
    runs.update(
        {
            f"{kind}-branch": train_run(folder, csv, kind, transfer=branch, name=f"{kind}-branch")
            for kind in ("gru4rec", "sasrec")
        }
    )
    # the ensemble, fitted on validation, is inside the exported graph too
    runs["sasrec-ensemble"] = train_run(
        folder,
        csv,
        "sasrec",
        name="sasrec-ensemble",
        evaluation="{ensemble: {members: [{kind: pop}, {kind: transitions, neighbours: 5}, {kind: ease, l2: 10}]}}",
    )
    return runs


def n_items(run: Path) -> int:
    return load_run(run)[1].n_items


def session(bundle: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "kind",
    [
        "gru4rec",
        "sasrec",
        "pop",
        *NEW,
        "gru4rec-transfer",
        "sasrec-transfer",
        "bert4rec-transfer",
        "sasrec-plain-input",
        "gru4rec-branch",
        "sasrec-branch",
        "sasrec-ensemble",
    ],
)
def test_export_parity_and_bundle_json(runs, kind, tmp_path):
    import onnx

    run, bundle = runs[kind], tmp_path / "bundle"
    out = ok(["export", run, "--out", bundle, "--k", 10])
    assert "parity on 200 test histories" in out and "identical top-10 lists" in out
    assert sorted(os.listdir(bundle)) == ["bundle.json", "model.onnx"]  # one file, no external data
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temp folder left next to it
    onnx.checker.check_model(str(bundle / "model.onnx"), full_check=True)

    meta = json.loads((bundle / "bundle.json").read_text())
    recipe, seqs = load_run(run)
    assert meta["format_version"] == 5 and meta["quantized"] is None and meta["pad_id"] == 0 and meta["k"] == 10
    assert meta["max_len"] == MAX_LEN and meta["backbone"] == kind.split("-")[0] and meta["n_items"] == seqs.n_items
    assert meta["vocab"] == seqs.vocab.tolist() and meta["vocab"][:2] == ["i1", "i10"]
    assert meta["popularity"] == seqs.item_counts().tolist()
    assert meta["recipe_sha256"] == hashlib.sha256((run / "recipe.yaml").read_bytes()).hexdigest()
    assert meta["metrics"] == json.loads((run / "metrics.json").read_text())
    assert set(meta["versions"]) >= {"ltrec", "torch", "onnx", "onnxruntime"}
    assert meta["parity"]["topk_agreement"] >= 0.999 and meta["parity"]["max_score_diff"] <= 1e-4

    # independent check on every test user: onnxruntime vs the torch backbone, ties broken by lower id
    model = build_model(recipe, seqs)
    model.load_state_dict(load_torch(run / "best.pt")["model"])
    model.eval()
    _, history, _ = seqs.eval_inputs("test", MAX_LEN)
    items, scores = session(bundle).run(None, {"history": history, "exclude": np.zeros((len(history), 0), np.int64)})
    with torch.no_grad():
        full = model(torch.from_numpy(history))  # (B, N), column j = item j + 1
        if recipe.eval.ensemble:  # the ensemble fitted at training, applied as eval applies it
            from ltrec.ensemble.scores import load as load_ensemble

            ensemble = load_ensemble(run, recipe, seqs)
            assert ensemble.weights[:, 1:].max() > 0  # a member is in play, so parity covers it
            full = ensemble.scores(full, torch.from_numpy(history))
        full = full.numpy()
    want = np.argsort(-full, axis=1, kind="stable")[:, :10] + 1
    assert items.dtype == np.int64 and scores.dtype == np.float32 and items.shape == (len(history), 10)
    assert (items == want).all(axis=1).mean() >= 0.999
    np.testing.assert_allclose(scores, np.take_along_axis(full, items - 1, axis=1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", NEW)
def test_new_backbone_train_eval_export_predict(runs, kind, tmp_path):
    """The whole CLI per new backbone: `predict` (onnxruntime) reproduces `eval`'s test NDCG@10 from each
    user's history (eval masks the history, so predict excludes it). Quality is not judged here (2 epochs of
    a tiny model); the real-data figures are in the README."""
    run = runs[kind]
    result = json.loads(ok(["eval", run, "--json", "--ks", "10"]))["slices"]["all"]
    assert result["ndcg@10"] > 0.01
    ok(["export", run, "--out", tmp_path / "bundle", "--k", 10])
    events = (run.parent / "events.csv").read_text().splitlines()
    users = [line.split(",")[0] for line in events[1:]]
    last = {u: j for j, u in enumerate(users)}
    (tmp_path / "hist.csv").write_text(
        "\n".join([events[0], *(line for j, line in enumerate(events[1:]) if last[users[j]] != j)]) + "\n"
    )
    targets = {u: events[1 + j].split(",")[1] for u, j in last.items()}
    ok(
        [
            "predict",
            tmp_path / "bundle",
            "--input",
            tmp_path / "hist.csv",
            "--output",
            tmp_path / "pred.csv",
            "--exclude-seen",
        ]
    )
    ndcg = dict.fromkeys(targets, 0.0)
    for row in (tmp_path / "pred.csv").read_text().splitlines()[1:]:
        user, rank, item = row.split(",")[:3]
        if item == targets[user]:
            ndcg[user] = 1.0 / np.log2(int(rank) + 1)
    assert abs(np.mean(list(ndcg.values())) - result["ndcg@10"]) < 1e-6


def test_exclude_input(runs, tmp_path):
    bundle = tmp_path / "b"
    ok(["export", runs["sasrec"], "--out", bundle, "--k", 5])
    sess = session(bundle)
    history = np.zeros((3, MAX_LEN), np.int64)
    history[0, -3:], history[1, -1] = [4, 9, 9], 7  # row 2: all padding still gives finite scores
    free, _ = sess.run(None, {"history": history, "exclude": np.zeros((3, 0), np.int64)})
    # excluding a row's own top items (repeats and 0 padding included) removes exactly those
    exclude = np.concatenate([free[:, :2], free[:, :1], np.zeros((3, 2), np.int64)], axis=1)  # (3, 5)
    items, scores = sess.run(None, {"history": history, "exclude": exclude})
    assert (items[:, :3] == free[:, 2:]).all()
    n = n_items(runs["sasrec"])
    assert np.isfinite(scores).all() and (items >= 1).all() and (items <= n).all()
    # excluding all but three items: the rest of the top-5 is -inf
    everything = np.tile(np.arange(4, n + 1), (3, 1))
    items, scores = sess.run(None, {"history": history, "exclude": everything})
    assert (np.sort(items[:, :3], axis=1) == [1, 2, 3]).all() and np.isneginf(scores[:, 3:]).all()


def test_export_errors_leave_nothing(runs, tmp_path, monkeypatch):
    n = n_items(runs["pop"])
    r = runner.invoke(app, ["export", str(runs["pop"]), "--out", str(tmp_path / "b"), "--k", str(n + 1)])
    assert r.exit_code == 2 and f"--k {n + 1}: expected 1..{n}" in r.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["export", str(runs["pop"]), "--out", str(tmp_path / "other")])
    assert r.exit_code == 2 and "not a bundle folder" in r.output
    # a failed parity check writes nothing, and keeps an existing bundle as it was
    ok(["export", runs["sasrec"], "--out", tmp_path / "b", "--k", 3])
    before = (tmp_path / "b" / "bundle.json").read_bytes()
    monkeypatch.setattr(ltrec.deploy.export, "TOLERANCE", -1.0)
    r = runner.invoke(app, ["export", str(runs["sasrec"]), "--out", str(tmp_path / "b"), "--k", "4"])
    assert r.exit_code == 2 and "onnxruntime and torch disagree" in r.output and "nothing was written" in r.output
    assert (tmp_path / "b" / "bundle.json").read_bytes() == before
    monkeypatch.undo()
    ok(["export", runs["sasrec"], "--out", tmp_path / "b", "--k", 4])  # replaces the old bundle
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["k"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "other"]


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec", *NEW, "sasrec-ensemble"])
def test_int8_export(runs, kind, tmp_path):
    """--int8: the item-table product runs on int8 weights, everything else as before; the ranking it gives is
    measured at export and is nearly the float graph's on every test user."""
    import onnx

    run, flt, q = runs[kind], tmp_path / "f32", tmp_path / "int8"
    ok(["export", run, "--out", flt])
    out = ok(["export", run, "--out", q, "--int8"])
    assert "item-table product in int8" in out and "top-10 items shared" in out
    meta = json.loads((q / "bundle.json").read_text())
    assert meta["quantized"] == "int8" and meta["parity"]["topk_overlap"] >= 0.95
    assert 0 < meta["parity"]["max_score_diff"] < 0.1  # quantised, so not the float graph's 1e-6
    graph = onnx.load(str(q / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 1 and "Gemm" not in ops
    table = next(i for i in graph.initializer if i.name.startswith("ltrec_int8_table"))
    assert table.data_type == onnx.TensorProto.INT8 and table.dims[1] in (n_items(run), n_items(run) + 1)

    _, history, _ = load_run(run)[1].eval_inputs("test", MAX_LEN)
    feed = {"history": history, "exclude": history}
    (want, want_scores), (got, got_scores) = (session(b).run(None, feed) for b in (flt, q))
    shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want.tolist(), got.tolist())])
    assert shared >= 0.9, shared
    assert np.abs(got_scores - want_scores).max() < 0.05 * max(1.0, np.abs(want_scores).max())
    ok(["predict", q, "--input", run.parent / "events.csv", "--output", tmp_path / "p.csv"])
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 1


def test_int8_errors_leave_nothing(runs, tmp_path, monkeypatch):
    r = runner.invoke(app, ["export", str(runs["pop"]), "--out", str(tmp_path / "b"), "--int8"])
    assert r.exit_code == 2 and "nothing to quantise; export it without --int8" in r.output
    monkeypatch.setattr(ltrec.deploy.export, "MIN_INT8_OVERLAP", 1.01)
    r = runner.invoke(app, ["export", str(runs["sasrec"]), "--out", str(tmp_path / "b"), "--int8"])
    assert r.exit_code == 2 and "int8 scoring keeps" in r.output and "nothing was written" in r.output
    assert list(tmp_path.iterdir()) == []


def test_quantize_table_rows():
    from ltrec.deploy.quantize import quantize_table

    table = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    table[0] = 0.0  # padding
    q, scale = quantize_table(table)
    assert q.shape == (8, 50) and q.dtype == np.int8 and scale[0] == 1.0 and not q[:, 0].any()
    assert np.abs(q.T * scale[:, None] - table).max() <= scale.max() / 2 + 1e-7
    assert (np.abs(q).max(axis=0)[1:] == 127).all()  # each row uses the whole range


@pytest.mark.slow
def test_amazon_music_parity(tmp_path):
    if not MUSIC.exists():
        pytest.skip(f"{MUSIC} is absent")
    run = train_run(tmp_path, MUSIC, "sasrec", epochs=1, dim=32)
    ok(["export", run, "--out", tmp_path / "bundle", "--k", 10])
    parity = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["parity"]
    assert parity["users"] == 2000 and parity["topk_agreement"] >= 0.999
    assert parity["max_score_diff"] <= 1e-4


def test_eval_set_records_its_protocol_for_compare(runs, tmp_path):
    """eval --set rewrites the per-user file under another protocol; compare refuses to mix it with the
    usual one, and a plain eval restores the run's own."""
    other = tmp_path / "other"
    shutil.copytree(runs["sasrec"], other)
    ok(["eval", other, "--set", "eval.mask_seen=false"])
    r = runner.invoke(app, ["compare", str(runs["sasrec"]), str(other)])
    assert r.exit_code == 2 and "needs one protocol" in r.output
    ok(["eval", other])
    assert "history masked" in ok(["compare", runs["sasrec"], other])
