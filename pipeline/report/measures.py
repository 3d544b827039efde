"""Summary statistics for reports: performance gap recovered, calibration, mean and spread."""

from __future__ import annotations

import math

import numpy as np


def pgr(weak: float, ceiling: float, w2s: float) -> float | None:
    """Performance gap recovered, (w2s - weak) / (ceiling - weak); None where the gap is not positive."""
    gap = ceiling - weak
    return None if not gap > 0 else (w2s - weak) / gap


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None for one value) and count of the non-None values."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return float(np.mean(vals)), std, len(vals)


def reliability(confidence, correct, bins: int = 15) -> dict:
    """Equal-width confidence bins over [0, 1]: per-bin count, mean confidence, accuracy, and the
    expected calibration error ECE = sum_b (n_b / N) * |acc_b - conf_b|.

    `confidence` and `correct` may be numpy or dask arrays (dask: computed in one pass, chunk by chunk).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    try:
        import dask.array as da

        lazy = isinstance(confidence, da.Array)
    except ImportError:  # pragma: no cover
        lazy = False
    xp = da if lazy else np
    conf = confidence.astype("float64")
    hit = correct.astype("float64")
    count, _ = xp.histogram(conf, bins=edges)
    conf_sum, _ = xp.histogram(conf, bins=edges, weights=conf)
    hit_sum, _ = xp.histogram(conf, bins=edges, weights=hit)
    if lazy:
        count, conf_sum, hit_sum = da.compute(count, conf_sum, hit_sum)
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, hit_sum / count, np.nan)
    n = count.sum()
    ece = float(np.nansum(count / n * np.abs(accuracy - mean_conf))) if n else float("nan")
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": mean_conf.tolist(),
            "accuracy": accuracy.tolist(), "ece": ece, "samples": int(n)}
