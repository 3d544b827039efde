"""`w2s-pipe report [WORKSPACE]`: weak model, strong ceiling and weak-to-strong runs side by side,
with the performance gap recovered, and figures. Works on any workspace, digits or ImageNet.

A run's role comes from what it is, not from its name:
* weak: its checkpoint is the weak model of a store in the workspace, or an online run's teacher;
* weak-to-strong: it trained from a store (its centre view, or its views replayed), or online;
* ceiling: ground-truth training on the data and split a store labelled (or an online run learnt).
The runs and stores themselves are read by `pipeline/report/results.py`.
Accuracies are each run's final validation top-1 (never a best-of-epochs pick, which would select
on the validation split). PGR = (w2s - weak) / (ceiling - weak), paired by seed where possible.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from ..errors import W2SError
from ..pipeline.evaluation.fewshot import SETTING
from ..pipeline.losses.registry import BUILT_IN, is_loss, loss_class
from ..pipeline.report import comparisons, plots
from ..pipeline.report.markdown import (  # noqa: F401  (re-exported: demo and study print these)
    few_shot_markdown,
    markdown_table,
    misfit_markdown,
    noise_notes,
    notes,
    pair_markdown,
    per_class_markdown,
)
from ..pipeline.report.measures import mean_std, pgr
from ..pipeline.report.results import load_run, load_store, report_workspace, weak_accuracy
from ..pipeline.runtime.workspace import slug
from ..storage.fsutil import write_whole
from .report_config import ReportConfig
from .train_config import option_defaults

LOSS_ORDER = [name for name in BUILT_IN if name != "gt"][::-1]  # hard, kd, augconf, adaptconf


def build_report(workspace, reference: str | None = None) -> dict:
    ws = report_workspace(workspace)
    runs, stores, unreadable, unfinished = _read_workspace(ws)
    if not runs and not stores and not unreadable and not unfinished:
        raise W2SError(f"nothing to report in {ws}: no runs/ and no stores/ (run `w2s-pipe demo`, or pass the workspace)")
    _assign_roles(runs, stores, ws)
    _against_ceilings(runs)
    for r in runs:
        if r["role"] == "w2s":
            comparisons.run_misfit(r)
    rows = _rows(runs)
    by_name = {r["name"]: r for r in runs}
    comparisons.check_reference(rows, reference or "hard", given=reference is not None)
    comparisons.against_reference(rows, by_name, reference or "hard")
    for row in rows:
        comparisons.row_misfit(row, by_name)
    return {"workspace": str(ws), "rows": rows, "runs": runs, "stores": stores, "unreadable": unreadable,
            "unfinished": [{"name": r["name"], "epochs_done": len(r["curve"])} for r in unfinished],
            "few_shot": few_shot_tables(rows, runs), "reference": reference or "hard"}


def _read_workspace(ws) -> tuple[list, list, list, list]:
    """(finished runs, stores with their weak model's accuracy, what could not be read and why,
    unfinished runs) of a workspace. Unfinished or crashed runs (no end record) are listed, never averaged."""
    runs_dir, stores_dir = ws / "runs", ws / "stores"
    defaults = option_defaults()
    runs = [r for r in (load_run(str(p), defaults) for p in sorted(runs_dir.glob("*")) if p.is_dir()) if r] \
        if runs_dir.is_dir() else []
    stores = [s for s in (load_store(str(p)) for p in sorted(stores_dir.glob("*")) if p.is_dir()) if s] if stores_dir.is_dir() else []
    unreadable = [{"what": "run", "name": x["name"], "why": x["error"]} for x in runs if "error" in x]
    unreadable += [{"what": "store", "name": x["name"], "why": x["error"]} for x in stores if "error" in x]
    runs = [r for r in runs if "error" not in r]
    stores = [s for s in stores if "error" not in s]
    unfinished = [r for r in runs if not r["finished"]]
    runs = [r for r in runs if r["finished"]]
    for s in stores:
        s["weak_top1"], s["weak_top1_from"] = weak_accuracy(s, str(ws / "report" / "weak-accuracy"), str(ws))
    return runs, stores, unreadable, unfinished


def _against_ceilings(runs: list[dict]) -> None:
    """Each weak-to-strong run's ceiling (its seed's, else the mean of the matching ones), and its
    PGR (without ground truth) or its difference to the ceiling (+gt), or why there is none."""
    ceilings = [r for r in runs if r["role"] == "ceiling" and r["top1"] is not None]
    for r in runs:
        if r["role"] != "w2s" or r["top1"] is None:
            continue
        chosen = r["settings"].get("select") or r["settings"].get("keep_frac") is not None
        without = ("steps_per_epoch",) if chosen else ()  # fewer samples, fewer steps: the same recipe
        matching = [c for c in ceilings if ceiling_key(c, without) == ceiling_key(r, without)]
        same_seed = [c for c in matching if c["seed"] == r["seed"]]
        if len(same_seed) > 1:
            r["ceiling_note"] = f"{len(same_seed)} ceilings of seed {r['seed']} ({', '.join(c['name'] for c in same_seed)})"
        ceiling = mean_std(c["top1"] for c in same_seed)[0] if same_seed else mean_std(c["top1"] for c in matching)[0]
        r["ceiling_top1"] = ceiling
        r["ceiling_runs"] = [c["name"] for c in (same_seed or matching)]
        if r["gt_weight"] > 0:
            r["delta_vs_ceiling"] = None if ceiling is None else r["top1"] - ceiling
        elif r.get("weak_top1") is not None and ceiling is not None:
            r["pgr"] = pgr(r["weak_top1"], ceiling, r["top1"])
        if r["gt_weight"] == 0 and r.get("pgr") is None:
            r["pgr_missing"] = ("no matching ceiling" if ceiling is None else
                                f"no weak accuracy: {r.get('weak_top1_from')}" if r.get("weak_top1") is None
                                else f"the ceiling ({ceiling:.4f}) does not beat the weak model ({r['weak_top1']:.4f})")


def _rows(runs: list[dict]) -> list[dict]:
    """The table: one row per role, models, loss and resolved settings (all but the seed, the name
    and the store's path), with top-1 mean ± std over seeds and PGR (or the difference to the ceiling)."""
    groups = defaultdict(list)
    for r in runs:
        if r["role"] == "weak":
            key = ("weak", r["strong"], "", "", False)
        elif r["role"] == "ceiling":
            key = ("ceiling", r["strong"], "", "", False)
        elif r["role"] == "w2s":
            weak = (r.get("weak_model") or "?") + (" (online teacher)" if r.get("online") else
                                                   f" ({r['data']['views']} stored views)" if r["data"].get("views") else "")
            weak += _trusted(r["settings"])
            key = ("w2s", r["strong"], weak, r["loss"], r["gt_weight"] > 0)
        else:
            key = ("other", r["strong"], r["data"].get("split", ""), r["loss"], r["gt_weight"] > 0)
        # Only runs with the same resolved settings (all but the seed, name and store path) share a row.
        groups[key + (json.dumps(r["settings"], sort_keys=True, default=str),)].append(r)
    differing = _differing_settings(groups)

    def order(key):
        role, model, weak, loss, gt = key
        rank = {"weak": 0, "ceiling": 1, "w2s": 2, "other": 4}[role] + (1 if gt else 0)
        return (rank, model, weak, LOSS_ORDER.index(loss) if loss in LOSS_ORDER else 9)

    rows = []
    for key in sorted(groups, key=lambda k: (order(k[:5]), k[5])):
        role, model, weak, loss, gt, _ = key
        members = groups[key]
        top1 = mean_std(r["top1"] for r in members)
        seeds = [r["seed"] for r in members]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        distinct = differing.get(key, {})
        row = {
            "role": role, "model": model, "loss": loss or "gt", "gt_weight": bool(gt), "weak_model": weak or None,
            "setting": {"weak": "weak model", "ceiling": "strong ceiling", "other": "other"}.get(
                role, "distillation (+gt)" if gt else "weak-to-strong"),
            "label": _label(role, model, weak, loss, gt, members)
            + (" (" + ", ".join(f"{k}={v}" for k, v in distinct.items()) + ")" if distinct else ""),
            "runs": [r["name"] for r in members], "seeds": sorted({s for s in seeds if s is not None}, key=str),
            "settings": members[0]["settings"],
            "top1_mean": top1[0], "top1_std": top1[1], "n": len({s for s in seeds}),
            "repeated_seeds": repeated,
        }
        if role == "w2s" and any(r.get("ceiling_top1") is None for r in members):
            row["no_ceiling"] = True
        if role == "w2s" and not gt:
            row["pgr_mean"], row["pgr_std"], row["pgr_n"] = mean_std(r.get("pgr") for r in members)
        if role == "w2s" and gt:
            row["delta_mean"], row["delta_std"], row["delta_n"] = mean_std(r.get("delta_vs_ceiling") for r in members)
        rows.append(row)
    return rows


def few_shot_tables(rows: list[dict], runs: list[dict]) -> list[dict]:
    """The few-shot figures `eval --run RUN --episodes N` recorded for the runs' final weights: one
    table per setting (data, split, ways, queries, episodes, their seed, the labels scored), a row
    per report row with any such record, each shot count's accuracy as mean ± std over its runs."""
    by_name = {r["name"]: r for r in runs}
    tables = {}
    for row in rows:
        for name in row["runs"]:
            for rec in by_name[name].get("few_shot", []):
                setting = json.dumps({k: rec.get(k) for k in SETTING}, sort_keys=True)
                tables.setdefault(setting, {}).setdefault(row["label"], []).append(rec)
    out = []
    for setting, members in tables.items():
        table_rows = []
        for label, records in members.items():
            shots = sorted({k for rec in records for k in rec["few_shot"]})
            figures = {k: mean_std(rec["few_shot"][k]["accuracy"] for rec in records if k in rec["few_shot"])[:2]
                       for k in shots}  # (mean, std)
            table_rows.append({"label": label, "n": len(records), "shots": figures})
        out.append({"setting": json.loads(setting), "rows": table_rows})
    return out


def _assign_roles(runs: list[dict], stores: list[dict], ws) -> None:
    """Each run's role (weak, w2s, ceiling, other), and for a weak-to-strong run its weak model, the
    run that trained it and the weak model's accuracy (PGR's weak figure): from the store it trained
    from, or from its online teacher's checkpoint."""
    weak_store = {}
    for s in stores:
        if s["weak_checkpoint"]:
            weak_store[os.path.realpath(os.path.dirname(s["weak_checkpoint"]))] = s
    # Online runs (train --teacher) name their weak checkpoint themselves; it is evaluated as a store's is.
    teachers = {}
    for r in runs:
        teacher = r["data"].get("teacher")
        if teacher and teacher.get("checkpoint") and teacher["checkpoint"] not in teachers:
            t = {"weak_checkpoint": teacher["checkpoint"], "weak_checkpoint_sha256": teacher.get("checkpoint_sha256"),
                 "data": r["data"].get("name")}
            t["weak_top1"], t["weak_top1_from"] = weak_accuracy(t, str(ws / "report" / "weak-accuracy"), str(ws))
            teachers[teacher["checkpoint"]] = t
            weak_store.setdefault(os.path.realpath(os.path.dirname(teacher["checkpoint"])), t)
    by_url = {s["url"]: s for s in stores}
    labelled = {(s["data"], s["split"]) for s in stores}
    labelled |= {(r["data"].get("name"), r["data"].get("split")) for r in runs if r["data"].get("teacher")}
    run_by_dir = {r["dir"]: r for r in runs}

    for r in runs:
        teacher = r["data"].get("teacher")
        if r["dir"] in weak_store:
            r["role"] = "weak"
        elif teacher:
            r["role"], r["online"], r["store"] = "w2s", True, None
            weak_run = run_by_dir.get(os.path.realpath(os.path.dirname(teacher.get("checkpoint") or "")))
            r["weak_run"] = weak_run["name"] if weak_run else None
            t = teachers.get(teacher.get("checkpoint")) or {}
            r["weak_top1"], r["weak_top1_from"] = t.get("weak_top1"), t.get("weak_top1_from", "no teacher checkpoint")
            r["weak_predictions"], r["weak_predictions_from"] = t.get("weak_predictions"), r["weak_top1_from"]
            r["weak_model"] = teacher.get("model")
        elif r["data"].get("store") and (not is_loss(r["loss"]) or loss_class(r["loss"]).reads_weak):  # not --loss gt's
            r["role"] = "w2s"
            store = by_url.get(os.path.realpath(r["data"]["store"]))
            r["store"] = store["name"] if store else None
            r["weak_run"] = None
            if store and store["weak_checkpoint"]:
                weak_run = run_by_dir.get(os.path.realpath(os.path.dirname(store["weak_checkpoint"])))
                r["weak_run"] = weak_run["name"] if weak_run else None
            if store:
                r["weak_top1"], r["weak_top1_from"] = store["weak_top1"], store["weak_top1_from"]
                r["weak_predictions"], r["weak_predictions_from"] = store.get("weak_predictions"), r["weak_top1_from"]
            r["weak_model"] = store["weak_model"] if store else r["data"].get("weak")
            if r["data"].get("ensemble"):  # not the first member's figure: the ensemble is another teacher
                r["weak_model"] = r["data"].get("weak")
                r["weak_predictions"], r["weak_predictions_from"] = None, "an ensemble is no one weak model"
                r["weak_top1"], r["weak_top1_from"] = None, (
                    f"an ensemble of {len(r['data']['ensemble']['members'])} stores, whose own validation top-1 "
                    "report does not measure")
        elif r["loss"] == "gt" and (r["data"].get("name"), r["data"].get("split")) in labelled:
            r["role"] = "ceiling"
        else:
            r["role"] = "other"


def _trusted(settings: dict) -> str:
    """Which of the weak labels a run trusted, for its row's name: " (select ..., 70% by margin per
    class, weighted by confidence)", or "" for all of them, evenly."""
    said = []
    if settings.get("select"):
        said.append(f"select {settings['select']}")
    if settings.get("keep_frac") is not None:
        said.append(f"{settings['keep_frac']:.0%} by {settings.get('rank_by') or 'margin'}"
                    + (" per class" if settings.get("per_class") else ""))
    if settings.get("weight_by"):
        said.append(f"weighted by {settings['weight_by']}")
    return f" ({', '.join(said)})" if said else ""


def ceiling_key(run: dict, without: tuple = ()) -> tuple:
    """What a ceiling must share with a weak-to-strong run to be its ceiling: the data and split (the
    ceiling trains on the ground truth of what the store labelled), the architecture and the recipe
    (optimizer, schedule, epochs, size, augmentation), not the loss or its parameters. A run that
    trained on a chosen part of the store (--select, --keep-frac) has fewer steps per epoch by
    design: its ceiling is compared `without` steps per epoch (the same recipe on all the data)."""
    settings = run["settings"]
    keys = ("opt", "lr", "weight_decay", "sched", "epochs", "batch_size", "img_size", "steps_per_epoch", "crop_scale",
            "hflip", "aa", "mixup", "cutmix", "pretrained", "linear_probe")
    recipe = {k: settings.get(k) for k in keys if k not in without}
    data = settings.get("data_source") or {}
    probe = bool(settings.get("features"))  # a probe from stored features has a probe for its ceiling
    return (run["strong"], data.get("name"), data.get("split"), json.dumps(data.get("label_noise"), sort_keys=True),
            json.dumps(recipe, sort_keys=True, default=str), probe)


def _differing_settings(groups: dict) -> dict:
    """For rows that would read alike (same role, models, loss), the settings whose values tell them apart."""
    alike = defaultdict(list)
    for key in groups:  # a probe's rows are named "probe" already: alike only to probes
        alike[key[:5] + (bool(json.loads(key[5]).get("features")),)].append(key)
    out = {}
    for keys in alike.values():
        if len(keys) < 2:
            continue
        settings = [groups[k][0]["settings"] for k in keys]
        names = sorted({n for s in settings for n in s})
        varying = [n for n in names if len({json.dumps(s.get(n), sort_keys=True, default=str) for s in settings}) > 1]
        for k, s in zip(keys, settings):
            out[k] = {n: s.get(n) for n in varying}
    return out


def _label(role, model, weak, loss, gt, members) -> str:
    probe = " probe" if members[0]["settings"].get("features") else ""  # a head on stored features
    if role == "weak":
        return f"weak {model}"
    if role == "ceiling":
        return f"ceiling {model}{probe} (ground truth)"
    if role == "w2s":
        return f"{model}{probe} from {weak}: {loss}" + (" + gt" if gt else "")
    return f"{model}{probe} {loss} on {members[0]['data'].get('split', '?')}"


def write_plots(report: dict, out: str) -> list[str]:
    files = []
    palette = {"weak": "#c44e52", "ceiling": "#55a868", "w2s": "#4c72b0", "other": "#8c8c8c"}
    bars = [{"label": r["label"], "mean": r["top1_mean"], "std": r["top1_std"],
             "color": "#8172b2" if r["gt_weight"] and r["role"] == "w2s" else palette[r["role"]]}
            for r in report["rows"] if r["top1_mean"] is not None]
    if bars:
        files.append(plots.accuracy_bars(bars, os.path.join(out, "accuracy.png")))
    for s in report["stores"]:
        files.append(plots.calibration(s["reliability"], os.path.join(out, f"calibration-{slug(s['name'])}.png"),
                                       f"weak labels: {s['weak_model']} on {s['data']} {s['split']}"))
    by_name = {r["name"]: r for r in report["runs"]}
    schedule = {}
    for row in report["rows"]:
        points = _mean_series([by_name[n]["schedule"] for n in row["runs"]])
        if points and by_name[row["runs"][0]]["schedule_name"]:
            schedule[f"{row['label']} ({by_name[row['runs'][0]]['schedule_name']})"] = points
    if schedule:
        files.append(plots.curves(schedule, os.path.join(out, "beta-alpha.png"), xlabel="step",
                                  ylabel="mean beta (adaptconf) / alpha (augconf)", title="confidence weight over training"))
    points = [{"label": row["label"], **by_name[n]["misfit"]} for row in report["rows"] for n in row["runs"]
              if by_name[n].get("misfit")]
    if points:
        files.append(plots.gain_vs_misfit(points, os.path.join(out, "gain-vs-misfit.png")))
    curves = {row["label"]: _mean_series([by_name[n]["curve"] for n in row["runs"]]) for row in report["rows"]}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        files.append(plots.curves(curves, os.path.join(out, "curves.png"), xlabel="epoch", ylabel="validation top-1",
                                  title="training curves (mean over seeds)"))
    return files


def _mean_series(series: list[list]) -> list[tuple[float, float]]:
    acc = defaultdict(list)
    for points in series:
        for x, y in points:
            acc[x].append(y)
    return [(x, sum(ys) / len(ys)) for x, ys in sorted(acc.items())]


class ReportResult(dict):
    """`run_report`'s report (a dict, as report.json holds it), with its summary."""

    def sections(self) -> list[str]:
        """The tables after the main one: what predicts the gain, per class, a pair, few-shot."""
        out = [misfit_markdown(self)]
        if self.get("per_class"):
            out.append(per_class_markdown(self["per_class"]))
        if self.get("pair"):
            out.append(pair_markdown(self["pair"]))
        out += [few_shot_markdown(table) for table in self["few_shot"]]
        return [x for x in out if x]

    def summary(self) -> list[str]:
        lines = [f"workspace {self['workspace']}", "", markdown_table(self), *notes(self)]
        for section in self.sections():
            lines += ["", section]
        return [*lines, "", f"report {self['markdown']}"]


def run_report(cfg: ReportConfig) -> ReportResult:
    report = ReportResult(build_report(cfg.workspace, cfg.reference))
    by_name = {r["name"]: r for r in report["runs"]}
    if cfg.per_class:
        report["per_class"] = comparisons.per_class_table(report["rows"], by_name, cfg.split)
    if cfg.pair:
        missing = [n for n in cfg.pair if n not in by_name]
        if missing:
            raise W2SError(f"report --pair: no finished run {missing[0]!r} in {report['workspace']}", option="--pair")
        report["pair"] = comparisons.pair_runs(by_name[cfg.pair[0]], by_name[cfg.pair[1]], cfg.split)
    out = cfg.out or os.path.join(report["workspace"], "report")
    os.makedirs(out, exist_ok=True)
    files = write_plots(report, out) if cfg.plots else []
    report["files"] = files
    md = [f"# w2s-pipe report: {report['workspace']}", "", markdown_table(report), "", *notes(report), ""]
    for section in report.sections():
        md += [section, ""]
    for s in report["stores"]:
        acc = f", weak-label accuracy {100 * s['weak_label_accuracy']:.2f}%, ECE {s['ece']:.4f}" if "ece" in s else ""
        if "weak_label_accuracy_clean" in s:
            acc += (f" (both against the shards' labels, which carry {s['label_noise']}; against the clean labels "
                    f"{100 * s['weak_label_accuracy_clean']:.2f}%)")
        md.append(f"- store `{s['name']}`: {s['weak_model']} on {s['data']} {s['split']}, {s['samples']} samples{acc}")
    md += ["", "PGR = (weak-to-strong - weak) / (ceiling - weak), per seed; accuracies are final-epoch validation top-1.", ""]
    md += [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in files]
    write_whole(os.path.join(out, "report.md"), "\n".join(md) + "\n")
    write_whole(os.path.join(out, "report.json"), json.dumps(report, indent=1, default=str))
    report["markdown"] = os.path.join(out, "report.md")
    return report
