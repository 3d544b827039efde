"""mean-logit: the members' mean logits (their softmax's geometric mean, renormalised)."""

from __future__ import annotations

from .base import Combination


class MeanLogit(Combination):
    name = "mean-logit"
    summary = "their mean logits"

    def combine(self, x):
        return x.mean(dim=0)
