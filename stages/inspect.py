"""`w2s-pipe inspect STORE`: statistics of a label store of any size, computed through dask.

Everything is a dask computation over the store's index.parquet (and so runs unchanged on a dask
cluster when a `dask.distributed` client is active): sample and class counts, the distribution
of confidence, margin and entropy, per-class counts of weak predictions, and, where the shards
carry ground truth, the weak labels' accuracy and calibration, and their coverage-accuracy curve:
the accuracy of the samples `train --keep-frac F --rank-by STAT [--per-class]` would keep, for F
from 0.1 to 1 (the very selection function training uses). For a per-view store (`label --views
K`), each view's agreement with the centre view's argmax, and its accuracy. For several stores
(`inspect A B C`), their ensemble: each member's accuracy against each way of combining them, and
the ensemble's coverage-accuracy curve.
"""

from __future__ import annotations

import os

import dask
import dask.dataframe as dd
import numpy as np

from ..pipeline.ensembles.registry import BUILT_IN as FIXED_ENSEMBLES
from ..pipeline.report import plots
from ..pipeline.report.measures import reliability
from ..pipeline.runtime.workspace import slug, workspace_dir
from ..pipeline.sources.noise import clean_accuracy, described, store_noise
from ..pipeline.weak.ensemble import check_members, ensemble_indexes
from ..pipeline.weak.selection import Ranking
from ..storage import open_store, schema
from ..storage.fsutil import join
from .inspect_config import InspectConfig

QUANTILES = (1, 5, 25, 50, 75, 95, 99)
COVERAGE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def store_statistics(url: str, storage_options: dict | None = None) -> dict:
    import dask.array as da  # lazy: dask's arrays load only for statistics over a store

    store = open_store(url, storage_options)
    store.require_complete()
    store.check_rows()  # every shard's rows against its marker: statistics of damaged rows are wrong
    store.check_index()
    if store.features:
        return feature_statistics(store)
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
    noise = store_noise(store) if has_label else None
    if noise is not None:  # the shards' labels are noisy: also against the clean ones
        stats["label_noise"] = {k: noise[k] for k in ("kind", "rate", "seed", "flip_rate")}
        stats["accuracy_clean"] = clean_accuracy(store, noise)
    if has_label:
        stats["accuracy"] = float(result["accuracy"])
        stats["label_counts"] = [int(c) for c in result["label_counts"]]
        stats["reliability"] = reliability(columns["confidence"], correct)
        stats["ece"] = stats["reliability"]["ece"]
    else:
        stats["reliability"] = reliability(columns["confidence"], da.zeros_like(columns["confidence"]))
        stats["reliability"]["accuracy"] = None
    return stats


def feature_statistics(store) -> dict:
    """A feature store's figures (its rows checked already): samples, width, the features' L2 norm
    (mean, quantiles), the share of exactly zero entries, and the ground truth's per-class counts."""
    import dask.array as da  # lazy, as above

    features = store.dask_arrays()[schema.FEATURES].astype("float32")
    norms = da.sqrt((features ** 2).sum(axis=1))
    index = store.index()
    lazy = {"norm_mean": norms.mean(), "norm_q": da.percentile(norms, QUANTILES), "zero": (features == 0).mean()}
    (result,) = dask.compute(lazy)
    stats = {"store": store.url, "kind": "features", "model": store.attrs["weak"]["model"],
             "data": store.attrs["data"]["name"], "split": store.attrs["data"]["split"], "samples": index.num_rows,
             "shards": len(store.shards), "width": store.features, "classes": store.num_classes,
             "precision": store.attrs["precision"],
             "norm": {"mean": float(result["norm_mean"]),
                      "quantiles": dict(zip(map(str, QUANTILES), map(float, result["norm_q"])))},
             "zero_fraction": float(result["zero"]), "has_labels": "label" in index.column_names}
    if stats["has_labels"]:
        stats["label_counts"] = [int(c) for c in np.bincount(index["label"].to_numpy(), minlength=store.num_classes)]
    return stats


