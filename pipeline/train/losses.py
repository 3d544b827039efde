"""The weak-to-strong losses: small pure functions of logits, and the objective of a run, which
picks its loss from the one table of losses (config/choices.py `LOSSES`: name, summary, what it
reads, its term here).

Shapes: student and weak logits (B, C), any float dtype (computed in float32); labels (B,) int.
Each returns (loss, parts): a scalar to minimise and a dict of detached scalars to log. The
weak-label losses take optional per-sample `weights` (B,) (`--weight-by`: `trust_weights`): the
batch's loss is then mean_i(w_i * loss_i) instead of the plain mean; the logged parts stay plain
means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..config.choices import LOSS_NAMES, LOSSES, RAMPS, check_choice

LossOut = tuple[torch.Tensor, dict[str, torch.Tensor]]


def kd_per_sample(student: torch.Tensor, weak: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B,) T^2 * KL(softmax(w/T) || softmax(s/T)), summed over classes."""
    t = float(temperature)
    log_ps = F.log_softmax(student.float() / t, dim=1)
    log_pw = F.log_softmax(weak.float() / t, dim=1)
    return (log_pw.exp() * (log_pw - log_ps)).sum(dim=1) * t * t


def trust_weights(trust: torch.Tensor) -> torch.Tensor:
    """`--weight-by`'s per-sample weights: w_i = s_i / mean_j(s_j) over the batch, for a stored
    statistic s >= 0 (confidence or margin), so the mean weight is 1; a batch whose statistics are
    all 0 is weighted evenly. float32 (B,), no gradient."""
    s = trust.detach().float().clamp(min=0)
    mean = s.mean()
    return torch.where(mean > 0, s / mean.clamp(min=torch.finfo(torch.float32).tiny), torch.ones_like(s))


def _mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return per_sample.mean() if weights is None else (weights.to(per_sample.device) * per_sample).mean()


def hard(student: torch.Tensor, weak: torch.Tensor, weights: torch.Tensor | None = None) -> LossOut:
    """Cross-entropy on the weak model's argmax: naive weak-to-strong."""
    per_sample = F.cross_entropy(student.float(), weak.argmax(dim=1), reduction="none")
    loss = _mean(per_sample, weights)
    return loss, {"ce_weak": per_sample.mean().detach()}


def kd(student: torch.Tensor, weak: torch.Tensor, temperature: float = 1.0,
       weights: torch.Tensor | None = None) -> LossOut:
    """T^2-scaled KL divergence to the temperature-softened weak distribution, batch mean."""
    per_sample = kd_per_sample(student, weak, temperature)
    return _mean(per_sample, weights), {"kd": per_sample.mean().detach()}


def augconf(student: torch.Tensor, weak: torch.Tensor, alpha: float, temperature: float = 1.0,
            weights: torch.Tensor | None = None) -> LossOut:
    """(1 - alpha) * KD + alpha * CE(s, argmax s): the auxiliary confidence loss (AugConf).

    alpha is a number fixed by the schedule (see `objective`), so it carries no gradient.
    """
    kd_term = kd_per_sample(student, weak, temperature)
    s = student.float()
    self_term = F.cross_entropy(s, s.argmax(dim=1).detach(), reduction="none")
    loss = _mean((1 - alpha) * kd_term + alpha * self_term, weights)
    return loss, {"kd": kd_term.mean().detach(), "self": self_term.mean().detach(),
                  "alpha": s.new_tensor(float(alpha))}


def adaptconf(student: torch.Tensor, weak: torch.Tensor, threshold: float, temperature: float = 1.0,
              beta_scale: float = 1.0, weights: torch.Tensor | None = None) -> LossOut:
    """The adaptive confidence loss of Guo et al. (2024), per sample, averaged over the batch.

    beta = exp(CE(s, argmax s)/tau) / (exp(CE(s, argmax s)/tau) + exp(CE(s, argmax w)/tau)), detached;
    loss = (1 - beta) * T^2 * KL(softmax(w/T) || softmax(s/T)) + beta * CE(s, argmax s).
    beta <= 1/2, with equality where student and teacher agree. `beta_scale` (0..1) is the optional
    warm-up factor of the official few-shot and noisy-label code.
    """
    s = student.float()
    self_pred = s.argmax(dim=1)
    ce_self = F.cross_entropy(s, self_pred, reduction="none")
    ce_weak = F.cross_entropy(s, weak.argmax(dim=1), reduction="none")
    # exp(a/t) / (exp(a/t) + exp(b/t)) == sigmoid((a - b)/t), without overflow for large CE/t.
    beta = (torch.sigmoid((ce_self - ce_weak) / float(threshold)) * beta_scale).detach()
    kd_term = kd_per_sample(s, weak, temperature)
    loss = _mean((1 - beta) * kd_term + beta * ce_self, weights)
    return loss, {"kd": kd_term.mean().detach(), "self": ce_self.mean().detach(), "beta": beta.mean()}


