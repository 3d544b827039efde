"""Hard labels: cross-entropy on the weak model's argmax (naive weak-to-strong)."""

from __future__ import annotations

from .base import WeakLoss


class Hard(WeakLoss):
    name = "hard"
    summary = "cross-entropy on the weak argmax"

    def term(self, student, weak, labels, step, weights):
        return self.functional.hard(student, weak, weights)
