"""A study's honest choice of hyperparameters: each value chosen per loss (per grid cell) on one
split, and the table scored on another (`study`'s `select:`), from the study's step markers.

A marker is what stages/study.py writes when a step ends: {"kind", "meta", "result"}, its meta
naming its role (weak, ceiling, grid), seed and cell, and an evaluation's meta the run it is of.
"""

from __future__ import annotations

import json

from ..losses.registry import is_loss, loss_class
from .measures import mean_std, pgr
from .paired import paired_difference


def accuracies(markers: list[dict]) -> dict[str, dict[str, float]]:
    """{train step id: {split: top-1}} from the evaluation markers."""
    out: dict[str, dict[str, float]] = {}
    for m in markers:
        if m["kind"] == "eval" and "top1" in m["result"]:
            out.setdefault(m["meta"]["of"], {})[m["meta"]["split"]] = m["result"]["top1"]
    return out


def _probe(marker: dict) -> bool:
    """Whether a training step is a probe from stored features (its ceiling is a probe too)."""
    return bool(marker.get("options", {}).get("features"))


def _reference(marker: dict, reference: str | None) -> bool:
    """Whether a weak model's step is the study's reference weak model (every PGR's, where a study has
    several weak models: the one that labels its first store); any, where none is named."""
    return reference is None or marker["meta"].get("weak") in (None, reference)


def choose(markers: list[dict], values: dict[str, list], choose_on: str, score_on: str, defaults: dict,
           reference: str | None = None) -> list[dict]:
    """One row per grid cell (its settings but the selected options): the value chosen on
    `choose_on` (the best mean top-1 over seeds; ties to the earlier value in `values`' order), its
    top-1 on `score_on` (mean ± std over seeds) and PGR there (per seed against that seed's weak
    model and ceiling, both scored on `score_on`: the `reference` weak model where there are several,
    the ceiling of the run's protocol, a probe's for a probe), and the top-1 on `score_on` at
    `defaults`' value (what the run would use without `select:`), for comparison."""
    acc = accuracies(markers)
    by_role: dict[str, dict] = {"weak": {}, "ceiling": {}}
    groups: dict[str, dict] = {}
    for m in markers:
        meta = m["meta"]
        if m["kind"] != "train" or m["id"] not in acc:
            continue
        if meta["role"] == "weak":
            if _reference(m, reference):
                by_role["weak"].setdefault(meta["seed"], acc[m["id"]].get(score_on))
            continue
        if meta["role"] == "ceiling":
            by_role["ceiling"].setdefault((meta["seed"], _probe(m)), acc[m["id"]].get(score_on))
            continue
        # what its loss reads of them; a value equal to the option's default is not in a cell (a study
        # names a run by what differs from the defaults, so the demo's own runs are reused)
        reads = loss_class(meta["cell"]["loss"]).tunable() if is_loss(meta["cell"].get("loss")) else ()
        chosen_by = tuple((k, meta["cell"].get(k, defaults.get(k))) for k in values if k in meta["cell"] or k in reads)
        rest = {k: v for k, v in meta["cell"].items() if k not in values}
        key = json.dumps(rest, sort_keys=True, default=str)
        groups.setdefault(key, {"cell": rest, "values": {}, "probe": _probe(m)})["values"].setdefault(
            chosen_by, []).append((meta["seed"], acc[m["id"]]))
    rows = [_row(g, values, choose_on, score_on, defaults, by_role) for g in groups.values()]
    against(rows, "hard")
    return rows


