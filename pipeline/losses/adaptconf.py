"""The adaptive confidence loss of Guo et al. (2024), per sample (functional.adaptconf), with the
official few-shot and noisy-label code's optional beta warm-up (by step)."""

from __future__ import annotations

from .base import WeakLoss


class AdaptConf(WeakLoss):
    name = "adaptconf"
    summary = "adaptive confidence loss (Guo et al. 2024), per-sample beta"
    knobs = ("threshold", "kd_temperature", "beta_warmup_frac")
    schedule = "beta"  # the batch's mean beta, per step

    def term(self, student, weak, labels, step, weights):
        return self.functional.adaptconf(student, weak, self.threshold, self.kd_temperature,
                                         step.ramp(self.beta_warmup_frac), weights)
