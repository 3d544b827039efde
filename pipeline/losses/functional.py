"""The losses' tensor math: small pure functions of logits, which the loss classes (hard.py, kd.py,
...) call and a plug-in may reuse.

Shapes: student and weak logits (B, C), any float dtype (computed in float32); labels (B,) int.
Each loss returns (loss, parts): a scalar to minimise and a dict of detached scalars to log. The
weak-label losses take optional per-sample `weights` (B,) (`--weight-by`: `trust_weights`): the
batch's loss is then mean_i(w_i * loss_i) instead of the plain mean; the logged parts stay plain
means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

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


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return per_sample.mean() if weights is None else (weights.to(per_sample.device) * per_sample).mean()


def hard(student: torch.Tensor, weak: torch.Tensor, weights: torch.Tensor | None = None) -> LossOut:
    """Cross-entropy on the weak model's argmax: naive weak-to-strong."""
    per_sample = F.cross_entropy(student.float(), weak.argmax(dim=1), reduction="none")
    loss = weighted_mean(per_sample, weights)
    return loss, {"ce_weak": per_sample.mean().detach()}


def kd(student: torch.Tensor, weak: torch.Tensor, temperature: float = 1.0,
       weights: torch.Tensor | None = None) -> LossOut:
    """T^2-scaled KL divergence to the temperature-softened weak distribution, batch mean."""
    per_sample = kd_per_sample(student, weak, temperature)
    return weighted_mean(per_sample, weights), {"kd": per_sample.mean().detach()}


def augconf(student: torch.Tensor, weak: torch.Tensor, alpha: float, temperature: float = 1.0,
            weights: torch.Tensor | None = None) -> LossOut:
    """(1 - alpha) * KD + alpha * CE(s, argmax s): the auxiliary confidence loss (AugConf).

    alpha is a number fixed by the schedule (see `objective`), so it carries no gradient.
    """
    kd_term = kd_per_sample(student, weak, temperature)
    s = student.float()
    self_term = F.cross_entropy(s, s.argmax(dim=1).detach(), reduction="none")
    loss = weighted_mean((1 - alpha) * kd_term + alpha * self_term, weights)
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
    loss = weighted_mean((1 - beta) * kd_term + beta * ce_self, weights)
    return loss, {"kd": kd_term.mean().detach(), "self": ce_self.mean().detach(), "beta": beta.mean()}


def dirichlet_kl_to_uniform(alpha: torch.Tensor) -> torch.Tensor:
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
    return nll + anneal * dirichlet_kl_to_uniform((alpha - 1) * (1 - target) + 1)


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
    return weighted_mean(per_sample, weights), {"edl_weak": teachers.mean().detach(), "edl_self": own.mean().detach()}


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
