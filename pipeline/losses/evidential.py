"""The evidential (Dirichlet) loss over each weak teacher: Bayesian WeakS-to-Strong (Cui et al.
2024), as RAVEN ports it to vision; its KL regulariser annealed over the run."""

from __future__ import annotations

from .base import WeakLoss


class Evidential(WeakLoss):
    name = "evidential"
    summary = ("evidential (Dirichlet) loss over each weak teacher, Bayesian WeakS-to-Strong (Cui et al. 2024): "
               "(1-gamma) sum_m EDL(s, argmax w_m) + gamma EDL(s, argmax s), its KL annealed over the run")
    knobs = ("evidential_gamma",)
    reads_members = True

    def term(self, student, weak, labels, step, weights):
        return self.functional.evidential(student, weak, self.evidential_gamma, step.progress, weights)
