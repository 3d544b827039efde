"""Paired comparisons over seeds, and between two runs sample by sample.

Seeds pair runs: a loss and its reference trained on seed s share the weak model, the store and the
data order, so the difference d_s = top1(row, s) - top1(reference, s) varies far less than either
row. A row against its reference is the mean of d_s with its 95% interval (Student's t, from
scipy.stats; a percentile bootstrap beside it where there are at least five seeds), a verdict only
where the interval excludes zero, and for a difference not shown, the seeds that would show it at
the observed spread of d_s. Two runs scored on the same samples are compared by McNemar's exact
test on the samples one gets right and the other wrong (scipy.stats.binomtest).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95
MOST_SEEDS = 10_000  # beyond, "more than" this: the difference is too small for its spread to be shown


def paired_difference(diffs) -> dict:
    """{"n", "mean", "sd", "lo", "hi" (the t interval; None for one seed), "boot_lo", "boot_hi" (the
    percentile bootstrap's; None under five seeds), "verdict" (better, worse, "no difference shown",
    or "one seed"), "seeds_needed" (for a difference not shown: seeds whose t interval would exclude 0
    at this mean and spread; None where shown, "never" for a zero mean)} of per-seed differences."""
    d = np.asarray([float(x) for x in diffs], np.float64)
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else None, "sd": None, "lo": None, "hi": None, "boot_lo": None,
           "boot_hi": None, "verdict": "one seed" if n == 1 else "no seed", "seeds_needed": None}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    out["sd"] = sd
    if sd == 0.0:  # every seed moved by the same amount: the interval is that point
        out["lo"] = out["hi"] = out["mean"]
    else:
        interval = stats.ttest_1samp(d, 0.0).confidence_interval(LEVEL)
        out["lo"], out["hi"] = float(interval.low), float(interval.high)
        if n >= 5:
            boot = stats.bootstrap((d,), np.mean, confidence_level=LEVEL, method="percentile", n_resamples=9999,
                                   random_state=np.random.default_rng(0))
            out["boot_lo"], out["boot_hi"] = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if out["lo"] > 0:
        out["verdict"] = "better"
    elif out["hi"] < 0:
        out["verdict"] = "worse"
    else:
        out["verdict"] = "no difference shown"
        out["seeds_needed"] = seeds_to_show(out["mean"], sd)
    return out


def seeds_to_show(mean: float, sd: float):
    """The fewest seeds n >= 2 whose 95% t interval, mean +- t(0.975, n-1) sd / sqrt(n), excludes 0 (the
    observed mean and spread taken as the truth); "never" for a zero mean, f">{MOST_SEEDS}" past that."""
    if mean == 0.0:
        return "never"
    if sd == 0.0:
        return 2
    target = abs(mean) / sd
    n = 2
    while stats.t.ppf(1 - (1 - LEVEL) / 2, n - 1) / math.sqrt(n) >= target:
        n = n * 2 if n < 64 else n + max(1, n // 8)
        if n > MOST_SEEDS:
            return f">{MOST_SEEDS}"
    low = max(2, n // 2)  # the doubling overshot: the first n in (n/2, n] that shows it
    for m in range(low, n + 1):
        if stats.t.ppf(1 - (1 - LEVEL) / 2, m - 1) / math.sqrt(m) < target:
            return m
    return n


def mcnemar(correct_a, correct_b) -> dict:
    """Two runs on the same samples (boolean arrays in one order): {"n", "a_only" (A right, B wrong),
    "b_only", "both", "neither", "top1_a", "top1_b", "p" (McNemar's exact two-sided test: the
    discordant samples as a binomial with p = 1/2), "verdict" (at 5%)}."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
    verdict = "no difference shown" if p >= 1 - LEVEL else ("A better" if a_only > b_only else "B better")
    return {"n": int(len(a)), "a_only": a_only, "b_only": b_only, "both": int(np.sum(a & b)),
            "neither": int(np.sum(~a & ~b)), "top1_a": float(a.mean()) if len(a) else None,
            "top1_b": float(b.mean()) if len(b) else None, "p": p, "verdict": verdict}


def cell(p: dict | None) -> str:
    """A table cell: "+4.44 [+1.02, +7.87] better", "-1.22 [-9.10, +6.67] not shown (41 seeds)"."""
    if not p or p["mean"] is None:
        return ""
    mean = f"{100 * p['mean']:+.2f}"
    if p["lo"] is None:
        return f"{mean} (one seed)"
    interval = f"{mean} [{100 * p['lo']:+.2f}, {100 * p['hi']:+.2f}]"
    if p["verdict"] in ("better", "worse"):
        return f"{interval} {p['verdict']}"
    need = p["seeds_needed"]
    return f"{interval} not shown" + ("" if need is None else f" (~{need} seeds)" if need != "never" else " (equal)")
