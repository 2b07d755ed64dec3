"""`ltrec export`: the run's best checkpoint as an ONNX bundle (format: ltrec/deploy/bundle.py), checked against
torch at export time. Top-K runs inside the graph so a client ships K ids per user, not N scores. Exclusion
is an input rather than a flag because the caller knows more than the model's max_len window (the whole
history, items out of stock); an empty (B, 0) input costs one pass over (B, N+1).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console

from ltrec.deploy.bundle import length_batches, ort_session, write_bundle
from ltrec.deploy.meta import BUNDLE_FORMAT, read_meta
from ltrec.deploy.quantize import quantize_scoring
from ltrec.ensemble import scores as ensemble_scores
from ltrec.ensemble.records import refit_command
from ltrec.ensemble.scores import Ensemble
from ltrec.files.errors import UserError
from ltrec.files.runs import Summary, read_json
from ltrec.files.safe import read_bytes
from ltrec.files.version import __version__
from ltrec.runtime.build import build_model, load_run
from ltrec.runtime.checkpoint import load_weights

OPSET = 17
TOLERANCE = 1e-4  # max |onnx - torch| / max(1, |torch|) accepted at export: float32 sums drift with size
MIN_INT8_OVERLAP = 0.95  # share of torch's top-K an int8 graph must return (Amazon Music's d 128 SASRec: 99%)
PARITY_USERS = 2000


class TopKScorer(nn.Module):
    """Backbone + exclusion + top-K: (history (B, L), exclude (B, E)) → (items (B, K), scores (B, K))."""

    def __init__(self, backbone: nn.Module, k: int, ensemble: Ensemble | None = None):
        super().__init__()
        self.backbone, self.k = backbone, k
        # Scores are laid out over ids 0..N, so topk's column index IS the item id; column 0 (padding)
        # gets -inf through the bias. F.linear against the full embedding table (a Gemm) reuses the
        # weight the input lookup already holds, where `weight[1:].T` would store a second copy.
        bias = torch.zeros(backbone.n_items + 1)
        bias[0] = float("-inf")
        self.register_buffer("pad_bias", bias, persistent=False)
        # the members' tables become constants of the graph: (N+1, K) ids and strengths, or (N,) counts
        self.members = nn.ModuleList(ensemble.members) if ensemble is not None else None
        if ensemble is not None:
            self.register_buffer("edges", ensemble.edges.clone(), persistent=False)
            self.register_buffer("weights", ensemble.weights.clone(), persistent=False)
            if backbone.tied:  # the model's scores are made standardised, as evaluation makes them
                mean_row, second = ensemble_scores.item_moments(backbone.item_table[1:].detach().float())
                self.register_buffer("item_mean", mean_row, persistent=False)
                self.register_buffer("item_second", second, persistent=False)

    def scores(self, history: torch.Tensor) -> torch.Tensor:
        """(B, N+1): column j is item j, column 0 (padding) -inf."""
        if self.members is not None:  # evaluation's arithmetic (ltrec.ensemble.scores), on items 1..N
            if self.backbone.tied:  # against the whole table, as above: the moments are those of items 1..N
                moments = (self.item_mean, self.item_second)
                table = self.backbone.item_table
                z = ensemble_scores.standardized_scores(self.backbone.encode(history), table, moments)[:, 1:]
            else:
                z = ensemble_scores.standardize(self.backbone(history).float())
            members = ensemble_scores.member_scores(self.members, history)
            ensemble = ensemble_scores.combine(z, members, history, self.edges, self.weights)
            return F.pad(ensemble, (1, 0), value=float("-inf"))
        if self.backbone.tied:
            return F.linear(self.backbone.encode(history), self.backbone.item_table, self.pad_bias)
        return F.pad(self.backbone(history), (1, 0), value=float("-inf"))  # not a state × item table (pop)

    def forward(self, history: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.scores(history)
        # adding -inf (not assigning) keeps repeated ids well defined: ScatterElements with reduction=add
        minus_inf = torch.full(exclude.shape, float("-inf"), dtype=scores.dtype)  # (B, E)
        scores = scores.scatter_add(1, exclude, minus_inf)  # (B, N+1)
        values, items = torch.topk(scores, self.k, dim=1)  # (B, K) each, best first
        return items, values


def reference_topk(scorer: TopKScorer, history: torch.Tensor, exclude: torch.Tensor, k: int):
    """Torch's answer, ties broken like ONNX TopK (lower index first), so tie order is not a difference."""
    with torch.inference_mode():
        scores = scorer.scores(history).float()  # (B, N+1), column = item id
        scores = scores.scatter_add(1, exclude, torch.full(exclude.shape, float("-inf")))
        values, items = torch.sort(scores, dim=1, descending=True, stable=True)
    return scores, items[:, :k], values[:, :k]


