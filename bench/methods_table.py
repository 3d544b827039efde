"""The methods' table of a finished `methods` study: each method fine-tuned and probed, top-1 on val
and PGR per seed, all against the same weak reference (the study's first weak model, the one
teacher of the single-store rows) and the ceiling of the same protocol (fine-tuned or probed).

    w2s-pipe study methods --out /tmp/methods          # about 25 min on 2 CPU cores
    python bench/methods_table.py /tmp/methods         # the table (markdown), and bench/results/methods.json

An ensemble's PGR is measured against the single teacher too, so that the rows compare methods, not
references; the weak models' own val top-1 are listed above the table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from collections import defaultdict

import _util

from w2s_pipe.pipeline.report.paired import cell as paired_cell
from w2s_pipe.pipeline.report.paired import paired_difference


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def row_name(cell: dict) -> str:
    what = cell.get("store") or "ceiling"
    if cell.get("ensemble"):
        what += f" {cell['ensemble']}"
    elif "+" in str(cell.get("store")) and cell.get("loss") != "evidential":
        what += " mean-prob"
    if cell.get("specialist_by"):
        what += f" by {cell['specialist_by']}"
    if cell.get("easy_epochs"):
        what += f" easy-start {cell['easy_epochs']} ep"
    return f"{cell.get('loss')}: {what}"


def reference_row(name: str) -> str | None:
    """A row's reference: hard labels on the same stores; a hard row's, hard labels from the one teacher
    (None: the row is that reference)."""
    loss, what = name.split(": ", 1)
    if loss != "hard":
        return f"hard: {what}"
    return None if what == "centre" else "hard: centre"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="the study's directory (--out of `w2s-pipe study methods`)")
    args = ap.parse_args()
    markers = [json.load(open(p)) for p in glob.glob(os.path.join(args.study, "study", "steps", "*.json"))]
    weak, ceilings, runs = defaultdict(dict), {}, defaultdict(lambda: defaultdict(dict))
    for m in markers:
        meta, top1 = m["meta"], (m["result"].get("top1") or 0) * 100
        probe = bool(m["options"].get("features"))
        if meta.get("role") == "weak":
            weak[meta["weak"]][meta["seed"]] = top1
        elif meta.get("role") == "ceiling":
            ceilings[(probe, meta["seed"])] = top1
        elif meta.get("role") == "grid" and meta["cell"].get("threshold", 0.5) == 0.5:  # the demo recipe's τ; the
            cell = {k: v for k, v in meta["cell"].items() if k not in ("probe", "threshold")}  # others: selection's
            runs[row_name(cell)][probe][meta["seed"]] = top1
    reference = weak[next(iter(weak))] if "test_vit" not in weak else weak["test_vit"]
    lines = ["weak models' val top-1: " + "; ".join(f"{name} {mean_std(list(s.values()))}" for name, s in weak.items()),
             "ceilings: fine-tuned " + mean_std([v for (p, _), v in ceilings.items() if not p]) + ", probe "
             + mean_std([v for (p, _), v in ceilings.items() if p]), "",
             "Δ: the paired difference (points) to the row's reference, seed by seed, with its 95% t interval; a verdict "
             "only where it excludes 0. The reference: hard labels on the same stores (hard rows: hard labels from the "
             "one teacher, `hard: centre`).", "",
             "| method | fine-tuned top-1 | PGR | Δ | probe top-1 | PGR | Δ |", "|---|---|---|---|---|---|---|"]
    table = {}
    for name in sorted(runs):
        cols = []
        ref = reference_row(name)
        if ref and ref not in runs and f"{ref} mean-prob" in runs:  # evidential reads each member: hard on their mean
            ref = f"{ref} mean-prob"
        for probe in (False, True):
            seeds = runs[name].get(probe, {})
            gains = [(v - reference[s]) / (ceilings[(probe, s)] - reference[s]) for s, v in seeds.items()
                     if s in reference and (probe, s) in ceilings and ceilings[(probe, s)] > reference[s]]
            base = runs.get(ref, {}).get(probe, {}) if ref else {}
            diffs = {s: (v - base[s]) / 100 for s, v in seeds.items() if s in base}
            vs = paired_difference(list(diffs.values())) if diffs else None
            cols += [mean_std(list(seeds.values())), mean_std(gains), "reference" if ref is None else paired_cell(vs)]
            table[f"{name} ({'probe' if probe else 'fine-tuned'})"] = {"top1": seeds, "pgr": gains, "vs": ref,
                                                                      "paired": vs, "diffs": diffs}
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    print("\n".join(lines))
    _util.save("methods", {"weak": weak, "ceilings": {f"{'probe' if p else 'fine-tuned'} s{s}": v
                                                      for (p, s), v in ceilings.items()}, "rows": table})


if __name__ == "__main__":
    main()
