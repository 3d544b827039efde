"""Knowledge distillation: T^2-scaled KL to the weak model's softened distribution."""

from __future__ import annotations

from .base import WeakLoss


class KD(WeakLoss):
    name = "kd"
    summary = "T^2-scaled KL to the weak soft labels"
    knobs = ("kd_temperature",)

    def term(self, student, weak, labels, step, weights):
        return self.functional.kd(student, weak, self.kd_temperature, weights)