def to_onnx(wrapper: TopKScorer, max_len: int, metadata: dict[str, str]) -> bytes:
    """Serialized, checked ONNX model (bytes) with `metadata` in its metadata_props."""
    import onnx

    k = wrapper.k
    # batch ≥ 2 and a non-trivial exclude, so no dimension is specialised to 1 while tracing
    example = (torch.tensor([[0] * (max_len - 1) + [1]] * 2), torch.ones(2, 3, dtype=torch.long))
    buf = io.BytesIO()
    dynamic = {
        "history": {0: "batch", 1: "length"},
        "exclude": {0: "batch", 1: "n_exclude"},
        "items": {0: "batch"},
        "scores": {0: "batch"},
    }
    with warnings.catch_warnings():  # the legacy exporter's deprecation and GRU warnings are not actionable
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["history", "exclude"],
            output_names=["items", "scores"],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    for out in proto.graph.output:  # name the K axis instead of the exporter's TopKitems_dim_1
        out.type.tensor_type.shape.dim[1].dim_value = k
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def check_parity(model_bytes: bytes, scorer: TopKScorer, history: np.ndarray, target: np.ndarray, k: int) -> dict:
    """onnxruntime vs torch on real histories: once at full width with nothing excluded, once fed as
    `ltrec predict` feeds it (batches trimmed to their longest history, the history itself excluded). The
    second pass also scores both against the held-out `target` items: NDCG@k of what each returns."""
    sess = ort_session(model_bytes)
    hist = torch.from_numpy(history)
    plain = sess.run(["items", "scores"], {"history": history, "exclude": history[:, :0]})
    trimmed = [np.zeros_like(a) for a in plain]
    lengths = (history > 0).sum(axis=1)
    for batch in length_batches(lengths, 256):
        width = max(int(lengths[batch].max()), 1)
        got = sess.run(["items", "scores"], {"history": history[batch, -width:], "exclude": history[batch]})
        trimmed[0][batch], trimmed[1][batch] = got
    worst, same, shared = 0.0, 0, 0
    for exclude, (got_items, got_scores) in ((hist[:, :0], plain), (hist, trimmed)):
        scores, want_items, want_scores = (t.numpy() for t in reference_topk(scorer, hist, exclude, k))
        if any(np.isnan(a).any() or np.isposinf(a).any() for a in (scores, got_scores)):
            return {"users": len(history), "max_score_diff": float("nan"), "topk_agreement": 0.0}
        shared += sum(len(set(a) & set(b)) for a, b in zip(got_items.tolist(), want_items.tolist()))
        if got_items.min(initial=0) < 0 or got_items.max(initial=0) >= scores.shape[1]:
            worst = float("inf")
            continue
        at_got = np.take_along_axis(scores, got_items, axis=1)  # torch's scores for onnx's items
        masked = np.isneginf(want_scores)  # -inf only where fewer than K items were left
        if not ((np.isneginf(got_scores) == masked) & (np.isneginf(at_got) == masked)).all():
            worst = float("inf")  # a masked item returned, or a real one lost
        else:
            # the scores at onnx's items and the K best scores must both agree: a tie reordered is fine,
            # a better item missed is not
            diff = np.maximum(np.abs(got_scores - at_got), np.abs(got_scores - want_scores))
            diff = diff / np.maximum(1.0, np.abs(np.where(masked, 0.0, want_scores)))
            worst = max(worst, float(diff[~masked].max(initial=0.0)))
        same += int((got_items == want_items).all(axis=1).sum())
    n = 2 * len(history)
    return {
        "users": len(history),
        "max_score_diff": worst,
        "topk_agreement": same / n,
        "topk_overlap": shared / (n * k),
        "ndcg_torch": _ndcg(want_items, target),
        "ndcg_onnx": _ndcg(trimmed[0], target),
    }


def _ndcg(items: np.ndarray, target: np.ndarray) -> float:
    """Mean NDCG@K of top-K lists (B, K) against one held-out item each."""
    rank = np.argmax(items == target[:, None], axis=1)
    hit = (items == target[:, None]).any(axis=1)
    return float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())


