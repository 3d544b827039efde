"""Each loss against an independent numpy float64 computation of its formula, with gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.losses import functional as L
from w2s_pipe.pipeline.losses.registry import BUILT_IN
from w2s_pipe.pipeline.train.losses import objective


def softmax(x, t=1.0):
    z = x / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce(x, target):
    p = softmax(x)
    return -np.log(p[np.arange(len(x)), target])


def kl(w, s, t):
    pw, ps = softmax(w, t), softmax(s, t)
    return (pw * (np.log(pw) - np.log(ps))).sum(1) * t * t


def reference_adaptconf(s, w, tau, t):
    ce_self, ce_weak = ce(s, s.argmax(1)), ce(s, w.argmax(1))
    beta = np.exp(ce_self / tau) / (np.exp(ce_self / tau) + np.exp(ce_weak / tau))
    return ((1 - beta) * kl(w, s, t) + beta * ce_self).mean(), beta


def logits(seed, b=16, c=7, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(b, c)), rng.normal(scale=scale, size=(b, c))


def numeric_grad(fn, s, eps=1e-6):
    g = np.zeros_like(s)
    for idx in np.ndindex(s.shape):
        d = np.zeros_like(s)
        d[idx] = eps
        g[idx] = (fn(s + d) - fn(s - d)) / (2 * eps)
    return g


@pytest.mark.parametrize("tau,t", [(0.5, 1.0), (4.0, 2.0), (0.05, 1.0)])
def test_adaptconf_matches_formula_and_its_gradient(tau, t):
    s, w = logits(0)
    st = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss, parts = L.adaptconf(st, torch.tensor(w), tau, t)
    ref, beta = reference_adaptconf(s, w, tau, t)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert parts["beta"].item() == pytest.approx(beta.mean(), rel=1e-5)
    loss.backward()
    # beta is detached: the gradient is that of the formula with beta held at its value.
    def fixed_beta(x):
        return ((1 - beta) * kl(w, x, t) + beta * ce(x, s.argmax(1))).mean()
    np.testing.assert_allclose(st.grad.numpy(), numeric_grad(fixed_beta, s), rtol=1e-3, atol=1e-6)


def test_adaptconf_limits():
    s, w = logits(1, b=256, c=10)
    _, beta = reference_adaptconf(s, w, 0.5, 1.0)
    assert (beta <= 0.5 + 1e-12).all()
    # Student agrees with the teacher: both CE terms are equal, so beta = 1/2 exactly.
    loss, parts = L.adaptconf(torch.tensor(w), torch.tensor(w * 2), 0.5)
    assert parts["beta"].item() == pytest.approx(0.5)
    # Large CE / tau does not overflow (the naive exp would give inf / inf = nan).
    loss, parts = L.adaptconf(torch.tensor(s * 100), torch.tensor(w), 0.01)
    assert torch.isfinite(loss) and 0 <= parts["beta"].item() <= 0.5


def test_kd_and_hard_and_gt():
    s, w = logits(2)
    for t in (1.0, 4.0):
        st = torch.tensor(s, requires_grad=True)
        loss, _ = L.kd(st, torch.tensor(w), t)
        assert loss.item() == pytest.approx(kl(w, s, t).mean(), rel=1e-6)
        loss.backward()
        np.testing.assert_allclose(st.grad.numpy(), numeric_grad(lambda x: kl(w, x, t).mean(), s), rtol=1e-3, atol=1e-7)
    assert L.kd(torch.tensor(w), torch.tensor(w), 2.0)[0].item() == pytest.approx(0, abs=1e-9)
    assert L.hard(torch.tensor(s), torch.tensor(w))[0].item() == pytest.approx(ce(s, w.argmax(1)).mean(), rel=1e-6)
    y = np.arange(16) % 7
    assert L.gt(torch.tensor(s), torch.tensor(y))[0].item() == pytest.approx(ce(s, y).mean(), rel=1e-6)


def test_augconf_formula_gradient_and_schedule():
    s, w = logits(3)
    alpha = 0.3
    st = torch.tensor(s, requires_grad=True)
    loss, parts = L.augconf(st, torch.tensor(w), alpha, 2.0)
    def ref(x):
        return (1 - alpha) * kl(w, x, 2.0).mean() + alpha * ce(x, s.argmax(1)).mean()
    assert loss.item() == pytest.approx(ref(s), rel=1e-6)
    loss.backward()
    np.testing.assert_allclose(st.grad.numpy(), numeric_grad(ref, s), rtol=1e-3, atol=1e-7)
    f = objective("augconf", threshold=0.8, warmup_frac=0.5, ramp="step")
    alphas = [f(torch.tensor(s), torch.tensor(w), None, p)[1]["alpha"].item() for p in (0.0, 0.25, 0.5, 0.9)]
    assert alphas == pytest.approx([0.0, 0.4, 0.8, 0.8])


def test_augconf_ramps_by_epoch_as_the_official_code():
    """alpha = threshold * epoch / (epochs * rate) while epoch < int(epochs * rate), else threshold
    (the official superalignment_rate, 0.3 by default): 10 epochs ramp over epochs 0, 1, 2."""
    s, w = logits(5)
    f = objective("augconf", threshold=0.9, epochs=10)  # the defaults: by epoch, over 0.3 of the run
    alphas = [f(torch.tensor(s), torch.tensor(w), None, e / 10, e)[1]["alpha"].item() for e in range(5)]
    assert alphas == pytest.approx([0.0, 0.9 / 3, 0.9 * 2 / 3, 0.9, 0.9])
    # within an epoch alpha does not move, whatever the step
    assert f(torch.tensor(s), torch.tensor(w), None, 0.19, 1)[1]["alpha"].item() == pytest.approx(0.3)


def test_kd_weight_scales_the_weak_terms_and_not_the_ground_truth():
    """The official kd_loss_weight multiplies the KD and self-confidence terms; gt_loss_weight the GT term."""
    s, w = logits(6)
    y = torch.tensor(np.arange(16) % 7)
    for name in ("adaptconf", "augconf", "kd", "hard"):
        weak_only = objective(name, epochs=4)(torch.tensor(s), torch.tensor(w), y, 0.5, 2)[0].item()
        both = objective(name, epochs=4, kd_weight=0.25, gt_weight=1.5)(torch.tensor(s), torch.tensor(w), y, 0.5, 2)
        assert both[0].item() == pytest.approx(0.25 * weak_only + 1.5 * ce(s, y.numpy()).mean(), rel=1e-6), name


def test_the_ground_truth_criterion_is_timms():
    """Smoothing eps: (1 - eps) * CE + eps * mean over classes of -log p (timm's LabelSmoothingCrossEntropy);
    soft targets (mixup): -sum t log p (SoftTargetCrossEntropy)."""
    s, _ = logits(7)
    y = np.arange(16) % 7
    log_p = s - np.log(np.exp(s).sum(1, keepdims=True))
    smoothed = objective("gt", smoothing=0.1)(torch.tensor(s), None, torch.tensor(y), 0.0)[0].item()
    assert smoothed == pytest.approx((0.9 * -log_p[np.arange(16), y] - 0.1 * log_p.mean(1)).mean(), rel=1e-6)
    t = np.random.default_rng(1).dirichlet(np.ones(7), 16).astype(np.float32)
    soft = objective("gt", smoothing=0.1)(torch.tensor(s), None, torch.tensor(t), 0.0)[0].item()
    assert soft == pytest.approx((-(t * log_p).sum(1)).mean(), rel=1e-6)  # smoothing is already in soft targets


def test_objective_adds_ground_truth_and_beta_warmup():
    s, w = logits(4)
    y = torch.tensor(np.arange(16) % 7)
    base, _ = objective("kd")(torch.tensor(s), torch.tensor(w), y, 0.5)
    with_gt, parts = objective("kd", gt_weight=2.0)(torch.tensor(s), torch.tensor(w), y, 0.5)
    assert with_gt.item() == pytest.approx(base.item() + 2.0 * ce(s, y.numpy()).mean(), rel=1e-6)
    full = objective("adaptconf")(torch.tensor(s), torch.tensor(w), None, 0.1)[1]["beta"].item()
    half = objective("adaptconf", beta_warmup_frac=0.2)(torch.tensor(s), torch.tensor(w), None, 0.1)[1]["beta"].item()
    assert half == pytest.approx(full / 2)
    assert set(BUILT_IN) == {"hard", "kd", "augconf", "adaptconf", "evidential", "gt"}


DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(BUILT_IN))
def test_every_part_lives_on_the_logits_device(name, device):
    """The trainer stacks a step's parts into one tensor: each must be on the logits' device (augconf's
    alpha was a CPU tensor and crashed on CUDA). `meta` shows it on a CPU-only machine."""
    from w2s_pipe.pipeline.train.runs import MetricWindow

    student = torch.randn(4, 5, device=device)
    weak, labels = torch.randn(4, 5, device=device), torch.tensor([0, 1, 2, 3], device=device)
    loss, parts = objective(name, gt_weight=0.5)(student, weak, labels, 0.5)
    assert {p.device.type for p in parts.values()} == {torch.device(device).type}
    window = MetricWindow()
    window.add(1, parts, images=4)
    assert window.rows[0].device.type == torch.device(device).type and window.rows[0].shape == (len(parts),)


def test_a_loss_options_value_is_cast_to_its_defaults_type_or_refused():
    from w2s_pipe.pipeline.losses.base import cast

    assert cast("0.5", 0.0, "floor") == 0.5 and isinstance(cast(1, 0.0, "floor"), float)
    assert cast("3", 1, "k") == 3 and cast("off", True, "flag") is False and cast(True, False, "flag") is True
    for value, default in (("high", 0.0), (True, 0.0), ("maybe", True), ("2.5", 1)):
        with pytest.raises(W2SError, match=r"--loss-options x=.* is invalid: must be a (float|bool|int)"):
            cast(value, default, "x")
