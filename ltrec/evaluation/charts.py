"""The report's pictures, drawn with matplotlib (imported only when a picture is drawn) and inlined as PNG
data URLs so the page is one self-contained file."""

from __future__ import annotations

import base64
import io

import numpy as np

K = 10
METRICS = (f"ndcg@{K}", f"hr@{K}")
EDGES = (1, 2, 3, 5, 10, 20, 50)  # activity buckets: 1, 2, 3-4, 5-9, 10-19, 20-49, 50+ training events
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def buckets(threshold: int | None) -> list[tuple[int, int | None]]:
    """[lo, hi) bucket bounds on training events; the head threshold is always a bound."""
    edges = sorted(set(EDGES) | ({threshold} if threshold and threshold > 1 else set()))
    return [(lo, hi) for lo, hi in zip(edges, [*edges[1:], None])]


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def histogram_png(run: dict) -> str:
    from matplotlib.figure import Figure

    events = run["events"][np.isin(run["slices"], ("head", "tail"))]
    lo = max(int(events.min()), 1)  # the axis starts at the least active user, not at 1
    edges = np.unique(np.round(np.geomspace(lo, max(events.max(), lo) + 1, 40))) - 0.5  # log-spaced, whole numbers
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    ax = fig.subplots()
    counts, _, _ = ax.hist(events, bins=edges, color="#888888", edgecolor="white")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="training events per user (log scale; bins widen)",
        ylabel="users in bin",
        title=f"user activity: {len(events):,} evaluated users",
    )
    t = run["threshold"]
    if t:
        ax.axvline(t - 0.5, color="#555555", ls="--")
        n_head = int((events >= t).sum())
        ax.text(
            t,
            counts.max(),
            f"  head: ≥ {t} events ({n_head:,} users, {n_head / len(events):.0%})",
            color="#555555",
            va="top",
        )
    return png(fig)


def curve_png(runs: list[dict], curves: list[list[dict]], threshold: int | None) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    x = np.arange(len(curves[0]))
    labels = [f"{b['label']}\n{b['users']:,}" for b in curves[0]]
    split_at = next((i for i, b in enumerate(curves[0]) if b["lo"] == threshold and i > 0), None)
    for ax, metric in zip(axes, METRICS):
        for j, (run, curve) in enumerate(zip(runs, curves)):
            ax.plot(x, [b[metric] for b in curve], "o-", color=COLORS[j % len(COLORS)], label=run["label"])
        if split_at is not None:
            ax.axvline(split_at - 0.5, color="#555555", ls="--")
            ax.text(split_at - 0.45, 0.02, "head →", color="#555555", transform=ax.get_xaxis_transform())
        ax.set_xticks(x, labels)
        ax.set(
            xlabel="training events (bucket) / users", ylabel=f"mean {metric}", title=f"{metric.upper()} by activity"
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=min(len(runs), 3))
    return png(fig)


def training_png(run: dict) -> str | None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    history = run["history"]
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    metric = METRICS[0] if METRICS[0] in history[0]["valid"]["all"] else next(iter(history[0]["valid"]["all"]))
    adversarial = any("disc_acc" in r for r in history)
    fig = Figure(figsize=(11, 3), layout="constrained")
    axes = fig.subplots(1, 3 if adversarial else 2)
    axes[0].plot(epochs, [r["loss"] for r in history], "o-", color="#444444")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    for name, style in (("all", "o-"), ("head", "s--"), ("tail", "^--")):
        axes[1].plot(epochs, [r["valid"][name][metric] for r in history], style, label=name)
    best = run["summary"].get("best_epoch")
    if best:
        axes[1].axvline(best, color="#999999", ls=":", label=f"best epoch {best}")
    axes[1].set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    axes[1].legend(fontsize=8)
    if adversarial:
        rows = [r for r in history if "disc_acc" in r]
        axes[2].plot([r["epoch"] for r in rows], [r["disc_acc"] for r in rows], "o-", label="discriminator accuracy")
        axes[2].plot([r["epoch"] for r in rows], [r["adv_loss"] for r in rows], "s--", label="adversarial loss")
        axes[2].axhline(0.5, color="#999999", ls=":", label="chance")
        axes[2].set(xlabel="epoch", title="head/tail discriminator")
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return png(fig)
