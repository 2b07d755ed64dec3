"""Bad inference inputs for `ltrec predict`: tampered or mismatched bundles and bad events files are clear
errors (exit 2, nothing written); odd but valid inputs are handled and reported.

tests/test_predict.py already covers: unknown items and fallback users, a 10,000-event user, a missing
column, --k above the bundle's K, header-only/empty/missing input, bundle.json max_len/k/vocab that disagree
with model.onnx, bundle.json not JSON or missing, a truncated or non-ONNX model.onnx. None is repeated here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_export import ok, train_run, write_events
from typer.testing import CliRunner

from ltrec.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inference")
    events = write_events(folder / "events.csv", users=60)
    run = train_run(folder, events, "pop")  # no training to wait for; a bundle like any other
    ok(["export", run, "--out", folder / "k10", "--k", 10])
    ok(["export", run, "--out", folder / "k5", "--k", 5])
    return {"k10": folder / "k10", "k5": folder / "k5", "events": events}


def copy_bundle(bundles, tmp_path, edit=None) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["k10"], bundle)
    if edit:
        edit(bundle, bundles)
    return bundle


def predict(bundle, events, out, *extra):
    return runner.invoke(app, ["predict", str(bundle), "--input", str(events), "--output", str(out), *map(str, extra)])


def edit_meta(**changes):
    def edit(bundle: Path, _) -> None:
        meta = json.loads((bundle / "bundle.json").read_text())
        for key, value in changes.items():
            if value is None:
                del meta[key]
            else:
                meta[key] = value(meta[key]) if callable(value) else value
        (bundle / "bundle.json").write_text(json.dumps(meta))

    return edit


def write(name: str, data: bytes):
    def edit(bundle: Path, _) -> None:
        (bundle / name).write_bytes(data)

    return edit


def foreign_onnx(inputs=("x",), outputs=("y",)):
    """A valid ONNX model that is not ltrec's: outputs = inputs, rank 1."""

    def edit(bundle: Path, _) -> None:
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Identity", [i], [o]) for i, o in zip(inputs, outputs)],
            "g",
            [helper.make_tensor_value_info(i, TensorProto.INT64, [3]) for i in inputs],
            [helper.make_tensor_value_info(o, TensorProto.INT64, [3]) for o in outputs],
        )
        onnx.save(helper.make_model(graph), str(bundle / "model.onnx"))

    return edit


def nan_in(key, index):
    """NaN written as Python's json writes it (the JSON standard has no NaN, but most readers accept it)."""

    def edit(bundle: Path, _) -> None:
        meta = json.loads((bundle / "bundle.json").read_text())
        meta[key][index] = float("nan")
        (bundle / "bundle.json").write_text(json.dumps(meta))

    return edit


def crafted(make_outputs):
    """An ONNX graph that declares ltrec's inputs and outputs, (B, L) → (B, K), with the bundle's metadata and
    a bundle.json whose model_sha256 matches it, but computes `make_outputs(history) → (items, scores)` nodes."""

    def edit(bundle: Path, _) -> None:
        import hashlib

        from onnx import TensorProto, helper

        meta = json.loads((bundle / "bundle.json").read_text())
        declared = lambda name, kind: helper.make_tensor_value_info(name, kind, ["batch", meta["k"]])
        graph = helper.make_graph(
            make_outputs(helper),
            "g",
            [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "length"]) for n in ("history", "exclude")],
            [declared("items", TensorProto.INT64), declared("scores", TensorProto.FLOAT)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        for key in ("max_len", "n_items"):
            model.metadata_props.add(key=f"ltrec.{key}", value=str(meta[key]))
        data = model.SerializeToString()
        (bundle / "model.onnx").write_bytes(data)
        meta["model_sha256"] = hashlib.sha256(data).hexdigest()
        (bundle / "bundle.json").write_text(json.dumps(meta))

    return edit


# items = the history itself, (B, L) instead of (B, K): right names, types and ranks, wrong shape
wrong_output_shape = crafted(
    lambda h: [h.make_node("Identity", ["history"], ["items"]), h.make_node("Cast", ["history"], ["scores"], to=1)]
)


def tampered_weights(bundle: Path, _) -> None:
    """Same graph, shapes and metadata; one weight changed (as an edit, or a retrain exported elsewhere)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(bundle / "model.onnx"))


def nan_weights(bundle: Path, _) -> None:
    """The graph's largest float weight all NaN, and bundle.json's model_sha256 updated to match: a model
    whose every declaration is right and whose every score is NaN."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "model.onnx"))
    init = max(
        (t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
        key=lambda t: int(np.prod(t.dims)),
    )
    init.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(init).shape, np.nan, np.float32), init.name))
    data = model.SerializeToString()
    (bundle / "model.onnx").write_bytes(data)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(meta))


