"""Mixup and cutmix (timm's `Mixup`, per batch) with the stored weak labels mixed alongside.

The images of a batch are mixed with the batch reversed, as timm does: mixup blends image i with
image N-1-i by lambda ~ Beta(mixup, mixup); cutmix pastes a box of image N-1-i into image i, and
lambda is then the share of image i's pixels left (timm's `correct_lam`). The ground-truth targets
are timm's (one-hot, smoothed, mixed with the same lambda). The weak labels are mixed as
probability distributions with the same lambda and pairing:

    p_mix = lambda * softmax(w_i) + (1 - lambda) * softmax(w_{N-1-i}),   weak_i := log(p_mix)

and the losses take log(p_mix) as the weak logits. So, under mixing, "the argmax of the weak
logits" (the hard loss's target, and adaptconf's CE(s, argmax w)) is the argmax of the mixed
distribution, and KD at temperature T compares the student with softmax(log(p_mix) / T), which is
p_mix itself at T = 1 (at other T, p_mix sharpened or flattened). These are the mixed stored views'
labels, not what the weak model would say about the mixed image (a later issue labels the views).

Each batch's lambda, box and whether it mixes at all are drawn from numpy's generator seeded by
(run seed, rank, step, micro-batch), so a resumed run mixes exactly as the uninterrupted one did.
"""

from __future__ import annotations

import math

import torch

from ...errors import W2SError
from ..data.views import seeded, view_seed


def mix_weak(weak: torch.Tensor, lam: float) -> torch.Tensor:
    """log(lam * softmax(w) + (1 - lam) * softmax(w reversed along the batch)), float32 (B, C),
    computed in log space (no probability underflows to a -inf log)."""
    log_p = torch.log_softmax(weak.float(), dim=1)
    if lam >= 1.0:
        return log_p
    if lam <= 0.0:  # a cutmix box that covers the whole image
        return log_p.flip(0)
    terms = torch.stack([log_p + math.log(lam), log_p.flip(0) + math.log(1.0 - lam)])
    return torch.logsumexp(terms, dim=0)


class BatchMix:
    """timm's Mixup in batch mode: `mixup` and `cutmix` are the Beta parameters (0: off), `prob`
    the chance a batch is mixed at all, `switch_prob` the chance of cutmix when both are on."""

    def __init__(self, *, mixup: float, cutmix: float, prob: float, switch_prob: float, smoothing: float,
                 num_classes: int, seed: int):
        from timm.data import Mixup

        self.seed, self.num_classes, self.smoothing = seed, num_classes, smoothing
        self.timm = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob, mode="batch",
                          correct_lam=True, label_smoothing=smoothing, num_classes=num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None, weak: torch.Tensor | None, *,
                 rank: int, step: int, micro: int = 0):
        """Mix `images` in place; returns (images, soft ground-truth targets or None, mixed weak
        log-probabilities or None, lambda)."""
        from timm.data.mixup import mixup_target

        if len(images) % 2:
            raise W2SError(f"mixup and cutmix pair each image with another: the batch of {len(images)} must be even "
                           "(--batch-size)")
        # timm draws a batch's lambda, box and switch from numpy's global generator: seed it for this
        # batch alone (and restore it after).
        lam = seeded(self.timm._mix_batch, view_seed(self.seed, "mix", f"{rank}.{micro}", step), images)
        targets = None if labels is None else mixup_target(labels, self.num_classes, lam, self.smoothing)
        return images, targets, None if weak is None else mix_weak(weak, lam), float(lam)
