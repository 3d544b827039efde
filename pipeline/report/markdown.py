"""The report's Markdown: the table of rows (top-1, PGR, the paired difference to a reference row),
what predicts the gain (misfit beside gain), per-class top-1, a paired check of two runs, the few-shot
tables, and the notes on what a table leaves out. Pure rendering of `stages/report.py`'s analysis."""

from __future__ import annotations

import json
from collections import defaultdict

from ..sources.noise import described
from .paired import cell


def few_shot_markdown(table: dict) -> str:
    """A few-shot table: its setting in a heading line, then a row per method."""
    s = table["setting"]
    shots = sorted({k for r in table["rows"] for k in r["shots"]})
    head = (f"Few-shot on {s['data']} {s['split']}: {s['ways']}-way, {s['queries']} queries per class, "
            f"{s['episodes']} episodes (seed {s['episode_seed']}, the same for every model), scored on {s['labels']}; "
            "cosine nearest centroid of pooled features, final weights")
    lines = [head, "", "| method | runs | " + " | ".join(f"{s['ways']}-way {k}-shot (%)" for k in shots) + " |",
             "|---|---|" + "---|" * len(shots)]
    for r in table["rows"]:
        cells = [_pct(*r["shots"][k]) if k in r["shots"] else "" for k in shots]
        lines.append(f"| {r['label']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(mean, std, signed=False) -> str:
    if mean is None:
        return "n/a"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return fmt.format(100 * mean) + (f" ± {100 * std:.2f}" if std is not None else "")


def _num(mean, std) -> str:
    return "n/a" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def markdown_table(report: dict) -> str:
    """The table: a row per method, top-1 mean ± std over seeds, PGR, and its paired difference to the
    reference row (points, 95% interval over the seeds both share; a verdict only where it excludes 0)."""
    reference = report.get("reference", "hard")
    lines = [f"| method | setting | seeds | top-1 (%) | PGR | vs ceiling (points) | vs {reference}: paired Δ, 95% "
             "interval (points) |", "|---|---|---|---|---|---|---|"]
    def partial(row, key):  # a PGR is undefined for seeds whose ceiling does not beat the weak model
        n = row.get(f"{key}_n")
        return f" (n={n})" if n is not None and n < row["n"] else ""

    for row in report["rows"]:
        pgr_cell = _num(row.get("pgr_mean"), row.get("pgr_std")) + partial(row, "pgr") if "pgr_mean" in row else ""
        delta_cell = (_pct(row.get("delta_mean"), row.get("delta_std"), signed=True) + partial(row, "delta")
                      if "delta_mean" in row else "")
        vs = row.get("vs") or {}
        vs_cell = "reference" if vs.get("reference") == "itself" else cell(vs) if vs else ""
        lines.append(f"| {row['label']} | {row['setting']} | {row['n']} | {_pct(row['top1_mean'], row['top1_std'])} | "
                     f"{pgr_cell} | {delta_cell} | {vs_cell} |")
    return "\n".join(lines)


def misfit_markdown(report: dict) -> str:
    """What predicts the gain: per row, the student's misfit to its weak model on the validation split
    (KL(student || weak), argmax disagreement) beside its gain over it (in cross-entropy and top-1);
    for the cross-entropy, theory says gain >= misfit (Mulgund & Pabbaraju, ICML 2025). "" without any."""
    rows = [r for r in report["rows"] if r.get("misfit")]
    if not rows:
        return ""
    lines = ["What predicts the gain (validation split, mean ± std over runs): misfit = KL(student ‖ weak) in nats "
             "and argmax disagreement; gain = the weak model's cross-entropy minus the student's (nats), and top-1 "
             "(points); for the cross-entropy, gain ≥ misfit is the bound.", "",
             "| method | runs | misfit KL | disagreement (%) | gain in CE | gain in top-1 (points) | runs with gain ≥ KL |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["misfit"]
        lines.append(f"| {r['label']} | {m['runs']} | {_num(*m['kl'])} | {_pct(*m['disagree'])} | {_num(*m['gain_ce'])} "
                     f"| {_pct(*m['gain_top1'], signed=True)} | {m['bound_holds']} of {m['runs']} |")
    return "\n".join(lines)


def notes(report: dict) -> list[str]:
    """What the table leaves out or cannot say, one line each: rows without a ceiling, seeds run
    twice, unfinished runs, and what could not be read, with why."""
    lines = []
    for row in report["rows"]:
        if row.get("no_ceiling"):
            lines.append(f"- {row['label']}: no ceiling matches (same data, split, strong model and recipe), so no PGR; "
                         f"`w2s-pipe train --loss gt` with that model and recipe on the labelled split supplies it")
        by_name = {r["name"]: r for r in report["runs"]}
        missing = [(by_name[n]["seed"], by_name[n]["pgr_missing"]) for n in row["runs"]
                   if n in by_name and by_name[n].get("pgr_missing") and not row.get("no_ceiling")]
        if missing:
            lines.append(f"- {row['label']}: PGR undefined for {len(missing)} of {row['n']} seeds: "
                         + "; ".join(f"seed {seed}: {why}" for seed, why in missing))
        for seed, why in (row.get("vs") or {}).get("unpaired", []):
            lines.append(f"- {row['label']}: seed {seed} not paired with {row['vs']['reference']}: {why}")
        if row.get("repeated_seeds"):
            lines.append(f"- {row['label']}: seed {', '.join(map(str, row['repeated_seeds']))} was run more than once "
                         f"({', '.join(row['runs'])}); the row counts each seed once in n but averages every run")
    lines += noise_notes(report["runs"])
    for r in report.get("unfinished", []):
        lines.append(f"- run {r['name']}: unfinished or crashed ({r['epochs_done']} epochs logged); left out of every mean")
    for x in report.get("unreadable", []):
        lines.append(f"- {x['what']} {x['name']}: could not be read, left out: {x['why']}")
    return lines


def noise_notes(runs: list[dict]) -> list[str]:
    """One line per noise the runs' training labels carried (`prepare --label-noise`), saying that
    every top-1 is against clean labels: the validation split is not noised, or was scored against
    the clean field its shards keep."""
    seen = defaultdict(list)
    for r in runs:
        if r["data"].get("label_noise"):
            seen[(r["data"].get("name"), json.dumps(r["data"]["label_noise"], sort_keys=True))].append(r)
    lines = []
    for (name, noise), members in seen.items():
        record = json.loads(noise)
        part = (f" in {record['noised_shards']} of its {record['shards']} shards" if "noised_shards" in record else "")
        fields = sorted({r["data"]["val_labels"] for r in members if r["data"].get("val_labels")})
        scored = (f"validation scored against the clean labels its shards keep ({', '.join(fields)})" if fields
                  else "the validation split is not noised")
        lines.append(f"- noisy labels: {len(members)} runs trained on {name} shards whose ground-truth labels carry "
                     f"{described(record)}{part}; every top-1 is against clean labels ({scored})")
    return lines


def per_class_markdown(table: dict) -> str:
    """Per-class top-1 (%) of each row, the mean over its runs' kept predictions."""
    classes = range(table["classes"])
    lines = ["Per-class top-1 (%), from the runs' kept predictions (mean over runs):", "",
             "| method | runs | " + " | ".join(str(c) for c in classes) + " |", "|---|---|" + "---|" * len(classes)]
    for r in table["rows"]:
        cells = ["n/a" if v != v else f"{100 * v:.1f}" for v in r["top1"]]  # NaN: no sample of the class
        lines.append(f"| {r['label']} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair_markdown(pair: dict) -> str:
    """Two runs on the same samples: their top-1, the samples only one gets right, McNemar's p."""
    return (f"Runs {pair['a']} (A) and {pair['b']} (B) on the same {pair['n']} samples of {pair['split']}: top-1 "
            f"{100 * pair['top1_a']:.2f}% against {100 * pair['top1_b']:.2f}%; A alone right on {pair['a_only']}, B "
            f"alone on {pair['b_only']}, both on {pair['both']}, neither on {pair['neither']}; McNemar's exact test "
            f"p = {pair['p']:.4g}: {pair['verdict']}; they agree on {100 * pair['agreement']:.2f}% of predictions.")