def _dirichlet_kl_to_uniform(alpha: torch.Tensor) -> torch.Tensor:
    """(B,) KL(Dir(alpha) || Dir(1, ..., 1))."""
    total = alpha.sum(-1)
    c = alpha.shape[-1]
    return (torch.lgamma(total) - torch.lgamma(alpha).sum(-1) - math.lgamma(c)
            + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(total)[:, None])).sum(-1))


def edl(student: torch.Tensor, target: torch.Tensor, anneal: float) -> torch.Tensor:
    """(B,) the evidential (Dirichlet) log loss of Sensoy et al. (2018) with one-hot `target` (B, C):
    evidence relu(s), alpha = evidence + 1, S = sum(alpha); sum_c y_c (log S - log alpha_c) + anneal *
    KL(Dir(y + (1 - y) alpha) || Dir(1)), the KL over the evidence left on the wrong classes."""
    alpha = F.relu(student.float()) + 1
    nll = (target * (torch.log(alpha.sum(-1, keepdim=True)) - torch.log(alpha))).sum(-1)
    return nll + anneal * _dirichlet_kl_to_uniform((alpha - 1) * (1 - target) + 1)


def evidential(student: torch.Tensor, members: torch.Tensor, gamma: float, progress: float,
               weights: torch.Tensor | None = None) -> LossOut:
    """The evidential loss over an ensemble of weak teachers (Bayesian WeakS-to-Strong, Cui et al.
    2024, as RAVEN ports it to vision): members (B, M, C) logits,
    loss = (1 - gamma) * sum_m EDL(s, onehot(argmax w_m)) + gamma * EDL(s, onehot(argmax s)),
    the KL regulariser annealed with the fraction of training done (`progress`). (RAVEN multiplies
    each teacher's term by its soft labels summed over the classes: 1, so omitted.)"""
    s = student.float()
    c = s.shape[-1]
    own = edl(s, F.one_hot(s.argmax(-1), c).float(), progress)
    teachers = sum(edl(s, F.one_hot(members[:, m].argmax(-1), c).float(), progress) for m in range(members.shape[1]))
    per_sample = (1 - gamma) * teachers + gamma * own
    return _mean(per_sample, weights), {"edl_weak": teachers.mean().detach(), "edl_self": own.mean().detach()}


