"""Every choice a user makes by name, defined once: the command line's `click.Choice`s, the
configs' checks and the stages all read these tuples, so a new choice is added here alone.

Imports nothing heavy (no torch, no timm): `w2s-pipe --help` reads it.
"""

from __future__ import annotations

from ...errors import W2SError

# Where images are decoded and resized (image/decode.py, views/pixels.py); "auto" picks per device.
DECODERS = ("cpu", "gpu", "pil")
DECODE_OPTIONS = ("auto", *DECODERS)

# Autocast precision; "auto" is bf16 on GPUs and on CPUs with native bf16, else fp32.
PRECISIONS = ("bf16", "fp16", "fp32")
PRECISION_OPTIONS = ("auto", *PRECISIONS)


# The training losses are classes, one file each, named in pipeline/losses/registry.py.

# The statistics `--keep-frac` ranks a store's samples by (selection.py: higher confidence and margin,
# lower entropy, are more trusted).
RANK_BY = ("margin", "confidence", "entropy", "agreement")  # agreement: an ensemble's members agreeing

# The demo's scenarios (demo.py): the paper's weak-to-strong setting, and its noisy-label one.
SCENARIOS = ("standard", "noisy", "few-shot")
NOISY_SCENARIO = "symmetric:0.2"  # the noisy scenario's --label-noise (the official CIFAR-100 rate)

# How `train --labels A,B,...` combines several stores' weak outputs: pipeline/ensembles/registry.py
# (fixed: a class each; with the student at each step: weak/members.py).

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
REPORT_FORMATS = ("md", "json")  # report --format: what it prints
INSPECT_FORMATS = ("text", "json")  # inspect --format
CLUSTERS = ("slurm", "local")  # study --cluster: submitit's executors (local: its local one)


def check_choice(option: str, value, choices, *, allow_none: bool = False) -> None:
    """The one error for a value outside its choices, naming the option and listing them."""
    if value is None and allow_none:
        return
    if value not in choices:
        raise W2SError(f"{option} {value!r} is invalid: choose one of {', '.join(choices)}", option=option)
