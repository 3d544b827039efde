"""Replayable mixup and cutmix: each sample's mix in a pass is a function of (seed, shard, key, pass)
and of its position in its shard, nothing else, so `label --views K --mixup ...` can store the weak
model's output on the very mixed image `train` will make, and `train` can replay it.

timm's batch mode mixes a batch with itself reversed, with one λ per batch: a pair is a matter of
which batch a sample lands in, which no store can know. Here every sample of a shard is mixed with
another sample of the same shard (its partner, drawn per pass), with its own λ: the same mixing
distribution as timm's (mixup λ ~ Beta(α, α) blends the images; cutmix pastes a box of the
partner of area 1 − λ, centred uniformly and clipped, λ then corrected to the pixels kept; a
sample mixes at all with probability `prob`, by cutmix rather than mixup with `switch_prob` when
both are on), drawn per sample instead of per batch.

`MixPlan.row` carries a sample's mix as plain numbers; `mix_pixels` applies a batch of them on any
device, the same arithmetic in `label` (at the weak model's size) and `train` (at the student's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .views import view_seed

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
    import numpy as np

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
    import torch

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
    import torch

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
    hold a box (`crops.erase_where`; rows None: not erased), and, with `mixed` = (partner views, mix
    rows (M, 7), partner rows), mixed with their partners' views, erased likewise (`mix_pixels`)."""
    from .crops import erase_where

    def erased(x, erase_rows):
        return x if erase_rows is None else erase_where(x, erase_rows)

    x = erased(normalize(views), rows)
    if mixed is not None:
        partner_views, mix_rows, partner_rows = mixed
        x = mix_pixels(x, erased(normalize(partner_views), partner_rows), mix_rows.to(x.device))
    return x
