"""Mixup and cutmix with stored weak labels: the weak distributions are mixed with the images' lambda
and pairing, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.losses import functional as L
from w2s_pipe.pipeline.views.mixing import BatchMix, mix_weak


def test_mixed_weak_labels_by_hand():
    """Two samples whose weak models say (0.5, 0.45, 0.05) and (0.05, 0.45, 0.5); mixed half and half
    both become (0.275, 0.45, 0.275): the hard target is class 1, which neither weak label's argmax is."""
    p = np.array([[0.5, 0.45, 0.05], [0.05, 0.45, 0.5]])
    weak = torch.tensor(np.log(p) + np.array([[3.0], [-1.0]]), dtype=torch.float32)  # logits: log p up to a constant
    mixed = mix_weak(weak, 0.5)
    np.testing.assert_allclose(mixed.exp().numpy(), [[0.275, 0.45, 0.275]] * 2, rtol=1e-6)
    assert mixed.argmax(1).tolist() == [1, 1]
    # lambda 0.8: sample 0 is 0.8 p0 + 0.2 p1 = (0.41, 0.45, 0.14); sample 1 is 0.8 p1 + 0.2 p0 = (0.14, 0.45, 0.41)
    mixed = mix_weak(weak, 0.8)
    np.testing.assert_allclose(mixed.exp().numpy(), [[0.41, 0.45, 0.14], [0.14, 0.45, 0.41]], rtol=1e-6)
    # what each loss then sees: hard is CE on class 1; KD at T=1 is KL(p_mix || softmax(s)); adaptconf's
    # CE(s, argmax w) uses class 1 too
    s = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    log_q = torch.log_softmax(s, 1).numpy()
    hard = L.hard(s, mixed)[0].item()
    assert hard == pytest.approx(-(log_q[0, 1] + log_q[1, 1]) / 2, rel=1e-6)
    pm = np.array([[0.41, 0.45, 0.14], [0.14, 0.45, 0.41]])
    kd = L.kd(s, mixed, 1.0)[0].item()
    assert kd == pytest.approx((pm * (np.log(pm) - log_q)).sum(1).mean(), rel=1e-5)
    ce_self, ce_weak = -log_q[[0, 1], [2, 1]], -log_q[[0, 1], [1, 1]]
    beta = np.exp(ce_self / 0.5) / (np.exp(ce_self / 0.5) + np.exp(ce_weak / 0.5))
    adapt, parts = L.adaptconf(s, mixed, 0.5)
    assert parts["beta"].item() == pytest.approx(beta.mean(), rel=1e-5)
    # the extremes are the unmixed and the partner's distributions, with no -inf from underflow
    assert torch.allclose(mix_weak(weak, 1.0), torch.log_softmax(weak, 1))
    assert torch.allclose(mix_weak(weak, 0.0), torch.log_softmax(weak, 1).flip(0))
    far = torch.tensor([[200.0, 0.0, -200.0], [-200.0, 0.0, 200.0]])
    assert torch.isfinite(mix_weak(far, 0.3)).all()


def batch(n=6, classes=5, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g), torch.arange(n) % classes,
            torch.randn(n, classes, generator=g) * 3)


def test_mixup_mixes_images_targets_and_weak_labels_with_one_lambda():
    images, labels, weak = batch()
    mixer = BatchMix(mixup=0.8, cutmix=0.0, prob=1.0, switch_prob=0.5, smoothing=0.0, num_classes=5, seed=3)
    out, targets, mixed, lam = mixer(images.clone(), labels, weak, rank=0, step=7)
    assert 0 < lam < 1
    torch.testing.assert_close(out, lam * images + (1 - lam) * images.flip(0))
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    torch.testing.assert_close(targets, lam * onehot + (1 - lam) * onehot.flip(0))
    p = weak.softmax(1)
    torch.testing.assert_close(mixed.exp(), lam * p + (1 - lam) * p.flip(0))


def test_cutmix_mixes_the_weak_labels_with_the_pasted_area():
    images, labels, weak = batch(size=16)
    mixer = BatchMix(mixup=0.0, cutmix=1.0, prob=1.0, switch_prob=0.5, smoothing=0.0, num_classes=5, seed=0)
    out, targets, mixed, lam = mixer(images.clone(), labels, weak, rank=0, step=1)
    pasted = (out != images).any(1)  # (N, H, W): pixels that came from the partner image
    assert pasted.any()
    area = pasted[0].float().mean().item()
    assert lam == pytest.approx(1 - area, abs=1 / 256 + 1e-6)  # timm's correct_lam: the share of pixels kept
    p = weak.softmax(1)
    torch.testing.assert_close(mixed.exp(), lam * p + (1 - lam) * p.flip(0))


def test_a_batchs_mix_is_a_function_of_seed_rank_and_step():
    images, labels, weak = batch()
    mixer = BatchMix(mixup=0.8, cutmix=1.0, prob=0.8, switch_prob=0.5, smoothing=0.1, num_classes=5, seed=0)
    state = np.random.get_state()[1].copy()
    draws = [mixer(images.clone(), labels, weak, rank=r, step=s)[3] for r, s in ((0, 1), (0, 1), (1, 1), (0, 2))]
    assert draws[0] == draws[1] and len({draws[0], draws[2], draws[3]}) == 3
    assert (np.random.get_state()[1] == state).all()  # the run's own numpy generator is left as it was
    lams = [mixer(images.clone(), labels, weak, rank=0, step=s)[3] for s in range(200)]
    assert 0.1 < np.mean(np.array(lams) == 1.0) < 0.3  # prob 0.8: a fifth of the batches are not mixed


def test_an_odd_batch_is_refused():
    images, labels, weak = batch(n=5)
    mixer = BatchMix(mixup=0.8, cutmix=0.0, prob=1.0, switch_prob=0.5, smoothing=0.0, num_classes=5, seed=0)
    with pytest.raises(W2SError, match="batch of 5 must be even"):
        mixer(images, labels, weak, rank=0, step=0)
