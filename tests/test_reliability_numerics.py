"""Numerics: a non-finite loss skips its batch (and says so); a diverged epoch — non-finite loss or weights —
stops training with a clear message and the last good checkpoint intact; a discriminator that wins
completely is reported on the epoch line and in metrics.jsonl."""

from __future__ import annotations

import pytest
import torch
from conftest import write_long_tailed
from typer.testing import CliRunner

import ltrec.models.base
import ltrec.training.transfer.objective
from ltrec.cli import app
from ltrec.files.runs import read_epochs as read_jsonl
from ltrec.runtime.checkpoint import load_torch
from ltrec.training.loop import DISC_WINS

runner = CliRunner()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_long_tailed(tmp_path / "events.csv", users=80)
    (tmp_path / "r.yaml").write_text(
        "name: t\ndata: {source: events.csv, max_len: 10}\n"
        "backbone: {kind: gru4rec, dim: 8}\n"
        "train: {epochs: 3, batch_size: 16, patience: 10}\n"
    )
    return tmp_path


def sabotage(monkeypatch, when, how):
    """Replace the next-item loss of the batches for which when(epoch, call) holds by how(loss, model)."""
    real, seen = ltrec.models.base.loss_from_states, {"epoch": 0, "calls": 0}
    real_start = ltrec.training.transfer.objective.Objective.start_epoch

    def start_epoch(self, epoch):
        seen["epoch"] = epoch
        real_start(self, epoch)

    def loss(model, *args, **kwargs):
        seen["calls"] += 1
        value = real(model, *args, **kwargs)
        return how(value, model) if when(seen["epoch"], seen["calls"]) else value

    monkeypatch.setattr(ltrec.training.transfer.objective.Objective, "start_epoch", start_epoch)
    monkeypatch.setattr(ltrec.models.base, "loss_from_states", loss)


def nan(value, model):
    return value * float("nan")


def poison(value, model):
    """A finite loss whose gradient is infinite: Adam turns the weights into NaN, the loss shows nothing."""
    w = model.item_emb.weight
    return value + (w - w.detach()).sum() ** 0.5


def finite(path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_torch(path)["model"].values())


def test_a_nan_batch_is_skipped_and_reported(tiny, monkeypatch):
    sabotage(monkeypatch, lambda epoch, call: call % 3 == 0, nan)
    r = runner.invoke(app, ["train", "r.yaml"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and all("batches with a non-finite loss" in line for line in lines)
    records = read_jsonl(tiny / "runs/t/metrics.jsonl")
    assert all(rec["skipped"] > 0 for rec in records)
    assert finite(tiny / "runs/t/last.pt") and finite(tiny / "runs/t/best.pt")


@pytest.mark.parametrize("how, weights", [(nan, "finite"), (poison, "non-finite")], ids=["nan-loss", "nan-weights"])
def test_a_diverged_epoch_stops_with_the_last_good_checkpoint(tiny, monkeypatch, how, weights):
    sabotage(monkeypatch, lambda epoch, call: epoch == 2, how)
    r = runner.invoke(app, ["train", "r.yaml"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    message = r.output.strip().splitlines()[-1]
    assert message.startswith("training diverged at epoch 2 (loss ") and f", {weights} weights, " in message
    assert message.endswith(
        "runs/t/last.pt holds epoch 1, the last good one; lower train.lr and rerun with --overwrite"
    )
    run = tiny / "runs/t"
    assert load_torch(run / "last.pt")["state"]["epoch"] == 1 and finite(run / "last.pt") and finite(run / "best.pt")
    assert [rec["epoch"] for rec in read_jsonl(run / "metrics.jsonl")] == [1]
    assert not (run / "metrics.json").exists()


def test_divergence_in_the_first_epoch_says_nothing_was_kept(tiny, monkeypatch):
    sabotage(monkeypatch, lambda epoch, call: True, poison)
    r = runner.invoke(app, ["train", "r.yaml"])
    assert r.exit_code == 2 and "training diverged at epoch 1" in r.output
    assert "no checkpoint was written" in r.output and not (tiny / "runs/t/last.pt").exists()


def test_a_discriminator_that_wins_is_reported(tmp_path, monkeypatch):
    """Head users all walk items 1..20, tail users 21..40: with λ = 0 nothing hides that from the
    discriminator, which soon tells every head window from every tail one."""
    monkeypatch.chdir(tmp_path)
    rows = ["user_id,item_id,timestamp"]
    for u in range(60):
        n = 30 if u < 15 else 4
        rows += [f"u{u},{t % 20 + 1 if u < 15 else 21 + (u + t) % 20},{t}" for t in range(n)]
    (tmp_path / "sep.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "r.yaml").write_text(
        "name: sep\ndata: {source: sep.csv, max_len: 10}\nhead: {fraction: 0.3}\n"
        # input_norm off: its raw states let a linear discriminator separate the groups within 8 epochs
        "backbone: {kind: sasrec, dim: 32, dropout: 0.0, input_norm: false}\n"
        "transfer: {adversarial: {weight: 0.0, hidden: 0, lr: 0.1, warmup_epochs: 1}}\n"
        "train: {epochs: 8, batch_size: 128, patience: 10, threads: 1}\n"
    )
    threads = torch.get_num_threads()
    r = runner.invoke(app, ["train", "r.yaml"])  # one thread: the same numbers everywhere
    torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    records = read_jsonl(tmp_path / "runs/sep/metrics.jsonl")
    wins = [rec["epoch"] for rec in records if rec["disc_wins"]]
    assert wins and 1 not in wins  # never during warm-up
    assert all(rec["disc_acc"] >= DISC_WINS for rec in records if rec["disc_wins"])
    warnings = [line for line in r.output.splitlines() if line.startswith("warning: epoch ")]
    assert len(warnings) == len(wins)
    assert "the discriminator separates head from tail users almost perfectly" in warnings[0]
    assert "transfer.adversarial.weight (λ)" in warnings[0]
