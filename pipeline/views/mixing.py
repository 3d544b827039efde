"""Mixup and cutmix, the two ways a run mixes its images and their weak labels.

**Replayable, per sample** (`label --views K --mixup ...`, and `train` replaying that store): each
sample's mix in a pass is a function of (seed, shard, key, pass) and of its position in its shard,
nothing else, so `label` can store the weak model's output on the very mixed image `train` will
make. timm's batch mode mixes a batch with itself reversed, with one λ per batch: a pair is a
matter of which batch a sample lands in, which no store can know. Here every sample of a shard is
mixed with another sample of the same shard (its partner, drawn per pass), with its own λ: the same
mixing distribution as timm's (mixup λ ~ Beta(α, α) blends the images; cutmix pastes a box of the
partner of area 1 − λ, centred uniformly and clipped, λ then corrected to the pixels kept; a sample
mixes at all with probability `prob`, by cutmix rather than mixup with `switch_prob` when both are
on), drawn per sample instead of per batch. `MixPlan.row` carries a sample's mix as plain numbers;
`mix_pixels` applies a batch of them on any device, the same arithmetic in `label` (at the weak
model's size) and `train` (at the student's).

**Per batch** (`BatchMix`: timm's `Mixup`, for `train --mixup` from a centre store): the images of
a batch are mixed with the batch reversed, as timm does: mixup blends image i with image N-1-i by
lambda ~ Beta(mixup, mixup); cutmix pastes a box of image N-1-i into image i, and lambda is then the
share of image i's pixels left (timm's `correct_lam`). The ground-truth targets are timm's
(one-hot, smoothed, mixed with the same lambda). The weak labels are mixed as probability
distributions with the same lambda and pairing:

    p_mix = lambda * softmax(w_i) + (1 - lambda) * softmax(w_{N-1-i}),   weak_i := log(p_mix)

and the losses take log(p_mix) as the weak logits. So, under mixing, "the argmax of the weak
logits" (the hard loss's target, and adaptconf's CE(s, argmax w)) is the argmax of the mixed
distribution, and KD at temperature T compares the student with softmax(log(p_mix) / T), which is
p_mix itself at T = 1. These are the stored labels mixed, not what the weak model would say about
the mixed image (the replayable way, or the online teacher, gives that). Each batch's lambda, box
and whether it mixes at all are drawn from numpy's generator seeded by (run seed, rank, step,
micro-batch), so a resumed run mixes exactly as the uninterrupted one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from ...errors import W2SError
from .erasing import erase_where
from .params import seeded, view_seed

MIX_FIELDS = ("mixes", "cutmix", "weight", "top", "bottom", "left", "right")


@dataclass(frozen=True)
class MixRecipe:
    mixup: float = 0.0  # Beta parameter of mixup (0: off)
    cutmix: float = 0.0  # Beta parameter of cutmix (0: off)
    prob: float = 1.0  # chance a sample is mixed at all
    switch_prob: float = 0.5  # chance of cutmix rather than mixup when both are on

    @property
    def on(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    @classmethod
    def from_recipe(cls, recipe: dict) -> "MixRecipe":
        """The mixing of a per-view store's view recipe (`storage.schema.views_meta(attrs)["recipe"]`)."""
        return cls(recipe["mixup"], recipe["cutmix"], recipe["mixup_prob"], recipe["mixup_switch_prob"])

    def as_dict(self) -> dict:
        return {"mixup": self.mixup, "cutmix": self.cutmix, "mixup_prob": self.prob,
                "mixup_switch_prob": self.switch_prob}