def export_bundle(run_dir: Path, out: Path, k: int, overrides: list[str] | None = None, int8: bool = False) -> Path:
    """Write `out/model.onnx` and `out/bundle.json` for the run's best checkpoint (its recipe with the eval.*
    `overrides`; with `int8`, its item-table product quantised: ltrec/deploy/quantize.py); returns `out`."""
    import onnx
    import onnxruntime

    console = Console(stderr=True, soft_wrap=True)
    run_dir, out = Path(run_dir), Path(out)
    recipe, seqs = load_run(run_dir, overrides)
    metrics_path = run_dir / "metrics.json"  # read first: a damaged file fails before minutes of export
    metrics = read_json(metrics_path, Summary).model_dump() if metrics_path.exists() else None
    if not 1 <= k <= seqs.n_items:
        raise UserError(f"--k {k}: expected 1..{seqs.n_items} (the number of items the model knows)")
    # read before minutes of export, and only under the settings they were fitted with
    ensemble = ensemble_scores.load(run_dir, recipe, seqs, overrides or ()) if recipe.eval.ensemble else None
    backbone = build_model(recipe, seqs, fit=False)
    if not (run_dir / "best.pt").exists():
        raise UserError(f"{run_dir}: no best.pt (training did not finish an epoch); train it first")
    load_weights(backbone, run_dir / "best.pt")
    backbone.eval()
    max_len = recipe.data.max_len
    metadata = {
        "ltrec.format_version": str(BUNDLE_FORMAT),
        "ltrec.n_items": str(seqs.n_items),
        "ltrec.max_len": str(max_len),
        "ltrec.k": str(k),
        "ltrec.backbone": recipe.backbone.kind,
        "ltrec.quantized": "int8" if int8 else "none",
    }
    scorer = TopKScorer(backbone, k, ensemble).eval()
    try:
        model_bytes = to_onnx(scorer, max_len, metadata)
    except Exception as exc:  # an exporter or checker failure is a bug to report, but say where
        raise UserError(f"{run_dir}: ONNX export failed ({type(exc).__name__}: {exc})") from None
    if int8:
        model_bytes = quantize_scoring(model_bytes, seqs.n_items)

    _, history, target = seqs.eval_inputs("test", max_len)
    pick = np.linspace(0, len(history) - 1, min(PARITY_USERS, len(history))).round().astype(int)
    parity = check_parity(model_bytes, scorer, history[pick], target[pick], k)
    if np.isnan(parity["max_score_diff"]):
        raise UserError(
            f"{run_dir}: the model's scores are not finite (NaN or +inf) on the parity histories; "
            "nothing was written (the checkpoint or the fitted ensemble holds non-finite numbers: retrain "
            f"the run, or refit its ensemble with `{refit_command(run_dir, overrides or ())}`)"
        )
    if int8 and not (np.isfinite(parity["max_score_diff"]) and parity["topk_overlap"] >= MIN_INT8_OVERLAP):
        raise UserError(
            f"{run_dir}: int8 scoring keeps {parity['topk_overlap']:.1%} of torch's top-{k} items (at least "
            f"{MIN_INT8_OVERLAP:.0%} expected); nothing was written: export without --int8"
        )
    if not int8 and not parity["max_score_diff"] <= TOLERANCE:
        raise UserError(
            f"{run_dir}: onnxruntime and torch disagree (max |score diff| / max(1, |score|) "
            f"{parity['max_score_diff']:.3g} > {TOLERANCE}); nothing was written"
        )
    console.print(
        f"parity on {parity['users']:,} test histories (onnxruntime vs torch; full width, then "
        f"trimmed with seen items excluded, as predict runs it): max |score diff| / max(1, |score|) "
        f"{parity['max_score_diff']:.2e}, identical top-{k} lists {parity['topk_agreement']:.2%}, "
        f"top-{k} items shared {parity['topk_overlap']:.2%}; test NDCG@{k} of these users "
        f"{parity['ndcg_onnx']:.4f} (torch {parity['ndcg_torch']:.4f})"
        + (", item-table product in int8" if int8 else "")
    )

    meta = {
        "format_version": BUNDLE_FORMAT,
        "model": "model.onnx",
        "backbone": recipe.backbone.kind,
        "run": recipe.name,
        "recipe_sha256": hashlib.sha256(read_bytes(run_dir / "recipe.yaml", "recipe")).hexdigest(),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "max_len": max_len,
        "pad_id": 0,
        "k": k,
        "n_items": seqs.n_items,
        "inputs": {
            "history": "int64 (batch, L ≤ max_len): item ids 1..n_items, left-padded with 0, newest last",
            "exclude": "int64 (batch, any): item ids never to return, 0 = none; width 0 allowed",
        },
        "outputs": {
            "items": "int64 (batch, k): item ids 1..n_items, best first; vocab[id - 1] is the original id",
            "scores": "float32 (batch, k): model scores; -inf when fewer than k items remain",
        },
        "parity": parity,
        "quantized": "int8" if int8 else None,
        "columns": recipe.data.columns.model_dump(),  # predict reads the events file with these by default
        "exclude_seen": recipe.eval.mask_seen,  # predict excludes seen items by default exactly when eval did
        "ensemble": ensemble_scores.record(ensemble) if ensemble else None,  # in the graph; here for the record
        "metrics": metrics,
        "versions": {
            "ltrec": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": OPSET,
        },
        "popularity": seqs.item_counts().tolist(),  # training counts, index i = item i+1: predict's fallback
        "vocab": seqs.vocab.tolist(),  # original item ids as strings, index i = item i+1
    }
    text = json.dumps(meta, indent=1)
    read_meta(text, out / "bundle.json")  # what predict and serve will read back
    write_bundle(out, model_bytes, text)
    return out
