"""PGR, mean/std and ECE against values computed by hand."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from w2s_pipe.pipeline.report.measures import mean_std, pgr, reliability


def test_pgr():
    assert pgr(0.6, 0.9, 0.75) == pytest.approx(0.5)
    assert pgr(0.6, 0.9, 0.6) == 0 and pgr(0.6, 0.9, 0.95) == pytest.approx(35 / 30)
    assert pgr(0.6, 0.6, 0.7) is None and pgr(0.7, 0.6, 0.65) is None


def test_mean_std():
    m, s, n = mean_std([0.5, 0.7, None])
    assert (m, n) == (pytest.approx(0.6), 2) and s == pytest.approx(np.sqrt(0.02))
    assert mean_std([0.4]) == (0.4, None, 1) and mean_std([]) == (None, None, 0)


def test_ece_by_hand():
    # Bin [0.8, 0.9): confidences 0.8, 0.85 -> mean 0.825, 1 of 2 right -> |0.5 - 0.825| = 0.325.
    # Bin [0.9, 1.0]: 0.9, 0.95, 1.0 -> mean 0.95, 3 of 3 right -> 0.05.
    conf = np.array([0.8, 0.85, 0.9, 0.95, 1.0])
    right = np.array([1, 0, 1, 1, 1])
    ece = (2 / 5) * 0.325 + (3 / 5) * 0.05
    r = reliability(conf, right, bins=10)
    assert r["ece"] == pytest.approx(ece)
    assert r["count"][8] == 2 and r["count"][9] == 3 and sum(r["count"]) == 5
    lazy = reliability(da.from_array(conf, chunks=2), da.from_array(right, chunks=2), bins=10)
    assert lazy["ece"] == pytest.approx(ece)


def test_perfectly_calibrated_is_zero():
    rng = np.random.default_rng(0)
    conf = np.repeat([0.25, 0.55, 0.95], 1000)
    right = np.concatenate([rng.permutation(np.arange(1000) < int(c * 1000)) for c in (0.25, 0.55, 0.95)])
    assert reliability(conf, right)["ece"] == pytest.approx(0, abs=1e-12)
