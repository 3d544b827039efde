"""What every loss is: a class with its declaration (name, summary, what it reads, its knobs) and
its per-sample term. Subclass `WeakLoss`, set the attributes, write `term`; register it
(registry.py), or name it as `--loss package.module:Name`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import W2SError


@dataclass(frozen=True)
class Step:
    """Where training is when a term is computed: the fraction done (0..1), the 0-based epoch and
    the run's epochs (for schedules by epoch)."""

    progress: float = 0.0
    epoch: int = 0
    epochs: int = 1

    def ramp(self, frac: float) -> float:
        """0 -> 1 linearly over the first `frac` of training (by step); 1 where frac <= 0."""
        return 1.0 if frac <= 0 else min(1.0, max(0.0, self.progress / frac))


class WeakLoss:
    """A training loss. Class attributes declare it:

    - `name`, `summary` (for --help and the report);
    - `reads_weak` (the weak labels: a store, or an online teacher), `reads_gt` (the ground truth),
      `reads_members` (each weak teacher of an ensemble on its own, (B, M, C), not their combination);
    - `knobs`: the train options of its own it reads (flat options of `train`: a study sweeps only
      these for it, and `report` tells runs apart by them);
    - `settings`: train options it reads that are not its own knobs (label smoothing, a recipe's);
    - `schedule`: the name of a part it logs that moves over training, which `report` plots per step;
    - `options`: {name: default} of a plug-in's own knobs, set by `--loss-options NAME=VALUE,...` (the
      value cast to the default's type) and swept by a study like any knob.

    An instance holds its knobs' values as attributes (`self.threshold`); `term` computes the batch's
    loss: f(student (B, C), weak (B, C), or (B, M, C) where `reads_members`, labels (B,) or None,
    step: Step, weights (B,) or None: the batch's mean is then mean_i(w_i * loss_i)) ->
    (loss, {name: detached scalar to log}).
    """

    name: str = ""
    summary: str = ""
    reads_weak: bool = True
    reads_gt: bool = False
    reads_members: bool = False
    knobs: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()  # train options it reads that are not its own knobs (a recipe's)
    options: dict = {}
    schedule: str | None = None  # a logged part that changes over training, plotted by `report` (beta, alpha)

    def __init__(self, **values):
        own = dict(values.pop("loss_options", None) or {})
        for knob in (*self.knobs, *self.settings):
            setattr(self, knob, values[knob])
        unknown = sorted(set(own) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise W2SError(f"--loss-options {unknown[0]}: loss {self.name!r} has no such option (its options: {known})",
                           option="--loss-options")
        for key, default in self.options.items():
            setattr(self, key, cast(own.get(key, default), default, key))

    @classmethod
    def tunable(cls) -> tuple[str, ...]:
        """What a study may choose for this loss: its knobs, and its own options."""
        return (*cls.knobs, *cls.options)

    def term(self, student, weak, labels, step: Step, weights):
        raise NotImplementedError(f"loss {self.name!r} defines no term")

    @property
    def functional(self):
        """The built-in losses' tensor math (functional.py)."""
        from . import functional  # lazy: `w2s-pipe --help` reads the classes, and this imports torch

        return functional


def cast(value, default, key: str):
    """`value` (a string from the command line, or a YAML scalar) as the type of `default`."""
    if default is None or type(value) is type(default):  # exactly: a YAML true is no float, a 1 no bool
        return value
    try:
        if isinstance(value, bool):  # true/false for a number: a mistake, not 1.0 or 0
            raise ValueError(value)
        if isinstance(default, bool):
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return type(default)(value)
    except (TypeError, ValueError):
        raise W2SError(f"--loss-options {key}={value!r} is invalid: must be a {type(default).__name__}",
                       option="--loss-options") from None
