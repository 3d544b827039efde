"""What a workspace holds, read for `report`: each run's settings and figures, each store's summary,
and the validation accuracy of the checkpoint that labelled a store (or taught online)."""

from __future__ import annotations

import json
import os

import numpy as np

from ...errors import W2SError
from ...storage import open_store
from ...storage.fsutil import write_whole
from ..evaluation.accuracy import evaluate_checkpoint
from ..evaluation.fewshot import recorded
from ..evaluation.predictions import write_predictions
from ..losses.registry import is_loss, loss_class
from ..runtime.workspace import slug, workspace_dir
from ..sources.noise import clean_accuracy, described, store_noise
from ..train.runs import read_metrics
from .measures import reliability

# What does not change what a run computes, or is expected to differ between the runs of one row:
# the seed, the run's name and where it ran, and the store's path and identity (each seed has its
# own weak model and store); what the store is (data, split, weak model) still counts.
NOT_COMPARED = frozenset({"seed", "run", "resume", "max_steps", "progress", "log_every", "workspace", "labels",
                          "skip_shard_check", "workers", "workers_resolved", "device", "precision", "decode", "config",
                          "tool_version", "data", "split", "strong_checkpoint"})


def comparable(config: dict, defaults: dict | None = None) -> dict:
    """The settings that make two runs comparable: the run's resolved configuration less NOT_COMPARED.
    A setting the run's config.json lacks (written before the option existed) counts as its
    `defaults` value, which is what the run did."""
    out = {k: v for k, v in {**(defaults or {}), **config}.items() if k not in NOT_COMPARED}
    # a probe's feature stores are each seed's backbone's (as its store is each seed's weak model's): that it is
    # a probe is what counts
    out["features"] = bool(out.get("features"))
    out.pop("val_features", None)
    source = dict(out.pop("data_source", None) or {})
    out["data_source"] = {k: source.get(k) for k in ("name", "split", "pattern", "weak")}
    if is_loss(out.get("loss")) and not loss_class(out["loss"]).reads_weak:  # a ceiling that named a store reads no
        out["data_source"]["weak"] = None                                 # weak label of it
    if source.get("label_noise"):  # the same data set under other noise is other data
        out["data_source"]["label_noise"] = source["label_noise"]
    if source.get("views"):
        out["data_source"]["views"] = source["views"]  # a per-view store's views, replayed
    return out


