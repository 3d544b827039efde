"""`w2s-pipe eval`: top-1 and top-5 of a trained model on a validation split, saying what each
figure is for (the checkpoint, its step, how it was picked, the precision, the data).

    w2s-pipe eval --run RUN                # the run's final weights, in its training precision
    w2s-pipe eval --run RUN --pick best    # the epoch picked by its val top-1 (selected on validation)
    w2s-pipe eval --run RUN --pick ema     # the moving average of the weights (train --model-ema)
    w2s-pipe eval --run RUN --split novel --episodes 600   # few-shot, recorded in RUN/few-shot.jsonl for report
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import W2SError
from ..pipeline.config.choices import DECODERS, EVAL_PICKS, PRECISION_OPTIONS, check_choice
from ..pipeline.evaluation.accuracy import evaluate_checkpoint
from ..pipeline.evaluation.fewshot import few_shot_checkpoint
from ..pipeline.train.runs import find_run, read_config

PICKED = {"last": "the final weights", "ema": "the moving average of the weights (--model-ema)",
          "best": "the epoch with the best val top-1: selected on validation, an optimistic figure"}
MISSING = {"best": "it ran without validation", "ema": "it ran without --model-ema, or has not saved yet",
           "last": "it has not finished an epoch or a --max-steps stop"}


@dataclass(frozen=True)
class EvalConfig:
    run: str | None = None  # run directory or name in the workspace
    pick: str = "last"  # with --run: last.pt (the final weights), best.pt (picked on validation) or ema.pt
    checkpoint: str | None = None
    data: str | None = None  # default: the data the run trained on
    split: str | None = None  # default: that data set's validation split
    batch_size: int = 256
    workers: int | None = None
    device: str = "auto"
    precision: str | None = None  # default: the precision the checkpoint was trained in, else fp32
    decode: str | None = None  # default: the decoder the run trained with where this device can, else cpu
    episodes: int = 0  # few-shot: this many seeded episodes (fewshot.py) instead of top-1/top-5
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episode_seed: int = 0
    workspace: str | None = None

    def __post_init__(self):
        if bool(self.run) == bool(self.checkpoint):
            raise W2SError("give exactly one of --run RUN or --checkpoint PATH")
        check_choice("--pick", self.pick, EVAL_PICKS)
        if self.pick != "last" and not self.run:
            raise W2SError("--pick chooses among a run's checkpoints: give --run RUN")
        check_choice("--precision", self.precision, PRECISION_OPTIONS, allow_none=True)
        check_choice("--decode", self.decode, DECODERS, allow_none=True)
        if self.batch_size < 1:
            raise W2SError(f"--batch-size {self.batch_size!r} is invalid: must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise W2SError(f"--workers {self.workers!r} is invalid: must be 0 or more")
        for option, value, low in (("--episodes", self.episodes, 0), ("--ways", self.ways, 2),
                                   ("--queries", self.queries, 1)):
            if value < low:
                raise W2SError(f"{option} {value!r} is invalid: must be at least {low}")
        if not self.shots or min(self.shots) < 1:
            raise W2SError(f"--shots {','.join(map(str, self.shots))} is invalid: give shot counts of 1 or more, "
                           "comma-separated")


def run_eval(cfg: EvalConfig) -> dict:
    """Top-1 and top-5, with what they were measured on: checkpoint, its step and epoch, how it was
    picked, the precision, the data and split, and what the run trained from."""
    checkpoint, trained_on = cfg.checkpoint, {}
    if cfg.run:
        run_dir = find_run(cfg.run, cfg.workspace)
        checkpoint = os.path.join(run_dir, f"{cfg.pick}.pt")
        if not os.path.exists(checkpoint):
            raise W2SError(f"run {run_dir} has no {cfg.pick}.pt ({MISSING[cfg.pick]})")
        trained_on = read_config(run_dir).get("data_source") or {}
    data = cfg.data or trained_on.get("name")
    if not data or data == "shards":
        raise W2SError("give --data (a dataset name or validation shard pattern) to evaluate this checkpoint on")
    common = dict(data=data, split=cfg.split, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                  precision=cfg.precision, decode=cfg.decode, workspace=cfg.workspace)
    if cfg.episodes:
        result = few_shot_checkpoint(checkpoint, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries,
                                     episodes=cfg.episodes, seed=cfg.episode_seed, **common)
        if cfg.run:  # where `report` finds it
            from ..pipeline.evaluation.fewshot import record

            result["recorded"] = record(run_dir, result, cfg.pick)
    else:
        result = evaluate_checkpoint(checkpoint, **common)
    return {**result, "picked": PICKED[cfg.pick] if cfg.run else "as given", "trained_on": _trained_on(trained_on)}


def _trained_on(source: dict) -> str | None:
    """What the run trained from, said with the figure: the store (and whether it is still there), or
    the ground truth of its data."""
    if not source:
        return None
    teacher = source.get("teacher")
    if teacher:
        return (f"online teacher {teacher.get('model')} ({teacher.get('checkpoint')}) on {source.get('name')} "
                f"{source.get('split')}")
    store = source.get("store")
    if not store:
        return f"ground truth of {source.get('name')} {source.get('split')}"
    there = os.path.exists(os.path.join(store, "zarr.json")) if "://" not in store else None
    state = "" if there is None else " (still there)" if there else " (no longer there)"
    return f"weak labels of store {store}{state}, {source.get('weak')} on {source.get('name')} {source.get('split')}"
