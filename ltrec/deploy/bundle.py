"""The bundle format, shared by `export` (which writes it) and `predict` / `serve` (which read it): a folder
with `model.onnx` and `bundle.json`. Reading needs onnxruntime and numpy only, never torch.

The graph (opset 17, one file; `ltrec export --int8` adds onnxruntime's DynamicQuantizeMatMul, see
ltrec/deploy/quantize.py):
  inputs   history  int64 (B, L)        left-padded item ids 1..N, 0 = padding (the training convention);
                                        any L ≤ max_len: the backbones ignore left padding, so a batch of
                                        short histories can be cut to its longest one (much less work)
           exclude  int64 (B, E)        item ids never to return (0 = nothing; E may be 0), e.g. the full
                                        history for "no already-seen items"
  outputs  items    int64 (B, K)        item ids 1..N (index into bundle.json's vocab + 1), best first
           scores   float32 (B, K)      the model's scores; -inf where fewer than K items were left
`bundle.json` carries what a reader needs besides the graph: the vocabulary, popularity for users with no
known item, the recipe's column names and whether evaluation excluded seen items (predict's defaults).
Its fields, and what the graph returns, are validated by ltrec/deploy/meta.py, for export as for predict and serve.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltrec.deploy.meta import BundleMeta, check_outputs, read_meta
from ltrec.files.errors import UserError
from ltrec.files.safe import MB, atomic_write, read_bytes

INPUTS = {"history": "tensor(int64)", "exclude": "tensor(int64)"}
OUTPUTS = {"items": "tensor(int64)", "scores": "tensor(float)"}
# Users per onnxruntime call in predict and recommend. The graph's (batch × items) score matrix is copied by the
# exclusion and read by top-K: at 256 users and 20k items it stays near the cache (20 MB), and Amazon Music's
# predict runs 1.2-1.3× faster by the wall clock than at 1024 (BENCHMARKS.md, `ltrec predict` end to end).
PREDICT_BATCH = 256
MODEL_LIMIT = 2048 * MB  # protobuf's own limit; the transition tables of a large catalogue are most of it


@dataclass
class Bundle:
    path: Path
    meta: BundleMeta
    session: object  # onnxruntime.InferenceSession
    vocab: np.ndarray  # (N,) original item ids: item i is vocab[i - 1]

    def run(self, history: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(items (B, K), scores (B, K)) for left-padded histories (B, ≤ max_len) and exclusions (B, E)."""
        items, scores = _run(self.session, history, exclude, self.path / "model.onnx")
        check_outputs(items, scores, len(history), self.meta, self.path / "model.onnx")
        return items, scores


def _run(sess, history: np.ndarray, exclude: np.ndarray, where: Path):
    try:
        items, scores = sess.run(["items", "scores"], {"history": history, "exclude": exclude})
    except Exception as exc:  # a graph that loads but cannot run these shapes: not one `ltrec export` wrote
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: onnxruntime failed ({first}); re-run `ltrec export`") from None
    return items, scores


def ort_session(model: str | bytes, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # a spinning thread pool burns the cores other work (or a torch in the same process) needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def load_bundle(path: Path, threads: int = 0) -> Bundle:
    """bundle.json + model.onnx, each validated, checked to belong together, and the graph run once on a tiny
    batch: a graph whose outputs are not what its declaration says fails here, not at the first request."""
    path = Path(path)
    meta_path, model_path = path / "bundle.json", path / "model.onnx"
    for f in (meta_path, model_path):
        if not f.is_file():
            raise UserError(f"{path}: no {f.name}; pass a bundle folder written by `ltrec export`")
    meta = read_meta(read_bytes(meta_path, "bundle file"), meta_path)
    model_bytes = read_bytes(model_path, "bundle file", MODEL_LIMIT)
    try:
        sess = ort_session(model_bytes, threads)
    except Exception as exc:  # truncated, not ONNX, unsupported ops: onnxruntime says which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{model_path}: not a loadable ONNX model ({first[:300]})") from None
    _check_graph(sess, meta, model_path)
    if hashlib.sha256(model_bytes).hexdigest() != meta.model_sha256:  # same shapes, other weights: an edit
        raise UserError(
            f"{path}: model.onnx does not match bundle.json (its sha256 differs from model_sha256); "
            "the two files come from different exports or were modified (re-run `ltrec export`)"
        )
    probe(sess, meta, model_path)
    return Bundle(path, meta, sess, np.asarray(meta.vocab, dtype=object))


def probe(sess, meta: BundleMeta, model_path: Path) -> None:
    """Two short histories, nothing excluded: every output must have its documented type and shape, with
    finite scores (a NaN weight anywhere in the graph shows here)."""
    width = min(meta.max_len, 2)
    history = np.minimum(np.array([[0, 1], [1, 2]], np.int64)[:, -width:], meta.n_items)
    items, scores = _run(sess, history, np.zeros((2, 1), np.int64), model_path)
    check_outputs(items, scores, 2, meta, model_path, probe=True)


def _check_graph(sess, meta: BundleMeta, model_path: Path) -> None:
    """The graph's inputs, outputs and the metadata stamped by export must match bundle.json."""
    inputs = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in sess.get_outputs()}
    typed = {n: t for n, (t, s) in {**inputs, **outputs}.items() if len(s) == 2}
    if typed != {**INPUTS, **OUTPUTS}:
        raise UserError(
            f"{model_path}: inputs {sorted(inputs)}, outputs {sorted(outputs)}; expected int64 inputs "
            "history, exclude (B, L) and outputs items (int64), scores (float) of shape (B, K): a "
            "model written by `ltrec export`"
        )
    stamped = sess.get_modelmeta().custom_metadata_map
    found = {
        "max_len": stamped.get("ltrec.max_len"),
        "k": outputs["items"][1][1],
        "n_items": stamped.get("ltrec.n_items"),
    }
    for key, value in found.items():
        if str(value) != str(getattr(meta, key)):
            raise UserError(
                f"{model_path.parent}: bundle.json says {key} {getattr(meta, key)} but model.onnx has "
                f"{value}; the two files come from different exports (re-run `ltrec export`)"
            )


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped by history length, so each batch is only as wide as its longest history: most users
    are short (the long tail), and a model fed max_len columns of padding does up to max_len× the work."""
    order = np.argsort(lengths, kind="stable")
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]


def write_bundle(out: Path, model_bytes: bytes, meta_json: str) -> None:
    """Both files appear together or not at all: build a sibling temp folder, then swap it in. Only a folder
    that is a bundle (model.onnx and bundle.json, nothing else) is ever replaced."""
    out = Path(os.path.realpath(out)) if out.is_symlink() else out  # replace what a link points to, not the link
    if out.exists() and (not out.is_dir() or set(os.listdir(out)) - {"model.onnx", "bundle.json"}):
        raise UserError(f"{out}: exists and is not a bundle folder; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise UserError(f"{out}: cannot write here ({exc.strerror})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes a private 0700 folder: a bundle is for sharing
    old = out.parent / f"{tmp.name}.old"
    try:
        atomic_write(tmp / "model.onnx", model_bytes)
        atomic_write(tmp / "bundle.json", meta_json)
        if out.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the bundle ({exc.strerror})") from None
    finally:  # on any failure (Ctrl-C included) put the previous bundle back, and leave no temp folder
        if old.exists() and not out.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
