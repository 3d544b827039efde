"""`w2s-pipe eval`: top-1 and top-5 of a trained model on a validation split, saying what each
figure is for (the checkpoint, its step, how it was picked, the precision, the data).

    w2s-pipe eval --run RUN                # the run's final weights, in its training precision
    w2s-pipe eval --run RUN --pick best    # the epoch picked by its val top-1 (selected on validation)
    w2s-pipe eval --run RUN --pick ema     # the moving average of the weights (train --model-ema)
    w2s-pipe eval --run RUN --split novel --episodes 600   # few-shot, recorded in RUN/few-shot.jsonl for report
"""

from __future__ import annotations

import os

from ..errors import W2SError
from ..pipeline.evaluation.accuracy import evaluate_checkpoint
from ..pipeline.evaluation.fewshot import few_shot_checkpoint
from ..pipeline.evaluation.predictions import predictions_file, write_predictions
from ..pipeline.image.decode import pixel_limited
from ..pipeline.sources.datasets import novel_data
from ..pipeline.train.runs import find_run, read_config
from .eval_config import EvalConfig

PICKED = {"last": "the final weights", "ema": "the moving average of the weights (--model-ema)",
          "best": "the epoch with the best val top-1: selected on validation, an optimistic figure"}
MISSING = {"best": "it ran without validation", "ema": "it ran without --model-ema, or has not saved yet",
           "last": "it has not finished an epoch or a --max-steps stop"}


class EvalResult(dict):
    """`run_eval`'s figures and what they are for (a dict, as scripts read it), with its summary."""

    def summary(self) -> list[str]:
        r = self
        at = f"step {r['step']}, epoch {r['epoch']}, " if r["step"] is not None else ""
        lines = []
        if "few_shot" in r:
            for k, f in r["few_shot"].items():
                lines.append(f"{r['data']} {r['split']}: {r['ways']}-way {k}-shot {f['accuracy']:.4f} ± "
                             f"{f['ci95']:.4f} (95% interval, {f['episodes']} episodes of {r['queries']} queries per "
                             f"class, seed {r['episode_seed']}; {r['samples']} samples, {r['feature_dim']}-d features)")
        else:
            lines.append(f"{r['data']} {r['split']}: top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  "
                         f"({r['samples']} samples)")
        lines.append(f"checkpoint {r['checkpoint']} ({at}{r['picked']}), {r['precision']}, --decode {r['decode']}")
        lines.append(f"evaluated on {r['pattern']}" + (f"; trained from the {r['trained_on']}" if r["trained_on"] else ""))
        if r.get("split_chosen") and r["split_chosen"] != "--split":
            lines.append(f"split {r['split']}: {r['split_chosen']}")
        if r.get("predictions"):
            lines.append(f"per-sample predictions in {r['predictions']} (report --per-class, --pair)")
        if r.get("recorded"):
            lines.append(f"recorded in {r['recorded']} (report shows it)")
        if r.get("label_noise"):
            lines.append(f"scored against the clean labels ({r['labels']}): the shards' own labels carry "
                         f"{r['label_noise']}")
        return lines


@pixel_limited
def run_eval(cfg: EvalConfig) -> EvalResult:
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
    split, novel = cfg.split, None
    if cfg.episodes and split is None:  # the few-shot protocol scores classes never trained on, where there are any
        novel = novel_data(data, cfg.workspace)
        data, split = novel or (data, None)
    common = dict(data=data, split=split, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                  precision=cfg.precision, decode=cfg.decode, workspace=cfg.workspace)
    if cfg.episodes:
        result = few_shot_checkpoint(checkpoint, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries,
                                     episodes=cfg.episodes, seed=cfg.episode_seed, **common)
        if cfg.run:  # where `report` finds it
            from ..pipeline.evaluation.fewshot import record

            result["recorded"] = record(run_dir, result, cfg.pick)
    else:
        result = evaluate_checkpoint(checkpoint, **common, keep=bool(cfg.run))
        kept = result.pop("predictions", None)
        if kept is not None and cfg.pick == "last":  # the run's final weights: what report reads per sample
            result["predictions"] = write_predictions(predictions_file(run_dir, result["split"]), kept)
    return EvalResult({**result, "picked": PICKED[cfg.pick] if cfg.run else "as given",
                       "trained_on": _trained_on(trained_on), "split_chosen": _split_chosen(cfg, novel)})


def _split_chosen(cfg: EvalConfig, novel) -> str:
    """Why the split scored is the one: given, the data set's novel split (few-shot's default), or its
    validation split."""
    if cfg.split:
        return "--split"
    if novel:
        return "the data set's novel split (classes never trained on; --split scores another)"
    return "the data set's validation split" + (" (it has no novel split: these classes may have been trained on)"
                                                  if cfg.episodes else "")


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
