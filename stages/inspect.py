"""`w2s-pipe inspect STORE`: statistics of a label store of any size, computed through dask.

Everything is a dask computation over the store's index.parquet (and so runs unchanged on a dask
cluster when a `dask.distributed` client is active): sample and class counts, the distribution
of confidence, margin and entropy, per-class counts of weak predictions, and, where the shards
carry ground truth, the weak labels' accuracy and calibration. For a per-view store (`label
--views K`), each view's agreement with the centre view's argmax, and its accuracy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..pipeline.metrics import reliability
from ..pipeline.workspace import slug, workspace_dir
from ..storage import schema
from ..storage.fsutil import join

QUANTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass(frozen=True)
class InspectConfig:
    store: str
    out: str | None = None  # figures; default <workspace>/inspect/<store name>
    workspace: str | None = None
    plots: bool = True


def store_statistics(url: str, storage_options: dict | None = None) -> dict:
    import dask
    import dask.array as da
    import dask.dataframe as dd

    from ..storage import open_store

    store = open_store(url, storage_options)
    store.require_complete()
    store.check_rows()  # every shard's rows against its marker: statistics of damaged rows are wrong
    store.check_index()
    index = dd.read_parquet(join(url.rstrip("/"), schema.INDEX_FILE), storage_options=storage_options or None)
    columns = {c: index[c].to_dask_array(lengths=True) for c in ("pred", "confidence", "margin", "entropy")}
    has_label = "label" in index.columns
    lazy = {
        "samples": columns["pred"].shape[0],
        "pred_counts": da.bincount(columns["pred"], minlength=store.num_classes),
        "confidence_mean": columns["confidence"].mean(),
        "margin_mean": columns["margin"].mean(),
        "entropy_mean": columns["entropy"].mean(),
        "confidence_q": da.percentile(columns["confidence"], QUANTILES),
        "margin_q": da.percentile(columns["margin"], QUANTILES),
    }
    if has_label:
        label = index["label"].to_dask_array(lengths=True)
        correct = columns["pred"] == label
        lazy.update(accuracy=correct.mean(), label_counts=da.bincount(label, minlength=store.num_classes))
    if store.views:  # the arrays' labelled rows are the index's rows, in the same (shard) order
        view_pred = store.dask_arrays()[f"{schema.VIEWS}pred"].rechunk({0: columns["pred"].chunks[0]})
        lazy["view_agreement"] = (view_pred == columns["pred"][:, None]).mean(axis=0)
        if has_label:
            lazy["view_accuracy"] = (view_pred == label[:, None]).mean(axis=0)
    (result,) = dask.compute(lazy)
    stats = {
        "store": url,
        "weak_model": store.attrs["weak"]["model"],
        "data": store.attrs["data"]["name"],
        "split": store.attrs["data"]["split"],
        "samples": int(result["samples"]),
        "shards": len(store.shards),
        "classes": store.num_classes,
        "topk": store.topk,
        "precision": store.attrs["precision"],
        "confidence": {"mean": float(result["confidence_mean"]),
                       "quantiles": dict(zip(map(str, QUANTILES), map(float, result["confidence_q"])))},
        "margin": {"mean": float(result["margin_mean"]),
                   "quantiles": dict(zip(map(str, QUANTILES), map(float, result["margin_q"])))},
        "entropy_mean": float(result["entropy_mean"]),
        "pred_counts": [int(c) for c in result["pred_counts"]],
        "has_labels": has_label,
        "views": store.views,
    }
    if store.views:
        stats["view_agreement_with_centre"] = [float(v) for v in result["view_agreement"]]
        if has_label:
            stats["view_accuracy"] = [float(v) for v in result["view_accuracy"]]
    if has_label:
        stats["accuracy"] = float(result["accuracy"])
        stats["label_counts"] = [int(c) for c in result["label_counts"]]
        stats["reliability"] = reliability(columns["confidence"], correct)
        stats["ece"] = stats["reliability"]["ece"]
    else:
        stats["reliability"] = reliability(columns["confidence"], da.zeros_like(columns["confidence"]))
        stats["reliability"]["accuracy"] = None
    return stats


def run_inspect(cfg: InspectConfig) -> dict:
    stats = store_statistics(cfg.store)
    if cfg.plots:
        from ..pipeline import plots

        name = slug(os.path.basename(cfg.store.rstrip("/")))
        out = cfg.out or str(workspace_dir(cfg.workspace) / "inspect" / name)
        os.makedirs(out, exist_ok=True)
        files = [plots.calibration(stats["reliability"], os.path.join(out, "calibration.png"),
                                   f"weak labels: {stats['weak_model']} on {stats['data']} {stats['split']}")]
        classes = list(range(stats["classes"]))
        series = {"weak predictions": stats["pred_counts"]}
        if stats["has_labels"]:
            series["ground truth"] = stats["label_counts"]
        files.append(plots.class_counts(classes, series, os.path.join(out, "class-counts.png"), "per-class counts"))
        stats["files"] = files
    return stats


def format_text(stats: dict) -> str:
    c, m = stats["confidence"], stats["margin"]

    def q(d):
        return ", ".join(f"p{k} {v:.3f}" for k, v in d["quantiles"].items())
    lines = [
        f"store {stats['store']}",
        f"weak model {stats['weak_model']} on {stats['data']} {stats['split']} ({stats['precision']}"
        + (f", top-{stats['topk']}" if stats["topk"] else "") + ")",
        f"samples {stats['samples']} in {stats['shards']} shards, {stats['classes']} classes",
        f"confidence mean {c['mean']:.4f}; {q(c)}",
        f"margin mean {m['mean']:.4f}; {q(m)}",
        f"entropy mean {stats['entropy_mean']:.4f} nats",
    ]
    counts = np.asarray(stats["pred_counts"])
    top = np.argsort(-counts)[:5]
    lines.append("most predicted classes: " + ", ".join(f"{i} ({counts[i]})" for i in top)
                 + f"; never predicted: {int((counts == 0).sum())} classes")
    if stats["has_labels"]:
        lines.append(f"weak-label accuracy {stats['accuracy']:.4f}, ECE {stats['ece']:.4f} (15 bins)")
    else:
        lines.append("no ground truth in the shards: accuracy and calibration unavailable")
    if stats.get("views"):
        agree = stats["view_agreement_with_centre"]
        lines.append(f"{stats['views']} views per sample: argmax as the centre view's on "
                     + ", ".join(f"{a:.3f}" for a in agree) + f" (mean {sum(agree) / len(agree):.3f})")
        if "view_accuracy" in stats:
            acc = stats["view_accuracy"]
            lines.append("accuracy per view " + ", ".join(f"{a:.3f}" for a in acc) + f" (mean {sum(acc) / len(acc):.3f})")
    for f in stats.get("files", []):
        lines.append(f"figure {f}")
    return "\n".join(lines)