def coverage_accuracy(index, stats=("margin", "confidence", "entropy"), coverage=COVERAGE) -> dict:
    """The weak labels' accuracy on the samples `--keep-frac F --rank-by STAT [--per-class]` keeps
    (`selection.most_trusted`, ties and rounding included), for each F in `coverage`: {"coverage":
    [...], "overall": {stat: [...]}, "per_class": {stat: [...]}}. Needs the index's label column."""
    correct = index["pred"].to_numpy() == index["label"].to_numpy()
    everyone = np.ones(index.num_rows, dtype=bool)
    out = {"coverage": list(coverage), "overall": {}, "per_class": {}}
    for mode, per_class in (("overall", False), ("per_class", True)):
        for stat in stats:
            ranking = Ranking(index, everyone, stat, per_class)  # one sort for every fraction
            out[mode][stat] = [round(float(correct[ranking.keep(f)].mean()), 6) for f in coverage]
    return out


def ensemble_statistics(urls: list[str]) -> dict:
    """Several stores of the same shards as an ensemble: each member's accuracy, each way of
    combining them (accuracy, the share of samples on which k members agree with it), and the
    mean-prob ensemble's coverage-accuracy curve (agreement as one more ranking)."""
    members = [open_store(u) for u in urls]
    for m in members:
        m.require_complete()
        m.check_rows()
        m.check_index()
    check_members(members)
    has_label = "label" in members[0].index().column_names
    out = {"members": [{"store": m.url, "weak_model": m.attrs["weak"]["model"]} for m in members],
           "samples": members[0].num_samples, "has_labels": has_label, "ensembles": {}}
    for m, record in zip(members, out["members"]):
        if has_label:
            index = m.index()
            record["accuracy"] = float((index["pred"].to_numpy() == index["label"].to_numpy()).mean())
    for how, index in ensemble_indexes(members, tuple(FIXED_ENSEMBLES)).items():  # each member's logits read once
        agree = index["agreement"].to_numpy()
        record = {"agreement": {str(k): round(float((agree == k).mean()), 6) for k in range(len(members) + 1)}}
        if has_label:
            record["accuracy"] = float((index["pred"].to_numpy() == index["label"].to_numpy()).mean())
        out["ensembles"][how] = record
        if how == "mean-prob" and has_label:  # agreement ranks too: more members agreeing, more trusted
            out["coverage"] = coverage_accuracy(index, stats=("margin", "confidence", "entropy", "agreement"))
    return out


class InspectResult(dict):
    """`run_inspect`'s statistics (a dict, as `--format json` prints them), with their summary."""

    def summary(self) -> list[str]:
        return format_text(self).splitlines()


def run_inspect(cfg: InspectConfig) -> InspectResult:
    urls = [u.strip() for u in cfg.store.split(",") if u.strip()]
    name = slug("+".join(os.path.basename(u.rstrip("/")) for u in urls))
    out = cfg.out or str(workspace_dir(cfg.workspace) / "inspect" / name)
    if len(urls) > 1:
        stats = InspectResult(ensemble_statistics(urls))
        if cfg.plots and "coverage" in stats:
            os.makedirs(out, exist_ok=True)
            stats["files"] = [_coverage_plot(stats["coverage"], os.path.join(out, "coverage-accuracy.png"),
                                             f"mean-prob ensemble of {len(urls)} stores")]
        return stats
    stats = InspectResult(store_statistics(cfg.store))
    if stats.get("kind") == "features":
        return stats
    if stats["has_labels"]:
        stats["coverage"] = coverage_accuracy(open_store(cfg.store).index())
    if cfg.plots:
        os.makedirs(out, exist_ok=True)
        files = [plots.calibration(stats["reliability"], os.path.join(out, "calibration.png"),
                                   f"weak labels: {stats['weak_model']} on {stats['data']} {stats['split']}")]
        classes = list(range(stats["classes"]))
        series = {"weak predictions": stats["pred_counts"]}
        if stats["has_labels"]:
            series["ground truth"] = stats["label_counts"]
        files.append(plots.class_counts(classes, series, os.path.join(out, "class-counts.png"), "per-class counts"))
        if "coverage" in stats:
            files.append(_coverage_plot(stats["coverage"], os.path.join(out, "coverage-accuracy.png"),
                                        f"weak labels: {stats['weak_model']} on {stats['data']} {stats['split']}"))
        stats["files"] = files
    return stats


