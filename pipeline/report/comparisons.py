"""What `report` says beyond means: each row against a reference row, paired by seed; each run's
misfit to its weak model beside its gain; per-class top-1; two runs compared sample by sample.

A row's reference (default: hard labels) is the row of that loss with the same strong model, weak
labels (store(s), ensemble, selection) and recipe, the loss and its own knobs aside; a row of the
reference loss that trusted only some labels (--select, --keep-frac, --weight-by) is compared with
the reference loss on all of them. Runs pair where they share the seed and the store(s).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from ...errors import W2SError
from ..evaluation.predictions import misfit, per_class, read_predictions
from ..losses.registry import BUILT_IN
from .measures import mean_std
from .paired import mcnemar, paired_difference

KNOBS = frozenset({"loss", "loss_options"} | {k for loss in BUILT_IN.values() for k in loss.knobs})
TRUST = ("select", "keep_frac", "rank_by", "per_class", "weight_by", "steps_per_epoch")


def _context(settings: dict, *, trust: bool = True) -> str:
    """A row's settings but its loss and the loss's knobs (and, `trust` False, which labels it trusted)."""
    drop = KNOBS | (set() if trust else set(TRUST))
    return json.dumps({k: v for k, v in settings.items() if k not in drop}, sort_keys=True, default=str)


def _trusts_all(settings: dict) -> bool:
    return not settings.get("select") and settings.get("keep_frac") is None and not settings.get("weight_by")


def check_reference(rows: list[dict], reference: str, given: bool) -> None:
    """A named reference loss that no weak-to-strong row trained with is one line (the default, hard,
    is silently absent from a workspace without it)."""
    losses = sorted({r["loss"] for r in rows if r["role"] == "w2s"})
    if given and reference not in losses:
        raise W2SError(f"report --reference {reference}: no weak-to-strong row trained with --loss {reference}; the "
                       f"rows' losses: {', '.join(losses) or 'none'}", option="--reference")


def against_reference(rows: list[dict], by_name: dict, reference: str) -> None:
    """Each weak-to-strong row's "vs": its reference row's label and the paired difference of top-1
    over the seeds both share (with the same stores), or {"reference": "itself"} for a reference row."""
    w2s = [r for r in rows if r["role"] == "w2s"]
    for row in w2s:
        if row["loss"] == reference and _trusts_all(row["settings"]):
            row["vs"] = {"reference": "itself", "loss": reference}
            continue
        same = [c for c in w2s if c is not row and c["loss"] == reference and c["model"] == row["model"]
                and c["gt_weight"] == row["gt_weight"]]
        found = [c for c in same if row["loss"] != reference and _context(c["settings"]) == _context(row["settings"])]
        found = found or [c for c in same if _trusts_all(c["settings"]) and
                          _context(c["settings"], trust=False) == _context(row["settings"], trust=False)]
        if len(found) == 1:
            row["vs"] = {"reference": found[0]["label"], "loss": reference,
                         **_paired(row, found[0], by_name)}


def _paired(row: dict, ref: dict, by_name: dict) -> dict:
    """The per-seed differences of `row`'s runs to `ref`'s of the same seed and store(s), and the seeds
    that could not be paired, with why."""
    mine, theirs = _by_seed(row, by_name), _by_seed(ref, by_name)
    diffs, unpaired = {}, []
    for seed, runs in sorted(mine.items(), key=lambda kv: str(kv[0])):
        others = theirs.get(seed)
        if not others:
            unpaired.append((seed, "the reference has no run of this seed"))
            continue
        a, b = _stores(runs[0]), _stores(others[0])
        if a != b:
            unpaired.append((seed, f"other stores ({', '.join(a) or 'none'} against {', '.join(b) or 'none'})"))
            continue
        diffs[seed] = float(np.mean([r["top1"] for r in runs])) - float(np.mean([r["top1"] for r in others]))
    return {**paired_difference(list(diffs.values())), "diffs": diffs, "unpaired": unpaired}


def _by_seed(row: dict, by_name: dict) -> dict:
    out = {}
    for name in row["runs"]:
        run = by_name[name]
        if run.get("top1") is not None:
            out.setdefault(run["seed"], []).append(run)
    return out


def _stores(run: dict) -> list[str]:
    data = run.get("data") or {}
    members = (data.get("ensemble") or {}).get("members")
    return [m["store"] for m in members] if members else [data["store"]] if data.get("store") else []


# -- misfit and gain -------------------------------------------------------------------------------
def kept_predictions(run_dir: str, split: str | None = None) -> str | None:
    """The run's kept predictions file of `split`, else its only one; None where it kept none. A run
    that kept several (its validation's, and the splits `eval --run` scored) is one line asking
    which (`report --split`)."""
    if split:
        path = os.path.join(run_dir, f"predictions-{split}.parquet")
        return path if os.path.exists(path) else None
    found = sorted(glob.glob(os.path.join(run_dir, "predictions-*.parquet")))
    if len(found) > 1:
        names = ", ".join(os.path.basename(f)[len("predictions-"):-len(".parquet")] for f in found)
        raise W2SError(f"run {os.path.basename(run_dir)} kept predictions of several splits ({names}): give report "
                       "--split NAME", option="--split")
    return found[0] if found else None


def run_misfit(run: dict) -> None:
    """A weak-to-strong run's "misfit" (predictions.misfit: KL to and disagreement with its weak model,
    beside its gain over it, on the split both kept) where both kept their predictions, else why not."""
    weak = run.get("weak_predictions")
    if not weak:
        run["misfit_missing"] = run.get("weak_predictions_from") or "no weak model's predictions"
        return
    mine = kept_predictions(run["dir"], weak["split"])
    if mine is None:
        run["misfit_missing"] = (f"the run kept no predictions on {weak['split']} (runs of this version keep them; "
                                 f"`w2s-pipe eval --run {run['name']}` writes them)")
        return
    try:
        run["misfit"] = misfit(read_predictions(mine), read_predictions(weak["path"]))
    except W2SError as exc:
        run["misfit_missing"] = str(exc)


def row_misfit(row: dict, by_name: dict) -> None:
    """A row's mean misfit and gain over its runs that have them."""
    found = [by_name[n]["misfit"] for n in row["runs"] if by_name[n].get("misfit")]
    if not found:
        return
    row["misfit"] = {k: mean_std(m[k] for m in found)[:2] for k in ("kl", "disagree", "gain_ce", "gain_top1")}
    row["misfit"]["runs"] = len(found)
    row["misfit"]["bound_holds"] = sum(1 for m in found if m["kl"] is not None and m["gain_ce"] >= m["kl"])


