"""Every choice a user makes by name, defined once: the command line's `click.Choice`s, the
configs' checks and the stages all read these tuples, so a new choice is added here alone.

Imports nothing heavy (no torch, no timm): `w2s-pipe --help` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import W2SError

# Where images are decoded and resized (image/decode.py, views/pixels.py); "auto" picks per device.
DECODERS = ("cpu", "gpu", "pil")
DECODE_OPTIONS = ("auto", *DECODERS)

# Autocast precision; "auto" is bf16 on GPUs and on CPUs with native bf16, else fp32.
PRECISIONS = ("bf16", "fp16", "fp32")
PRECISION_OPTIONS = ("auto", *PRECISIONS)


@dataclass(frozen=True)
class Loss:
    summary: str  # for --help
    needs_weak: bool  # reads the weak labels (a store, or the online teacher)
    needs_gt: bool  # reads the ground truth (any loss does with --gt-weight)
    term: str  # the function of pipeline/train/losses.py that computes it (found there by this name)
    knobs: tuple[str, ...] = ()  # the options of its own it reads (a study sweeps only these for it)
    members: bool = False  # reads each weak teacher of an ensemble on its own (B, M, C), not their combination


# The one table of the training losses, in the order the command line lists them; a name not in it
# is refused, never defaulted (losses.objective).
LOSSES = {
    "adaptconf": Loss("adaptive confidence loss (Guo et al. 2024), per-sample beta", True, False, "adaptconf_term",
                      ("threshold", "kd_temperature", "beta_warmup_frac")),
    "augconf": Loss("(1-alpha) KD + alpha CE(s, argmax s), alpha ramped over --warmup-frac of the run", True, False,
                    "augconf_term", ("threshold", "kd_temperature", "warmup_frac", "ramp")),
    "kd": Loss("T^2-scaled KL to the weak soft labels", True, False, "kd_term", ("kd_temperature",)),
    "hard": Loss("cross-entropy on the weak argmax", True, False, "hard_term"),
    "evidential": Loss("evidential (Dirichlet) loss over each weak teacher, Bayesian WeakS-to-Strong (Cui et al. "
                       "2024): (1-gamma) sum_m EDL(s, argmax w_m) + gamma EDL(s, argmax s), its KL annealed over the run",
                       True, False, "evidential_term", ("evidential_gamma",), members=True),
    "gt": Loss("ground-truth cross-entropy (weak model, strong ceiling)", False, True, "gt_term"),
}
LOSS_NAMES = tuple(LOSSES)

# The statistics `--keep-frac` ranks a store's samples by (selection.py: higher confidence and margin,
# lower entropy, are more trusted).
RANK_BY = ("margin", "confidence", "entropy", "agreement")  # agreement: an ensemble's members agreeing

# The demo's scenarios (demo.py): the paper's weak-to-strong setting, and its noisy-label one.
SCENARIOS = ("standard", "noisy", "few-shot")
NOISY_SCENARIO = "symmetric:0.2"  # the noisy scenario's --label-noise (the official CIFAR-100 rate)

# How `train --labels A,B,...` combines several stores' weak outputs: fixed (weak/ensemble.py), or with
# the student at each step (weak/members.py: learned weights, specialists).
FIXED_ENSEMBLES = ("mean-prob", "mean-logit", "vote")
STEP_ENSEMBLES = ("learned", "learned-sample", "specialist")
ENSEMBLES = FIXED_ENSEMBLES + STEP_ENSEMBLES

# The stored statistics `--weight-by` weighs each sample's weak-label loss by (losses.trust_weights).
WEIGHT_BY = ("confidence", "margin")

# Which of a store's outputs train reads (`--store-view`): auto replays a per-view store's views and
# reads a centre store's centre view; center reads the centre view of either.
STORE_VIEWS = ("auto", "center", "replay")

SCHEDULES = ("cosine", "step", "const")  # optim.Schedule
COSINE_FLOORS = ("last", "after")  # where a cosine reaches --min-lr: the last step, or one past the end (PyTorch's)
RAMPS = ("epoch", "step")  # how augconf's alpha ramps: per epoch (official) or per step
BAD_SAMPLE_POLICIES = ("fail", "skip")  # label --on-bad-sample
EVAL_PICKS = ("last", "best", "ema")  # eval --pick: a run's checkpoints
CLUSTERS = ("slurm", "local")  # study --cluster: submitit's executors (local: its local one)


def check_choice(option: str, value, choices, *, allow_none: bool = False) -> None:
    """The one error for a value outside its choices, naming the option and listing them."""
    if value is None and allow_none:
        return
    if value not in choices:
        raise W2SError(f"{option} {value!r} is invalid: choose one of {', '.join(choices)}", option=option)
