"""mean-prob: the log of the members' mean softmax (the ensemble's predictive distribution)."""

from __future__ import annotations

from .base import Combination


class MeanProb(Combination):
    name = "mean-prob"
    summary = "the log of the members' mean softmax"

    def combine(self, x):
        return x.softmax(dim=-1).mean(dim=0).clamp(min=1e-30).log()