# -- per class and per pair ----------------------------------------------------------------------------
def per_class_table(rows: list[dict], by_name: dict, split: str | None = None) -> dict:
    """{"classes", "rows": [{"label", "runs", "top1": per-class mean over its runs}]} from the kept
    predictions; a workspace whose runs kept none is one line saying how to get them."""
    out = []
    for row in rows:
        files = [kept_predictions(by_name[n]["dir"], split) for n in row["runs"]]
        kept = [read_predictions(f) for f in files if f]
        if kept:
            classes = max(int(max(p.labels.max(), p.pred.max())) + 1 for p in kept)
            out.append({"label": row["label"], "runs": len(kept),
                        "top1": np.nanmean([per_class(p, classes) for p in kept], axis=0).tolist()})
    if not out:
        on = f" of {split}" if split else ""
        raise W2SError(f"report --per-class: no run of this workspace kept its predictions{on} (runs before this "
                       "version); `w2s-pipe eval --run RUN` keeps a run's, or train it again", option="--per-class")
    return {"classes": max(len(r["top1"]) for r in out), "rows": out}


def pair_runs(a: dict, b: dict, split: str | None = None) -> dict:
    """Two runs of the same seed and store(s), compared on the samples both kept: McNemar's exact test
    (paired.mcnemar) and their agreement. Runs of other seeds or stores are one line saying which."""
    differ = []
    if a.get("seed") != b.get("seed"):
        differ.append(f"seed {a.get('seed')} against {b.get('seed')}")
    if _stores(a) != _stores(b):
        differ.append(f"stores {', '.join(_stores(a)) or 'none'} against {', '.join(_stores(b)) or 'none'}")
    if differ:
        raise W2SError(f"report --pair {a['name']} {b['name']}: a paired check compares runs that share the seed and "
                       f"the store(s); these differ in {'; '.join(differ)}", option="--pair")
    files = [kept_predictions(r["dir"], split) for r in (a, b)]
    if not all(files):
        who = a["name"] if not files[0] else b["name"]
        raise W2SError(f"report --pair: run {who} kept no predictions{f' of {split}' if split else ''} (runs before "
                       f"this version); `w2s-pipe eval --run {who}{f' --split {split}' if split else ''}` keeps them",
                       option="--pair")
    pa_, pb = read_predictions(files[0]).aligned(read_predictions(files[1]), f"runs {a['name']} and {b['name']}")
    return {"a": a["name"], "b": b["name"], "split": os.path.basename(files[0])[len("predictions-"):-len(".parquet")],
            **mcnemar(pa_.correct, pb.correct), "agreement": float(np.mean(pa_.pred == pb.pred))}
