"""An ensemble's members combined at every step, with the student in the loop: the methods after
the paper that read each weak teacher on its own (`train --labels A,B,... --ensemble HOW`).

The batch brings every member's logits (B, M, C) (`StoreJoin` with `stacked=True`); `Members`
turns them into the one weak output each loss reads (B, C), and a per-sample mask (B,) or None:

- learned / learned-sample (RAVEN, Sobotka et al. 2025): weights w on the simplex, one row for the
  run (global) or one per sample, combine the members' probabilities, t = sum_m w_m softmax(z_m);
  the weak output is log t. They learn with the student: after the batch's target is taken, each
  row takes a projected gradient step on the cross-entropy of the (detached) student under t,
  L = -sum_c t_c log softmax(s)_c = sum_m w_m CE(s, softmax(z_m)), so dL/dw_m = CE(s, softmax(z_m))
  (global: its batch mean; per sample: the sample's own), w <- the simplex's nearest point to
  w - lr g, as RAVEN's weights learn under its cross-entropy loss (RAVEN clamps and renormalises
  instead: `simplex_step` says why not). Under torchrun every rank takes the same step
  (the global gradient averaged, the per-sample rows gathered).
- specialist (co-supervision, Liu & Alahi 2024): each member was trained on a subset of the
  classes (`train --classes`), the subsets a partition of all classes; per sample the member whose
  classes hold the student's argmax gives the weak output, and the sample counts only where that
  member's argmax is among the student's top-K (the teacher-student agreement that CSL denoises
  with). The student is the current one, or (`--specialist-by STORE`, as CSL) an earlier student
  whose stored output comes after the members in the batch.
- mean-prob, mean-logit, vote: the fixed combinations of ensemble.py, here only because the run
  also needs the members (--easy-epochs, --loss evidential's members are read raw).

The easy-sample start (RAVEN, `--easy-epochs N`): in the first N epochs a sample counts only
where every member's argmax is the same; learned weights stay at their start meanwhile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import W2SError
from ..runtime import distributed
from .ensemble import combine_tensor

LEARNED = ("learned", "learned-sample")


def simplex_step(weights: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """A projected gradient step: each row of w - lr g projected onto the simplex (the Euclidean
    projection of Duchi et al. 2008: subtract the threshold theta that makes the positive parts sum to
    1). RAVEN clamps at 1e-6 and renormalises instead, which sends every row back to uniform once
    lr g exceeds the weights (a cross-entropy of 2.5 at lr 0.5 does); the projection moves by the
    differences between the members' gradients, whatever their level."""
    v = weights - lr * grad
    u = v.sort(dim=-1, descending=True).values
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    css = u.cumsum(dim=-1) - 1
    rho = ((u - css / k) > 0).sum(dim=-1, keepdim=True)  # how many stay positive (>= 1)
    theta = css.gather(-1, rho - 1) / rho
    return (v - theta).clamp(min=0)