def load_run(run_dir: str, defaults: dict | None = None) -> dict | None:
    """A run's figures, or {"dir", "name", "error"} for a run whose config.json cannot be read."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None  # not a run directory
    except (OSError, ValueError) as exc:
        return {"dir": os.path.realpath(run_dir), "name": os.path.basename(run_dir.rstrip("/")),
                "error": f"config.json is unreadable ({exc})"}
    records = read_metrics(run_dir)
    epochs = [r for r in records if r.get("kind") == "epoch" and "val_top1" in r]
    steps = [r for r in records if r.get("kind") == "step"]
    end = [r for r in records if r.get("kind") == "end"]
    schedule = loss_class(config["loss"]).schedule if is_loss(config.get("loss")) else None  # beta, alpha, a plug-in's
    return {
        "dir": os.path.realpath(run_dir),
        "name": os.path.basename(run_dir.rstrip("/")),
        "strong": config.get("strong"),
        "loss": config.get("loss"),
        "gt_weight": float(config.get("gt_weight") or 0),
        "seed": config.get("seed"),
        "data": config.get("data_source") or {},
        "finished": bool(end),
        "top1": epochs[-1]["val_top1"] if epochs else None,
        "top5": epochs[-1]["val_top5"] if epochs else None,
        "curve": [(r["epoch"], r["val_top1"]) for r in epochs],
        "schedule_name": schedule,
        "schedule": [(r["step"], r[schedule]) for r in steps if schedule and schedule in r],
        "steps_per_epoch": config.get("steps_per_epoch"),
        "settings": comparable(config, defaults),
        "few_shot": recorded(run_dir, end[-1].get("step")) if end else [],
    }


def load_store(url: str) -> dict | None:
    """A label store's row of the report: its weak model's accuracy and calibration; None for a
    feature store (it holds no weak model's outputs)."""
    try:
        store = open_store(url)
        if store.features:
            return None
        index = store.index()
        store.check_index()  # the index is its parts (the arrays' rows are checked where they are read)
    except Exception as exc:  # listed with why, never the end of the whole report
        why = str(exc) if isinstance(exc, W2SError) else f"{type(exc).__name__}: {exc}"
        return {"url": os.path.realpath(url), "name": os.path.basename(url.rstrip("/")), "error": why}
    out = {
        "url": os.path.realpath(url),
        "name": os.path.basename(url.rstrip("/")),
        "weak_model": store.attrs["weak"]["model"],
        "weak_checkpoint": store.attrs["weak"].get("checkpoint"),
        "weak_checkpoint_sha256": store.attrs["weak"].get("checkpoint_sha256"),
        "data": store.attrs["data"]["name"],
        "split": store.attrs["data"]["split"],
        "samples": index.num_rows,
    }
    conf = index.column("confidence").to_numpy()
    if "label" in index.column_names:
        right = index.column("pred").to_numpy() == index.column("label").to_numpy()
        out["weak_label_accuracy"] = float(right.mean())
        out["reliability"] = reliability(conf, right)
        out["ece"] = out["reliability"]["ece"]
        noise = store_noise(store)
        if noise:  # the shards' labels are noisy: the weak labels against the clean ones too
            out["label_noise"] = described(noise)
            out["weak_label_accuracy_clean"] = clean_accuracy(store, noise)
    else:
        out["reliability"] = reliability(conf, np.full(conf.shape, np.nan))
        out["reliability"]["accuracy"] = None
    return out


def weak_accuracy(store: dict, cache_dir: str, workspace: str) -> tuple[float | None, str]:
    """The validation top-1 of the very checkpoint that labelled `store` (not its run's last epoch,
    which differs when the store was labelled from best.pt or another file), evaluated once and
    cached by the checkpoint's sha256 under `cache_dir` (a finished store is never written to), with
    its per-sample predictions beside (store["weak_predictions"]: {"path", "split"}, for the misfit).
    Returns (top-1 or None, where it came from or why it is missing)."""
    checkpoint, sha = store["weak_checkpoint"], store.get("weak_checkpoint_sha256") or ""
    if not checkpoint:
        return None, "the store was labelled by timm's pretrained weights, not a checkpoint of this workspace"
    path = os.path.join(cache_dir, f"{sha[:16]}-{slug(store['data'])}.json")
    kept = path[: -len(".json")] + ".parquet"
    try:
        with open(path) as f:
            cached = json.load(f)
        if os.path.exists(kept) and cached.get("split"):  # caches from before predictions were kept: again
            store["weak_predictions"] = {"path": kept, "split": cached["split"]}
            return float(cached["top1"]), f"{os.path.basename(checkpoint)} evaluated (cached)"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        from ..models.checkpoint import file_sha256

        if file_sha256(checkpoint) != sha:
            return None, f"{checkpoint} changed since it labelled the store"
        if store["data"] == "shards":
            return None, f"{checkpoint} could not be evaluated (its store labelled a shard pattern, whose validation " \
                         "split is unknown)"
        result = evaluate_checkpoint(checkpoint, data=store["data"], workers=0, workspace=workspace, keep=True)
    except (W2SError, OSError) as exc:
        return None, f"{checkpoint} could not be evaluated ({exc})"
    os.makedirs(cache_dir, exist_ok=True)
    store["weak_predictions"] = {"path": write_predictions(kept, result.pop("predictions")), "split": result["split"]}
    write_whole(path, json.dumps({"checkpoint": checkpoint, "sha256": sha, "data": result["data"],
                                  "split": result["split"], "top1": result["top1"], "precision": result["precision"]}))
    return float(result["top1"]), f"{os.path.basename(checkpoint)} evaluated on {result['data']} {result['split']}"


def report_workspace(workspace) -> "os.PathLike":
    """The workspace to report: the one given, or, where it holds no runs or stores of its own but a
    demo (`w2s-pipe demo` writes to <workspace>/demo), the demo's."""
    ws = workspace_dir(workspace)
    if not (ws / "runs").is_dir() and not (ws / "stores").is_dir() and (ws / "demo" / "runs").is_dir():
        return ws / "demo"
    return ws
