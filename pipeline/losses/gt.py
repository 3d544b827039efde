"""Ground-truth cross-entropy: the weak model itself, the strong ceiling (and, through
--gt-weight, the term added to the other losses)."""

from __future__ import annotations

from .base import WeakLoss


class GroundTruth(WeakLoss):
    name = "gt"
    summary = "ground-truth cross-entropy (weak model, strong ceiling)"
    reads_weak = False
    reads_gt = True
    settings = ("smoothing",)

    def term(self, student, weak, labels, step, weights):
        return self.functional.gt(student, labels, self.smoothing)