def _coverage_plot(curve: dict, path: str, title: str) -> str:
    series = {f"{stat}{' per class' if mode == 'per_class' else ''}": list(zip(curve["coverage"], accuracy))
              for mode in ("overall", "per_class") for stat, accuracy in curve[mode].items()}
    return plots.curves(series, path, xlabel="kept fraction (--keep-frac)", ylabel="weak-label accuracy on the kept",
                        title=f"coverage-accuracy: {title}")


def coverage_lines(curve: dict) -> list[str]:
    """The coverage-accuracy curve as a text table."""
    columns = [(mode, stat) for mode in ("overall", "per_class") for stat in curve[mode]]
    head = "kept  " + "  ".join(f"{stat + (' /cls' if mode == 'per_class' else ''):>15}" for mode, stat in columns)
    rows = [f"{f:4.1f}  " + "  ".join(f"{curve[mode][stat][i]:15.4f}" for mode, stat in columns)
            for i, f in enumerate(curve["coverage"])]
    return ["weak-label accuracy on the kept samples (--keep-frac F --rank-by STAT [--per-class]):", head, *rows]


def format_ensemble(stats: dict) -> str:
    lines = [f"ensemble of {len(stats['members'])} stores, {stats['samples']} samples"]
    for m in stats["members"]:
        lines.append(f"member {m['store']} ({m['weak_model']})"
                     + (f": accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""))
    for how, e in stats["ensembles"].items():
        agree = ", ".join(f"{k}: {v:.3f}" for k, v in e["agreement"].items())
        lines.append(f"{how}" + (f": accuracy {e['accuracy']:.4f}" if "accuracy" in e else "")
                     + f"; members agreeing with it (share of samples) {agree}")
    if "coverage" in stats:
        lines += coverage_lines(stats["coverage"])
    for f in stats.get("files", []):
        lines.append(f"figure {f}")
    return "\n".join(lines)


def format_features(stats: dict) -> str:
    n = stats["norm"]
    lines = [f"feature store {stats['store']}",
             f"model {stats['model']} on {stats['data']} {stats['split']} ({stats['precision']}): {stats['width']}-d "
             "pooled features",
             f"samples {stats['samples']} in {stats['shards']} shards, {stats['classes']} classes",
             f"L2 norm mean {n['mean']:.4f}; " + ", ".join(f"p{k} {v:.3f}" for k, v in n["quantiles"].items()),
             f"exactly zero: {stats['zero_fraction']:.4f} of the entries"]
    if stats["has_labels"]:
        counts = stats["label_counts"]
        lines.append(f"ground truth per class: {min(counts)} to {max(counts)} samples")
    return "\n".join(lines)


def format_text(stats: dict) -> str:
    if "ensembles" in stats:
        return format_ensemble(stats)
    if stats.get("kind") == "features":
        return format_features(stats)
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
        lines.append(f"weak-label accuracy {stats['accuracy']:.4f}, ECE {stats['ece']:.4f} (15 bins)"
                     + (" against the shards' noisy labels" if "accuracy_clean" in stats else ""))
        if "accuracy_clean" in stats:
            lines.append(f"weak-label accuracy {stats['accuracy_clean']:.4f} against the clean labels (the shards' "
                         f"labels carry {described(stats['label_noise'])})")
    else:
        lines.append("no ground truth in the shards: accuracy and calibration unavailable")
    if stats.get("views"):
        agree = stats["view_agreement_with_centre"]
        lines.append(f"{stats['views']} views per sample: argmax as the centre view's on "
                     + ", ".join(f"{a:.3f}" for a in agree) + f" (mean {sum(agree) / len(agree):.3f})")
        if "view_accuracy" in stats:
            acc = stats["view_accuracy"]
            lines.append("accuracy per view " + ", ".join(f"{a:.3f}" for a in acc) + f" (mean {sum(acc) / len(acc):.3f})")
    if "coverage" in stats:
        lines += coverage_lines(stats["coverage"])
    for f in stats.get("files", []):
        lines.append(f"figure {f}")
    return "\n".join(lines)

