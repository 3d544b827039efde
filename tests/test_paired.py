"""Paired statistics (pipeline/report/paired.py) against the textbook formulas written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from w2s_pipe.pipeline.report.paired import cell, mcnemar, paired_difference, seeds_to_show


def test_a_paired_interval_is_students_t_over_the_seed_differences():
    d = [0.03, 0.04, 0.035]
    p = paired_difference(d)
    mean, sd = np.mean(d), np.std(d, ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)  # 4.303 x sd / sqrt(3)
    assert p["mean"] == pytest.approx(mean) and p["lo"] == pytest.approx(mean - half)
    assert p["hi"] == pytest.approx(mean + half)
    assert p["verdict"] == "better" and p["seeds_needed"] is None and p["boot_lo"] is None  # < 5 seeds
    worse = paired_difference([-x for x in d])
    assert worse["verdict"] == "worse" and worse["hi"] == pytest.approx(-(mean - half))
    assert cell(p).endswith("better") and cell(p).startswith("+3.50 [")


def test_a_difference_not_shown_says_how_many_seeds_would_show_it():
    d = [0.04, -0.02, 0.05]  # mean 0.0233, sd 0.0379: the interval holds 0
    p = paired_difference(d)
    assert p["lo"] < 0 < p["hi"] and p["verdict"] == "no difference shown"
    n = p["seeds_needed"]
    mean, sd = np.mean(d), np.std(d, ddof=1)
    shows = [stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m) < abs(mean) for m in range(2, 200)]
    assert n == 2 + shows.index(True)  # the first seed count whose interval excludes 0
    assert not shows[n - 3]  # and one fewer does not
    assert "not shown (~" in cell(p)
    assert seeds_to_show(0.0, 0.1) == "never" and paired_difference([0.01, 0.01])["verdict"] == "better"
    assert paired_difference([0.02])["verdict"] == "one seed" and cell(paired_difference([0.02])) == "+2.00 (one seed)"


def test_five_seeds_get_a_bootstrap_interval_too():
    p = paired_difference([0.02, 0.03, -0.01, 0.04, 0.05])
    assert p["boot_lo"] is not None and p["boot_lo"] <= p["mean"] <= p["boot_hi"]
    assert p["lo"] <= p["boot_lo"] and p["boot_hi"] <= p["hi"]  # the percentile bootstrap is the tighter here


def test_mcnemar_is_the_exact_binomial_on_the_discordant_samples():
    a = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0], bool)
    m = mcnemar(a, b)
    assert (m["a_only"], m["b_only"], m["both"], m["neither"]) == (7, 1, 2, 2)
    assert m["p"] == pytest.approx(2 * sum(math.comb(8, k) for k in range(0, 2)) / 2 ** 8)  # 0.0703
    assert m["verdict"] == "no difference shown"
    assert mcnemar(np.ones(20, bool), np.zeros(20, bool))["verdict"] == "A better"


def test_a_studys_chosen_rows_are_paired_with_hard_labels_of_the_same_cell():
    from w2s_pipe.pipeline.report.selection import against

    rows = [{"cell": {"loss": "hard", "store": "a", "probe": False}, "scores": {0: 0.70, 1: 0.72, 2: 0.71}},
            {"cell": {"loss": "adaptconf", "store": "a", "probe": False}, "scores": {0: 0.75, 1: 0.78, 2: 0.76}},
            {"cell": {"loss": "adaptconf", "store": "a", "probe": True}, "scores": {0: 0.9, 1: 0.8}},  # no hard probe
            {"cell": {"loss": "kd", "store": "a", "probe": False}, "scores": {0: 0.69, 2: 0.70}}]
    against(rows, "hard")
    assert rows[0]["vs"]["reference"] == "itself" and "vs" not in rows[2]
    assert rows[1]["vs"]["diffs"] == {0: pytest.approx(0.05), 1: pytest.approx(0.06), 2: pytest.approx(0.05)}
    assert rows[1]["vs"]["verdict"] == "better"
    assert rows[3]["vs"]["n"] == 2 and set(rows[3]["vs"]["diffs"]) == {0, 2}  # only the seeds both have
    # hard labels with more to them (a kept fraction, an ensemble of stores) against the plainest hard row of
    # their protocol: one store, the fewest settings, whatever the order
    more = [{"cell": {"loss": "hard", "store": "a+b+c"}, "probe": False, "scores": {0: 0.74, 1: 0.75}},
            {"cell": {"loss": "hard", "store": "a", "keep_frac": 0.7}, "probe": False, "scores": {0: 0.71, 1: 0.74}},
            {"cell": {"loss": "hard", "store": "a"}, "probe": False, "scores": {0: 0.70, 1: 0.72}},
            {"cell": {"loss": "hard", "store": "a", "probe": True}, "probe": True, "scores": {0: 0.8, 1: 0.8}}]
    against(more, "hard")
    assert more[2]["vs"]["reference"] == "itself" and more[3]["vs"]["reference"] == "itself"
    assert more[0]["vs"]["diffs"] == {0: pytest.approx(0.04), 1: pytest.approx(0.03)}
    assert more[1]["vs"]["diffs"] == {0: pytest.approx(0.01), 1: pytest.approx(0.02)}
