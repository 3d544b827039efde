"""The auxiliary confidence loss (Burns et al. 2023's, as the paper's AugConf): (1 - alpha) KD +
alpha CE(s, argmax s), alpha ramped from 0 to --threshold over --warmup-frac of the run."""

from __future__ import annotations

from .base import WeakLoss


class AugConf(WeakLoss):
    name = "augconf"
    summary = "(1-alpha) KD + alpha CE(s, argmax s), alpha ramped over --warmup-frac of the run"
    knobs = ("threshold", "kd_temperature", "warmup_frac", "ramp")
    schedule = "alpha"

    def alpha(self, step) -> float:
        """alpha at `step`: by epoch as the official code (threshold x epoch / (epochs x warmup_frac)
        while epoch < int(epochs x warmup_frac)), or by step (ramp "step": threshold x progress / warmup_frac)."""
        if self.ramp == "step":
            return self.threshold * step.ramp(self.warmup_frac)
        ramp_epochs = step.epochs * self.warmup_frac
        return self.threshold * (step.epoch / ramp_epochs if step.epoch < int(ramp_epochs) else 1.0)

    def term(self, student, weak, labels, step, weights):
        return self.functional.augconf(student, weak, self.alpha(step), self.kd_temperature, weights)
