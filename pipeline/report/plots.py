"""PNG figures for `report` and `inspect` (matplotlib, headless)."""

from __future__ import annotations

import io
import math

from ...storage.fsutil import write_whole


def _save(fig, path: str, **options) -> None:
    """The figure as a PNG, whole or not at all (write_whole: a full disk is one line naming it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, **options)
    write_whole(path, buffer.getvalue())


def _plt():
    # Here, not at the top: the headless backend must be chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend

    return plt


def accuracy_bars(rows: list[dict], path: str, title: str = "validation top-1 (mean ± std over seeds)") -> str:
    """rows: {"label", "mean", "std"}; one bar each, with the standard deviation as an error bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.5))
    labels = [r["label"] for r in rows]
    means = [r["mean"] if r["mean"] is not None else math.nan for r in rows]
    errs = [r["std"] or 0 for r in rows]
    ax.bar(range(len(rows)), means, yerr=errs, capsize=4, color=[r.get("color", "#4c72b0") for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    finite = [m + e for m, e in zip(means, errs) if not math.isnan(m)]
    # From zero: a cut axis exaggerates differences and clips error bars.
    ax.set_ylim(0.0, min(1.0, max(finite) + 0.05) if finite else 1.0)
    ax.set_ylabel("top-1")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def calibration(rel: dict, path: str, title: str) -> str:
    """Left: confidence histogram, split into right and wrong where ground truth exists.
    Right: reliability diagram (accuracy against mean confidence per bin) with the ECE."""
    plt = _plt()
    edges = rel["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if rel.get("accuracy") is not None and not all(math.isnan(a) for a in rel["accuracy"] if a is not None):
        good = [c * (a if not math.isnan(a) else 0) for c, a in zip(rel["count"], rel["accuracy"])]
        bad = [c - g for c, g in zip(rel["count"], good)]
        left.bar(centers, good, width=width, color="#55a868", label="right")
        left.bar(centers, bad, width=width, bottom=good, color="#c44e52", label="wrong")
        left.legend()
        right.bar(centers, [a if not math.isnan(a) else 0 for a in rel["accuracy"]], width=width, color="#4c72b0",
                  edgecolor="white", label="accuracy")
        right.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        right.set_title(f"reliability, ECE = {rel['ece']:.4f}")
        right.set_xlabel("confidence")
        right.set_ylabel("accuracy")
        right.legend(loc="upper left")
    else:
        left.bar(centers, rel["count"], width=width, color="#4c72b0")
        right.text(0.5, 0.5, "no ground truth in the shards", ha="center", va="center")
        right.set_axis_off()
    left.set_xlabel("weak confidence (max softmax probability)")
    left.set_ylabel("samples")
    left.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def merge_identical(series: dict[str, list]) -> dict[str, list]:
    """Series with the same points as one, named "a = b"; empty series dropped."""
    merged: dict[tuple, list[str]] = {}
    for name, points in series.items():
        if points:
            merged.setdefault(tuple(points), []).append(name)
    return {" = ".join(names): list(points) for points, names in merged.items()}


def curves(series: dict[str, list[tuple[float, float]]], path: str, *, xlabel: str, ylabel: str, title: str) -> str:
    """One line per named series of (x, y) points; series with the same points (augconf's alpha with
    and without ground truth) are one line, named by all of them. The legend sits outside the axes,
    so it never covers a curve."""
    plt = _plt()
    merged = merge_identical(series)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, points in merged.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=name, lw=1.4, marker="o" if len(xs) < 4 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if merged:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _save(fig, path, bbox_inches="tight")  # the canvas grows to hold the legend
    plt.close(fig)
    return path


def class_counts(classes: list, series: dict[str, list[int]], path: str, title: str) -> str:
    """Samples per class as grouped bars (one group per class, one bar per series)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(classes) * max(1, len(series)) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    for n, (name, counts) in enumerate(series.items()):
        ax.bar([i + (n - (len(series) - 1) / 2) * width for i in range(len(classes))], counts, width=width, label=name)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=90 if len(classes) > 20 else 0, fontsize=7)
    ax.set_xlabel("class")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def gain_vs_misfit(points: list[dict], path: str, title: str = "gain against misfit, per run") -> str:
    """points: {"label", "kl", "gain_ce", "disagree", "gain_top1"}, one per run. Left: the gain in
    cross-entropy over the weak model against the misfit KL(student || weak), with the bound's line
    gain = misfit (Mulgund & Pabbaraju, ICML 2025: for the cross-entropy, gain >= misfit). Right: the
    top-1 gain against the argmax disagreement, where no bound holds, for comparison."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = sorted({p["label"] for p in points})
    colors = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        mine = [p for p in points if p["label"] == label]
        ce = [p for p in mine if p["kl"] is not None]
        left.scatter([p["kl"] for p in ce], [p["gain_ce"] for p in ce], s=22, color=colors(i % 10), label=label)
        right.scatter([p["disagree"] for p in mine], [p["gain_top1"] for p in mine], s=22, color=colors(i % 10))
    kls = [p["kl"] for p in points if p["kl"] is not None]
    if kls:
        top = max(kls) * 1.1 or 1.0
        left.plot([0, top], [0, top], "k--", lw=1, label="gain = misfit (the bound)")
    left.axhline(0, color="#888", lw=0.5)
    left.set_xlabel("misfit: KL(student ‖ weak), nats")
    left.set_ylabel("gain: CE(weak) − CE(student), nats")
    left.set_title(title)
    left.legend(fontsize=7, loc="best")
    right.axhline(0, color="#888", lw=0.5)
    right.set_xlabel("argmax disagreement with the weak model")
    right.set_ylabel("top-1 gain over the weak model")
    right.set_title("top-1 gain against disagreement")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