def other_k(bundle: Path, bundles) -> None:
    shutil.copy(bundles["k5"] / "model.onnx", bundle / "model.onnx")


BAD_BUNDLES = [
    ("max-len-missing", edit_meta(max_len=None), "bundle.json: max_len: Field required"),
    ("max-len-text", edit_meta(max_len="50"), "bundle.json: max_len: Input should be a valid integer"),
    ("max-len-negative", edit_meta(max_len=-3), "bundle.json: max_len: Input should be greater than or equal to 1"),
    ("meta-is-a-list", write("bundle.json", b"[1, 2]"), "bundle.json: (top level): Input should be an object"),
    (
        "format-version-1",
        edit_meta(format_version=1),
        "bundle.json: written by an older ltrec (format 1, this ltrec reads 5); re-export the run",
    ),
    (
        "format-version-newer",
        edit_meta(format_version=6),
        "bundle.json: written by a newer ltrec (format 6, this ltrec reads 5); upgrade ltrec or re-export the run",
    ),
    ("format-version-missing", edit_meta(format_version=None), "bundle.json: no format_version; re-export the run"),
    ("unknown-key", edit_meta(note="mine"), "bundle.json: note: Extra inputs are not permitted"),
    ("columns-missing", edit_meta(columns=None), "bundle.json: columns: Field required"),
    (
        "popularity-short",
        edit_meta(popularity=lambda p: p[:-1]),
        "popularity (94), n_items (95) and k (10) do not agree",
    ),
    (
        "vocab-numbers",
        edit_meta(vocab=lambda v: list(range(len(v)))),
        "bundle.json: vocab.0: Input should be a valid string",
    ),
    (
        "popularity-text",
        edit_meta(popularity=lambda p: ["many"] * len(p)),
        "popularity.0: Input should be a valid number",
    ),
    ("popularity-nan", nan_in("popularity", 3), "bundle.json: popularity.3: Input should be a finite number"),
    (
        "popularity-inf",
        edit_meta(popularity=lambda p: [1e999] + p[1:]),
        "popularity.0: Input should be a finite number",
    ),
    (
        "popularity-negative",
        edit_meta(popularity=lambda p: [-1] + p[1:]),
        "popularity.0: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "vocab-duplicate",
        edit_meta(vocab=lambda v: [v[1], *v[1:]]),
        "vocab holds 'i10' twice; item ids must be distinct",
    ),
    ("vocab-empty-id", edit_meta(vocab=lambda v: ["", *v[1:]]), "vocab.0: String should have at least 1 character"),
    (
        "parity-nan",
        nan_in("parity", "max_score_diff"),
        "parity.max_score_diff: Input should be a finite number",
    ),
    ("max-len-huge", edit_meta(max_len=10**9), "max_len: Input should be less than or equal to 4096"),
    ("k-zero", edit_meta(k=0), "bundle.json: k: Input should be greater than or equal to 1 (got 0)"),
    ("pad-id", edit_meta(pad_id=1), "bundle.json: pad_id: Input should be 0"),
    ("model-sha-not-hex", edit_meta(model_sha256="x"), "model_sha256: String should match pattern"),
    ("meta-not-utf8", write("bundle.json", b'{"k": "\xff"}'), "bundle.json: not valid JSON"),
    ("model-missing", lambda b, _: (b / "model.onnx").unlink(), "no model.onnx; pass a bundle folder"),
    ("model-empty", write("model.onnx", b""), "model.onnx: not a loadable ONNX model"),
    ("model-foreign", foreign_onnx(), "expected int64 inputs history, exclude (B, L) and outputs items"),
    (
        "model-foreign-same-names",
        foreign_onnx(("history", "exclude"), ("items", "scores")),
        "expected int64 inputs history, exclude (B, L) and outputs items",
    ),
    (
        "model-declares-k-returns-l",
        wrong_output_shape,
        "model.onnx: the graph returned items int64 (2, 2) and scores float32 (2, 2), expected int64 and "
        "float32 (2, 10)",
    ),
    ("model-returns-nan", nan_weights, "model.onnx: the graph returned non-finite scores; not a model written by"),
    ("model-of-other-k", other_k, "bundle.json says k 10 but model.onnx has 5"),
    ("model-tampered", tampered_weights, "model.onnx does not match bundle.json (its sha256 differs"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in BAD_BUNDLES], ids=[c[0] for c in BAD_BUNDLES])