@dataclass(frozen=True)
class MixPlan:
    """One sample's mix in one pass: `partner` is the position in the shard of the sample mixed in
    (-1: not mixed); mixup blends `lam` of the sample with 1 − lam of the partner; cutmix pastes a
    box of the partner of area 1 − lam centred at (`cy`, `cx`), fractions of the height and width."""

    partner: int = -1
    cutmix: bool = False
    lam: float = 1.0
    cy: float = 0.0
    cx: float = 0.0

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """cutmix's (top, bottom, left, right) in a height x width image, as timm's rand_bbox."""
        ratio = math.sqrt(1.0 - self.lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = min(int(self.cy * height), height - 1), min(int(self.cx * width), width - 1)
        return (max(0, cy - cut_h // 2), min(height, cy + (cut_h + 1) // 2),
                max(0, cx - cut_w // 2), min(width, cx + (cut_w + 1) // 2))

    def row(self, height: int, width: int) -> list[float]:
        """The mix as `MIX_FIELDS` at this size: the weight of the sample's own pixels (the targets'
        λ: for cutmix the share of pixels kept) and cutmix's box in pixels."""
        if self.partner < 0:
            return [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        if not self.cutmix:
            return [1.0, 0.0, self.lam, 0.0, 0.0, 0.0, 0.0]
        top, bottom, left, right = self.box(height, width)
        kept = 1.0 - (bottom - top) * (right - left) / (height * width)
        return [1.0, 1.0, kept, float(top), float(bottom), float(left), float(right)]


def plan(recipe: MixRecipe, seed: int, shard: str, key: str, epoch: int, position: int, count: int) -> MixPlan:
    """Sample `key` (at `position` of the `count` samples of `shard`) in pass `epoch`: its mix,
    drawn from a counter-based generator keyed by (seed, shard, key, pass) alone."""
    if not recipe.on or count < 2:
        return MixPlan()
    rng = np.random.Generator(np.random.Philox(key=view_seed(seed, "mix\0" + shard, key, epoch)))
    u = rng.random(4)
    if u[0] >= recipe.prob:
        return MixPlan()
    cutmix = recipe.mixup <= 0 or (recipe.cutmix > 0 and u[1] < recipe.switch_prob)
    alpha = recipe.cutmix if cutmix else recipe.mixup
    lam = float(rng.beta(alpha, alpha))
    partner = (position + 1 + min(int(u[2] * (count - 1)), count - 2)) % count  # any other sample of the shard
    return MixPlan(partner, cutmix, lam, float(u[3]), float(rng.random()))


def mix_pixels(images, partners, rows):
    """Each image mixed with its partner's by its row (`MixPlan.row` at their size): float (N, C, H, W)
    images and partners, (N, 7) rows, on one device; unmixed rows come back unchanged."""
    mixes, cut, weight = rows[:, 0] > 0, rows[:, 1] > 0, rows[:, 2].to(images.dtype)
    blend = torch.where(mixes & ~cut, weight, torch.ones_like(weight)).view(-1, 1, 1, 1)
    out = torch.where(blend < 1, images * blend + partners * (1 - blend), images)
    height, width = images.shape[-2:]
    ys = torch.arange(height, device=images.device).view(1, -1)
    xs = torch.arange(width, device=images.device).view(1, -1)
    inside_y = (ys >= rows[:, 3:4]) & (ys < rows[:, 4:5])
    inside_x = (xs >= rows[:, 5:6]) & (xs < rows[:, 6:7])
    box = (inside_y[:, :, None] & inside_x[:, None, :] & (mixes & cut).view(-1, 1, 1)).unsqueeze(1)
    return torch.where(box, partners, out)


def soft_targets(labels, partner_labels, weights, num_classes: int, smoothing: float = 0.0):
    """(N, C) ground-truth targets of mixed samples: weight x the sample's smoothed one-hot plus
    (1 − weight) x its partner's, as timm's mixup_target with a λ per sample."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off

    def one_hot(y):
        return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y.long().view(-1, 1), on)

    w = weights.float().view(-1, 1)
    return w * one_hot(labels) + (1 - w) * one_hot(partner_labels)


def finished_views(normalize, views, rows, mixed=None):
    """Training views as the weak model sees them in `label --views`, as `verify` replays them and as
    `train` makes them (one function, so the three cannot drift apart): uint8 (M, 3, H, W) views (or
    float ones from the device decoder), normalised on the device, erased where their rows (M, 12)
    hold a box (`erasing.erase_where`; rows None: not erased), and, with `mixed` = (partner views, mix
    rows (M, 7), partner rows), mixed with their partners' views, erased likewise (`mix_pixels`)."""
    def erased(x, erase_rows):
        return x if erase_rows is None else erase_where(x, erase_rows)

    x = erased(normalize(views), rows)
    if mixed is not None:
        partner_views, mix_rows, partner_rows = mixed
        x = mix_pixels(x, erased(normalize(partner_views), partner_rows), mix_rows.to(x.device))
    return x


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
        self.seed, self.num_classes, self.smoothing = seed, num_classes, smoothing
        self.timm = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob, mode="batch",
                          correct_lam=True, label_smoothing=smoothing, num_classes=num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None, weak: torch.Tensor | None, *,
                 rank: int, step: int, micro: int = 0):
        """Mix `images` in place; returns (images, soft ground-truth targets or None, mixed weak
        log-probabilities or None, lambda)."""
        if len(images) % 2:
            raise W2SError(f"mixup and cutmix pair each image with another: the batch of {len(images)} must be even "
                           "(--batch-size)")
        # timm draws a batch's lambda, box and switch from numpy's global generator: seed it for this
        # batch alone (and restore it after).
        lam = seeded(self.timm._mix_batch, view_seed(self.seed, "mix", f"{rank}.{micro}", step), images)
        targets = None if labels is None else mixup_target(labels, self.num_classes, lam, self.smoothing)
        return images, targets, None if weak is None else mix_weak(weak, lam), float(lam)
