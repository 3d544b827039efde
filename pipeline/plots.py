"""PNG figures for `report` and `inspect` (matplotlib, headless)."""

from __future__ import annotations

import math


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    finite = [m for m in means if not math.isnan(m)]
    if finite:
        low = max(0.0, min(finite) - 0.1)
        ax.set_ylim(low, min(1.0, max(finite) + 0.05))
    ax.set_ylabel("top-1")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(series: dict[str, list[tuple[float, float]]], path: str, *, xlabel: str, ylabel: str, title: str) -> str:
    """One line per named series of (x, y) points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]  # identical series (augconf's alpha schedule) stay visible
    for n, (name, points) in enumerate(series.items()):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, lw=1.4, linestyle=styles[n % len(styles)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
