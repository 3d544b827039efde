"""pipeline/weak/statistics.py against the formulas, computed independently in numpy float64."""

from __future__ import annotations

import numpy as np
import torch

from w2s_pipe.pipeline.weak.statistics import softmax_stats, stored_outputs, unstorable_rows


def test_softmax_stats_match_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3, size=(64, 11))
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    srt = np.sort(p, 1)
    got = {k: v.numpy() for k, v in softmax_stats(torch.tensor(x, dtype=torch.float32)).items()}
    np.testing.assert_array_equal(got["pred"], x.argmax(1))
    # float64 inside, one rounding to float32: equal to the float64 formula rounded to float32.
    x32 = x.astype(np.float32).astype(np.float64)
    p = np.exp(x32 - x32.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    srt = np.sort(p, 1)
    np.testing.assert_allclose(got["confidence"], srt[:, -1].astype(np.float32), rtol=1e-7)
    np.testing.assert_allclose(got["margin"], (srt[:, -1] - srt[:, -2]).astype(np.float32), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got["entropy"], (-(p * np.log(p)).sum(1)).astype(np.float32), rtol=1e-6, atol=1e-12)


def test_stats_do_not_depend_on_batch_or_threads():
    x = torch.randn(997, 1000) * 4
    whole = softmax_stats(x)
    parts = [softmax_stats(x[i : i + 37]) for i in range(0, 997, 37)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = softmax_stats(x)
    finally:
        torch.set_num_threads(threads)
    for k in whole:
        assert torch.equal(whole[k], torch.cat([p[k] for p in parts])), k
        assert torch.equal(whole[k], single[k]), k


def test_limits():
    uniform = softmax_stats(torch.zeros(2, 4))
    np.testing.assert_allclose(uniform["entropy"].numpy(), np.log(4), rtol=1e-6)
    assert (uniform["margin"] == 0).all()
    onehot = softmax_stats(torch.tensor([[100.0, 0, 0]]))
    assert onehot["confidence"].item() == 1.0 and onehot["entropy"].item() < 1e-6


def test_unstorable_rows():
    x = torch.zeros(5, 3)
    x[1, 0] = float("nan")
    x[2, 2] = float("inf")
    x[3, 1] = 70000.0  # finite in float32, inf in float16
    assert unstorable_rows(x).tolist() == [False, True, True, True, False]


def test_stats_come_from_the_stored_float16_logits():
    x = torch.randn(32, 10) * 5
    out = stored_outputs(x, None)
    assert out["logits"].dtype == torch.float16
    torch.testing.assert_close(out["confidence"], softmax_stats(out["logits"].float())["confidence"], rtol=0, atol=0)
    top = stored_outputs(x, 3)
    values, indices = x.half().float().topk(3, 1)
    torch.testing.assert_close(top["topk_values"].float(), values)
    assert top["topk_indices"].dtype == torch.int16 and (top["topk_indices"].long() == indices).all()