def against(rows: list[dict], reference: str) -> None:
    """Each row's paired difference on the scoring split to the row of the `reference` loss with the
    same cell otherwise (the same stores, ensemble and protocol), seed by seed (paired.py); a row of
    the reference loss itself with more to it (kept fractions, an ensemble) against the plainest one
    of its protocol (one store, the fewest settings)."""
    def rest(row):
        return json.dumps({k: v for k, v in row["cell"].items() if k != "loss"}, sort_keys=True, default=str)

    refs = {rest(r): r for r in rows if r["cell"].get("loss") == reference and r.get("scores")}
    plain = {}  # per protocol, the plainest reference row: one store, the fewest settings (then the first)
    for r in sorted(refs.values(), key=lambda r: ("+" in str(r["cell"].get("store", "")), len(r["cell"]))):
        plain.setdefault(r.get("probe"), r)
    for row in rows:
        ref = refs.get(rest(row))
        if ref is None or not row.get("scores"):
            continue
        if ref is row and plain.get(row.get("probe")) in (None, row):
            row["vs"] = {"reference": "itself", "loss": reference}
            continue
        if ref is row:  # the reference loss with a selection, an ensemble, ...: against the plain one
            ref = plain[row.get("probe")]
        seeds = sorted(set(row["scores"]) & set(ref["scores"]), key=str)
        diffs = {seed: row["scores"][seed] - ref["scores"][seed] for seed in seeds}
        row["vs"] = {"loss": reference, **paired_difference(list(diffs.values())), "diffs": diffs}


def _row(group: dict, values: dict, choose_on: str, score_on: str, defaults: dict, by_role: dict) -> dict:
    def rank(combo):  # a combination's place in `values`' order
        return [values[k].index(v) if v in values[k] else len(values[k]) for k, v in combo]

    tried = sorted(group["values"], key=rank)
    means = {combo: mean_std(a.get(choose_on) for _, a in group["values"][combo])[0] for combo in tried}
    best = max((c for c in tried if means[c] is not None), key=lambda c: means[c], default=None)
    row = {"cell": group["cell"], "probe": group["probe"], "chosen_on": choose_on, "scored_on": score_on,
           "by_value": [{"value": dict(c), "choose_mean": means[c],
                         "score_mean": mean_std(a.get(score_on) for _, a in group["values"][c])[0]} for c in tried]}
    if best is None:
        return row
    runs = group["values"][best]
    row["selected"] = dict(best)  # {} where its loss reads none of the options: nothing to choose
    row["score_mean"], row["score_std"], row["n"] = mean_std(a.get(score_on) for _, a in runs)
    row["scores"] = {seed: a[score_on] for seed, a in runs if a.get(score_on) is not None}
    ceiling = {seed: c for (seed, probe), c in by_role["ceiling"].items() if probe == group["probe"]}
    weak = {seed: by_role["weak"].get(seed, by_role["weak"].get(None)) for seed, _ in runs}  # None: one for all
    gains = [pgr(weak[seed], ceiling.get(seed), a.get(score_on)) for seed, a in runs
             if None not in (weak[seed], ceiling.get(seed), a.get(score_on))]
    row["pgr_mean"], row["pgr_std"], _ = mean_std(gains)
    default = tuple((k, defaults.get(k)) for k, _ in best)
    if best and default in group["values"]:
        row["default"] = dict(default)
        row["default_mean"], row["default_std"], _ = mean_std(a.get(score_on) for _, a in group["values"][default])
    return row


def baselines(markers: list[dict], score_on: str, reference: str | None = None) -> dict[str, tuple]:
    """The reference weak model's and the ceilings' top-1 on `score_on`: {role: (mean, std, n)},
    "probe ceiling" too where the study has probes."""
    acc = accuracies(markers)
    trained = [m for m in markers if m["kind"] == "train" and m["id"] in acc]
    out = {"weak": mean_std(acc[m["id"]].get(score_on) for m in trained
                            if m["meta"]["role"] == "weak" and _reference(m, reference))}
    for name, probe in (("ceiling", False), ("probe ceiling", True)):
        found = [acc[m["id"]].get(score_on) for m in trained if m["meta"]["role"] == "ceiling" and _probe(m) == probe]
        if found or not probe:
            out[name] = mean_std(found)
    return out
