"""The objective of a run: its loss (pipeline/losses/: a class per loss, found by name in the
registry) times --kd-weight, plus --gt-weight times the ground-truth criterion, with the weak
output an ensemble's members make at each step (weak/members.py) and the per-sample weights of
--weight-by.
"""

from __future__ import annotations

from typing import Callable

from ..config.choices import RAMPS, check_choice
from ..losses.base import Step, WeakLoss
from ..losses.functional import LossOut, gt, trust_weights
from ..losses.registry import build_loss


def objective(loss: str | WeakLoss, *, temperature: float = 1.0, threshold: float = 0.5, warmup_frac: float = 0.3,
              ramp: str = "epoch", epochs: int = 1, beta_warmup_frac: float = 0.0, gt_weight: float = 0.0,
              kd_weight: float = 1.0, smoothing: float = 0.0, evidential_gamma: float = 0.5, loss_options=None,
              members=None) -> Callable[..., LossOut]:
    """The training objective: kd_weight * `loss` (a loss built from the registry, or its name, built
    here from the knobs given), plus gt_weight * the ground-truth criterion (`gt`: smoothed, or soft
    targets under mixup), as the official code's kd_loss_weight and gt_loss_weight. With a loss that
    reads only the ground truth ("gt") the objective is the criterion alone.

    Returns f(student, weak, labels, progress, epoch, trust, ids): progress is the fraction of
    training done (0..1), epoch the 0-based epoch, trust (B,) the samples' stored statistic under
    `--weight-by` (None: unweighted), which weighs the weak-label loss alone (`trust_weights`).

    `weak` may be every member's logits (B, M, C): `members` (weak/members.py) makes them the weak
    output (B, C) the loss reads, with a per-sample mask that multiplies the weights, using the
    samples' `ids` (B,) where it keeps a row per sample; a loss that reads the members themselves
    (`reads_members`: evidential) gets them, (B, 1, C) from one store.
    """
    check_choice("--ramp", ramp, RAMPS)
    if not isinstance(loss, WeakLoss):
        loss = build_loss(loss, dict(kd_temperature=temperature, threshold=threshold, warmup_frac=warmup_frac,
                                     ramp=ramp, beta_warmup_frac=beta_warmup_frac, smoothing=smoothing,
                                     evidential_gamma=evidential_gamma, loss_options=loss_options))
    weak_loss, reads_members = loss.reads_weak, loss.reads_members

    def f(student, weak, labels, progress: float, epoch: int = 0, trust=None, ids=None) -> LossOut:
        weights = None if trust is None or not weak_loss else trust_weights(trust)
        read, extra = weak, {}
        if weak is not None and weak_loss and (weak.ndim == 3 or reads_members):
            raw = weak if weak.ndim == 3 else weak[:, None]
            weak, mask, extra = members(student, raw, epoch, ids) if members is not None else (raw[:, 0], None, {})
            if mask is not None:
                weights = mask if weights is None else weights.to(mask.device) * mask
            read = raw if reads_members else weak
        loss_value, parts = loss.term(student, read, labels, Step(progress, epoch, epochs), weights)
        if not weak_loss:
            return loss_value, {"loss": loss_value.detach(), **parts}
        if kd_weight != 1.0:
            loss_value = kd_weight * loss_value
        if gt_weight:
            ce, gt_parts = gt(student, labels, smoothing)
            loss_value = loss_value + gt_weight * ce
            parts = {**parts, **gt_parts}
        agree = (student.detach().argmax(1) == weak.argmax(1)).float().mean()
        return loss_value, {"loss": loss_value.detach(), **parts, **extra, "agree": agree}

    return f