def member_ce(student: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """(B, M): the cross-entropy of the detached student's softmax under each member's softmax."""
    log_ps = F.log_softmax(student.detach().float(), dim=-1)
    return -(F.softmax(members.float(), dim=-1) * log_ps[:, None, :]).sum(-1)


def all_agree(members: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every member's argmax is the first's."""
    top = members.argmax(-1)
    return (top == top[:, :1]).all(-1)


def class_owner(classes: list[list[int]], num_classes: int) -> torch.Tensor:
    """(C,) the member whose classes hold each class; one line naming the class held by none or two."""
    owner = torch.full((num_classes,), -1, dtype=torch.long)
    for m, held in enumerate(classes):
        for c in held:
            if not 0 <= c < num_classes:
                raise W2SError(f"--ensemble specialist: member {m + 1}'s class {c} is outside 0..{num_classes - 1}",
                               option="--ensemble")
            if owner[c] >= 0:
                raise W2SError(f"--ensemble specialist: class {c} is held by members {int(owner[c]) + 1} and {m + 1}; "
                               "the members' classes (train --classes) must split the classes once", option="--ensemble")
            owner[c] = m
    if (owner < 0).any():
        c = int((owner < 0).nonzero()[0])
        raise W2SError(f"--ensemble specialist: class {c} is held by no member; the members' classes (train --classes) "
                       "must cover every class", option="--ensemble")
    return owner


class Members:
    """(student (B, C), members (B, M, C), epoch, ids (B,) or None) -> (weak (B, C), mask (B,) or
    None, logged parts). `rows`: how many per-sample weight rows (learned-sample: the label store's
    sample ids run 0..rows-1); `classes`: each member's classes (specialist)."""

    def __init__(self, how: str, count: int, *, lr: float = 0.1, rows: int = 0, easy_epochs: int = 0,
                 classes: list[list[int]] | None = None, num_classes: int = 0, topk: int = 3, world_size: int = 1,
                 assigner: bool = False):
        self.how, self.count, self.lr, self.easy_epochs, self.topk = how, count, lr, easy_epochs, topk
        self.assigner = assigner  # the batch's last "member" is an earlier student's output (--specialist-by)
        self.world_size = world_size
        self.weights = None
        if how in LEARNED:
            self.weights = torch.full((rows if how == "learned-sample" else 1, count), 1.0 / count)
        self.owner = class_owner(classes, num_classes) if how == "specialist" else None

    def state_dict(self) -> dict:
        return {"weights": None if self.weights is None else self.weights.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if self.weights is not None and state.get("weights") is not None:
            self.weights = state["weights"].clone()

    def __call__(self, student, members, epoch: int, ids=None):
        members = members.float()
        if members.shape[1] != self.count + self.assigner:
            raise W2SError(f"a batch holds {members.shape[1]} members' outputs, the run {self.count + self.assigner}")
        assigner = members[:, -1] if self.assigner else None
        members = members[:, :self.count]
        easy = epoch < self.easy_epochs
        mask = all_agree(members).float() if easy else None
        parts = {} if mask is None else {"easy_kept": mask.mean()}
        if self.weights is not None:
            weak, learned_parts = self._learned(student, members, ids, update=not easy)
            parts.update(learned_parts)
        elif self.owner is not None:
            weak, kept = self._specialist(student if assigner is None else assigner, members)
            mask = kept if mask is None else mask * kept
            parts["agreed"] = kept.mean()
        else:
            weak = combine_tensor(members.transpose(0, 1).double(), self.how).float()
        return weak, mask, parts

    def _learned(self, student, members, ids, *, update: bool):
        per_sample = self.how == "learned-sample"
        if per_sample and ids is None:
            raise W2SError("--ensemble learned-sample needs each sample's id in the batch")
        device = members.device
        if self.weights.device != device:  # kept where the step runs: no copy to the host per step
            self.weights = self.weights.to(device)
        rows = ids.to(device).long() if per_sample else torch.zeros(len(members), dtype=torch.long, device=device)
        w = self.weights[rows]  # (B, M)
        target = (w[..., None] * F.softmax(members, dim=-1)).sum(1)
        weak = torch.log(target.clamp(min=1e-30))
        if update:
            grad = member_ce(student, members)  # (B, M), dL/dw of each sample's own loss
            if per_sample:
                rows, grad = self._gathered(rows, grad)
                self.weights[rows] = simplex_step(self.weights[rows], grad, self.lr)
            else:
                mean = grad.mean(0, keepdim=True)
                if self.world_size > 1:  # over every rank's samples (a probe's last batch splits unevenly)
                    parts = distributed.all_gather((grad.sum(0, keepdim=True).cpu(), len(grad)))
                    mean = sum(t.to(device) for t, _ in parts) / sum(n for _, n in parts)
                self.weights = simplex_step(self.weights, mean, self.lr)
        shown = w.mean(0)
        return weak, {f"ens_w{m}": shown[m].detach() for m in range(self.count)}

    def _gathered(self, rows, grad):
        """Every rank's (rows, gradients) of this batch, so that every rank's table takes the same step."""
        if self.world_size == 1:
            return rows, grad
        pairs = distributed.all_gather((rows.cpu(), grad.cpu()))
        return (torch.cat([r for r, _ in pairs]).to(rows.device), torch.cat([g for _, g in pairs]).to(grad.device))

    def _specialist(self, student, members):
        """`student`: the current student's logits, or an earlier student's (--specialist-by)."""
        pred = student.detach().argmax(-1)
        chosen = self.owner.to(members.device)[pred]  # (B,) the member whose classes hold the student's argmax
        weak = members[torch.arange(len(members), device=members.device), chosen]
        k = min(self.topk, student.shape[-1])
        top = student.detach().topk(k, dim=-1).indices
        kept = (top == weak.argmax(-1, keepdim=True)).any(-1).float()
        return weak, kept