def test_bad_bundle(bundles, tmp_path, edit, message):
    bundle = copy_bundle(bundles, tmp_path, edit)
    r = predict(bundle, bundles["events"], tmp_path / "p.csv")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "p.csv").exists()


def test_bundle_path_is_a_file(bundles, tmp_path):
    r = predict(bundles["events"], bundles["events"], tmp_path / "p.csv")
    assert r.exit_code == 2 and "no bundle.json; pass a bundle folder written by `ltrec export`" in r.output


def events_file(tmp_path, body: bytes, name="e.csv") -> Path:
    (tmp_path / name).write_bytes(body)
    return tmp_path / name


HEADER = b"user_id,item_id,timestamp\n"
BAD_INPUTS = [  # (id, file name, content, extra flags, message)
    (
        "user-col-missing",
        "e.csv",
        HEADER + b"a,i3,1\n",
        ["--user-col", "customer"],
        "--user-col: {f}: no column 'customer'",
    ),
    (
        "time-col-text",
        "e.csv",
        b"user_id,item_id,timestamp,day\na,i3,1,monday\n",
        ["--time-col", "day"],
        "--time-col: {f}: column 'day' holds non-numeric values such as 'monday'",
    ),
    (
        "time-col-not-identifier",
        "e.csv",
        HEADER + b"a,i3,1\n",
        ["--time-col", "event time"],
        "--time-col 'event time': 'event time' is not a plain column name",
    ),
    ("nan-time", "e.csv", HEADER + b"a,i3,1\na,i4,nan\n", [], "--time-col: {f}: column 'timestamp' has 1 NaN"),
    (
        "not-utf8",
        "e.csv",
        HEADER + b"a,i3,1\n" + "Zoë,i4,2\n".encode("latin-1"),
        [],
        "--input: {f}: cannot read as CSV: Invalid Input Error",
    ),
    (
        "random-bytes",
        "e.csv",
        np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        [],
        "--input: {f}: cannot read as CSV",
    ),
    (
        "fifty-mb-line",
        "e.csv",
        HEADER + b"a,i3,1\nb," + b"x" * 50_000_000 + b",2\n",
        [],
        "--input: {f}: line 3 is longer than 2,000,000 bytes",
    ),
    (
        "rowid-column",
        "e.csv",
        b"user_id,item_id,timestamp,rowid\na,i3,1,7\n",
        [],
        "--input: {f}: a column is named 'rowid'",
    ),
    ("nested-item-parquet", "e.parquet", None, [], "--item-col: {f}: column 'item_id' holds nested values"),
]


@pytest.mark.parametrize("name, body, extra, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_events_file(bundles, tmp_path, name, body, extra, message):
    if body is None:
        import duckdb

        path = tmp_path / name
        duckdb.connect().execute(
            f"COPY (SELECT 'a' AS user_id, [i] AS item_id, i AS timestamp FROM range(3) t(i)) "
            f"TO '{path}' (FORMAT parquet)"
        )
    else:
        path = events_file(tmp_path, body, name)
    r = predict(bundles["k10"], path, tmp_path / "p.csv", *extra)
    assert r.exit_code == 2 and message.format(f=path) in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "p.csv").exists()


def test_output_folder_missing(bundles, tmp_path):
    r = predict(bundles["k10"], bundles["events"], tmp_path / "nowhere" / "p.csv")
    assert r.exit_code == 2 and "--output: " in r.output and "the folder" in r.output and "does not exist" in r.output


def test_empty_histories_are_reported_not_guessed(bundles, tmp_path):
    """A user whose rows all lack an item has no history at all: no row is invented for them, and the rows
    are counted; a user with only unknown items gets the popularity fallback, flagged."""
    path = events_file(tmp_path, HEADER + b"a,i3,1\na,i4,2\nghost,,1\nghost,,2\nstranger,nope,1\n")
    r = predict(bundles["k10"], path, tmp_path / "p.csv", "--k", 3)
    assert r.exit_code == 0, r.output
    assert "2 users, 6 rows written" in r.output and "2 rows with an empty user, item or time ignored" in r.output
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert {row.split(",")[0] for row in rows} == {"a", "stranger"}
    assert all(row.endswith(",popularity") for row in rows if row.startswith("stranger,"))


def test_catalogue_sizes():
    assert len(BAD_BUNDLES) + 1 >= 30 and len(BAD_INPUTS) >= 8