def gt(student: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> LossOut:
    """Ground-truth cross-entropy: the weak model itself, the strong ceiling, and the optional term
    added to the other losses. As timm's training criterion: labels (B,) with `smoothing`
    (timm's LabelSmoothingCrossEntropy), or soft targets (B, C) from mixup, already smoothed
    (timm's SoftTargetCrossEntropy)."""
    s = student.float()
    if labels.ndim == 2:
        loss = SoftTargetCrossEntropy()(s, labels.float())
    elif smoothing:
        loss = LabelSmoothingCrossEntropy(smoothing)(s, labels.long())
    else:
        loss = F.cross_entropy(s, labels.long())
    return loss, {"ce_gt": loss.detach()}


@dataclass(frozen=True)
class Knobs:
    """What a loss term is computed with at one step (its schedule already applied)."""

    temperature: float = 1.0  # T of the KD terms
    threshold: float = 0.5  # adaptconf's tau
    alpha: float = 0.0  # augconf's weight of the self term at this step (threshold x its ramp)
    beta_scale: float = 1.0  # adaptconf's beta warm-up factor at this step
    smoothing: float = 0.0  # of the ground-truth criterion
    gamma: float = 0.5  # evidential's weight of the student's own term
    progress: float = 0.0  # the fraction of training done (evidential's KL annealing)


# Each loss of the table (choices.LOSSES) as f(student, weak, labels, knobs, weights) -> (loss, parts);
# `weights` (B,) or None weighs the weak-label loss per sample (--weight-by).
def hard_term(student, weak, labels, knobs: Knobs, weights) -> LossOut:
    return hard(student, weak, weights)


def kd_term(student, weak, labels, knobs: Knobs, weights) -> LossOut:
    return kd(student, weak, knobs.temperature, weights)


def augconf_term(student, weak, labels, knobs: Knobs, weights) -> LossOut:
    return augconf(student, weak, knobs.alpha, knobs.temperature, weights)


def adaptconf_term(student, weak, labels, knobs: Knobs, weights) -> LossOut:
    return adaptconf(student, weak, knobs.threshold, knobs.temperature, knobs.beta_scale, weights)


def evidential_term(student, members, labels, knobs: Knobs, weights) -> LossOut:
    return evidential(student, members, knobs.gamma, knobs.progress, weights)


def gt_term(student, weak, labels, knobs: Knobs, weights) -> LossOut:
    return gt(student, labels, knobs.smoothing)


TERMS = {name: globals()[loss.term] for name, loss in LOSSES.items()}  # a missing term fails here, at import


def objective(name: str, *, temperature: float = 1.0, threshold: float = 0.5, warmup_frac: float = 0.3,
              ramp: str = "epoch", epochs: int = 1, beta_warmup_frac: float = 0.0, gt_weight: float = 0.0,
              kd_weight: float = 1.0, smoothing: float = 0.0, evidential_gamma: float = 0.5,
              members=None) -> Callable[..., LossOut]:
    """The training objective: kd_weight * loss `name` (its term in the table, with its schedule),
    plus gt_weight * the ground-truth criterion (`gt`: smoothed, or soft targets under mixup), as
    the official code's kd_loss_weight and gt_loss_weight. With a loss that reads only the ground
    truth ("gt") the objective is the criterion alone.

    Returns f(student, weak, labels, progress, epoch, trust, ids): progress is the fraction of
    training done (0..1), epoch the 0-based epoch, trust (B,) the samples' stored statistic under
    `--weight-by` (None: unweighted), which weighs the weak-label loss alone (`trust_weights`).
    augconf's alpha ramps from 0 to `threshold` over `warmup_frac` of the run: by epoch as the
    official code (alpha = threshold * epoch / (epochs * warmup_frac) while epoch < int(epochs *
    warmup_frac)), or by step (`ramp="step"`: threshold * progress / warmup_frac). adaptconf's
    optional beta warm-up is by step.

    `weak` may be every member's logits (B, M, C): `members` (weak/members.py) makes them the weak
    output (B, C) the loss reads, with a per-sample mask that multiplies the weights, using the
    samples' `ids` (B,) where it keeps a row per sample; a loss that reads the members themselves
    (the table's `members`: evidential) gets them, (B, 1, C) from one store.
    """
    check_choice("--loss", name, LOSS_NAMES)
    check_choice("--ramp", ramp, RAMPS)
    term, weak_loss, reads_members = TERMS[name], LOSSES[name].needs_weak, LOSSES[name].members

    def by_step(progress: float, frac: float) -> float:
        return 1.0 if frac <= 0 else min(1.0, max(0.0, progress / frac))

    def by_epoch(epoch: int) -> float:
        ramp_epochs = epochs * warmup_frac
        return epoch / ramp_epochs if epoch < int(ramp_epochs) else 1.0

    def f(student, weak, labels, progress: float, epoch: int = 0, trust=None, ids=None) -> LossOut:
        alpha = by_epoch(epoch) if ramp == "epoch" else by_step(progress, warmup_frac)
        knobs = Knobs(temperature, threshold, threshold * alpha, by_step(progress, beta_warmup_frac), smoothing,
                      evidential_gamma, progress)
        weights = None if trust is None or not weak_loss else trust_weights(trust)
        read, extra = weak, {}
        if weak is not None and weak_loss and (weak.ndim == 3 or reads_members):
            raw = weak if weak.ndim == 3 else weak[:, None]
            weak, mask, extra = members(student, raw, epoch, ids) if members is not None else (raw[:, 0], None, {})
            if mask is not None:
                weights = mask if weights is None else weights.to(mask.device) * mask
            read = raw if reads_members else weak
        loss, parts = term(student, read, labels, knobs, weights)
        if not weak_loss:
            return loss, {"loss": loss.detach(), **parts}
        if kd_weight != 1.0:
            loss = kd_weight * loss
        if gt_weight:
            ce, gt_parts = gt(student, labels, smoothing)
            loss = loss + gt_weight * ce
            parts = {**parts, **gt_parts}
        agree = (student.detach().argmax(1) == weak.argmax(1)).float().mean()
        return loss, {"loss": loss.detach(), **parts, **extra, "agree": agree}

    return f
