"""The optimizer and the learning-rate schedule of a training run, built with timm.

The schedule is a function of the step alone: step k (counting from 0) trains with the rate
`apply(k)` sets just before it, so a resumed run needs no scheduler state and the logged rate is the rate used.
Warm-up counts inside the run's steps (as the paper's official configs do): it ramps linearly from
`warmup_lr` over the first `warmup_steps`, and the cosine then reaches `min_lr` exactly at the last
step. The step schedule multiplies the rate by `decay_rate` every `decay_steps`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import timm.optim
from timm.scheduler import CosineLRScheduler, StepLRScheduler

from ...errors import W2SError
from ..config.choices import SCHEDULES, check_choice


def check_optimizer(opt: str) -> None:
    """Any of timm's optimizer names (`timm.optim.list_optimizers()`: sgd is SGD with Nesterov
    momentum, momentum without Nesterov, adamw, lamb, lion, ...)."""
    names = timm.optim.list_optimizers()
    if opt.lower() not in names:
        close = difflib.get_close_matches(opt.lower(), names, n=3)
        raise W2SError(f"--opt {opt!r} is not a timm optimizer" + (f"; did you mean {', '.join(close)}?" if close else "")
                       + " (timm.optim.list_optimizers() lists them)", option="--opt")


def build_optimizer(model, *, opt: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    layer_decay: float | None = None):
    """timm's optimizer over the model's trainable parameters. Given the module (not a list of its
    parameters), timm puts biases, norms and every other 1-d parameter (ViT's pos_embed and
    cls_token through the model's `no_weight_decay()`) in a group without weight decay, and with
    `layer_decay` gives each layer group (the model's `group_matcher`) its `lr_scale`:
    layer_decay ** (layers - depth), so the head trains at the full rate and the stem at the least."""
    if not any(p.requires_grad for p in model.parameters()):
        raise W2SError("the model has no trainable parameters")
    check_optimizer(opt)
    try:
        return timm.optim.create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                              layer_decay=layer_decay)
    except (ImportError, AttributeError, NotImplementedError) as exc:
        what = "--layer-decay needs a model that groups its layers (timm's group_matcher)" if (
            layer_decay and isinstance(exc, (AttributeError, NotImplementedError))) else f"--opt {opt}"
        raise W2SError(f"{what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


@dataclass(frozen=True)
class ScheduleSpec:
    sched: str = "cosine"
    total_steps: int = 1
    warmup_steps: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    floor_after: bool = False  # cosine: --min-lr one step past the end (PyTorch's CosineAnnealingLR), not at the last
    decay_steps: int = 1  # step schedule: the rate is multiplied by decay_rate every decay_steps
    decay_rate: float = 0.1

    def __post_init__(self):
        check_choice("--sched", self.sched, SCHEDULES)
        if self.warmup_steps and self.warmup_steps >= self.total_steps:
            raise W2SError(f"the warm-up ({self.warmup_steps} steps) must be shorter than the run "
                           f"({self.total_steps} steps): lower --warmup-epochs or raise --epochs")


class Schedule:
    """timm's scheduler, driven by step: `apply(k)` sets the rate of step k on every group (timm
    scales it by a group's `lr_scale` where there is one) and returns the base group's rate."""

    def __init__(self, optimizer, spec: ScheduleSpec):
        self.spec, self.optimizer = spec, optimizer
        warmup = {"warmup_t": spec.warmup_steps, "warmup_lr_init": spec.warmup_lr, "warmup_prefix": False,
                  "t_in_epochs": False}
        if spec.sched == "cosine":
            # The cosine reaches its floor at t_initial: the last step (total_steps - 1), or one past it.
            floor = spec.total_steps if spec.floor_after else max(1, spec.total_steps - 1)
            self.timm = CosineLRScheduler(optimizer, t_initial=floor, lr_min=spec.min_lr, **warmup)
        else:
            rate = spec.decay_rate if spec.sched == "step" else 1.0
            self.timm = StepLRScheduler(optimizer, decay_t=max(1, spec.decay_steps), decay_rate=rate, **warmup)

    def apply(self, step: int) -> float:
        self.timm.step_update(num_updates=step)
        return float(self.optimizer.param_groups[0]["lr"])
