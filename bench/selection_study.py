"""Study: choosing which weak labels to trust, on digits with the demo's models (issue 20).

    python bench/selection_study.py                # 3 seeds (about 15 min on 2 CPU cores)
    python bench/selection_study.py --seeds 1 --out /tmp/sel

The demo's weak-to-strong runs (resnet10t from test_vit, the demo recipe), losses hard, kd and
adaptconf, with the weak labels of seed s's weak model used (a) as they are, (b) with `--keep-frac 0.7
--rank-by margin --per-class`, (c) with `--weight-by confidence`, and (d) as a three-member
`mean-prob` ensemble of the weak models of seeds s, s+3 and s+6 (`--labels A,B,C`). A ceiling per
seed. Prints top-1 and PGR (mean ± std over seeds; PGR against the teacher's own validation top-1:
the ensemble's is measured by labelling the validation split with each member and combining), and
the weak labels' accuracy on the transfer samples each arm trains on. Runs already done in --out
are not run again. Results go to bench/results/selection_study.json.
"""

from __future__ import annotations

import argparse
import statistics

import _util
import numpy as np
from teacher_study import _ms, study_run, study_workspace, weak_model

LOSSES = ("hard", "kd", "adaptconf")
ARMS = {"none": {}, "keep0.7-margin-per-class": {"keep_frac": 0.7, "rank_by": "margin", "per_class": True},
        "weight-confidence": {"weight_by": "confidence"}, "ensemble3": {"ensemble": "mean-prob"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None, help="the study's workspace [default: a temporary directory]")
    args = ap.parse_args()

    ws = study_workspace(args.out, "w2s-selection-study-")
    weak = {seed: weak_model(ws, seed) for seed in sorted({s + k for s in range(args.seeds) for k in (0, 3, 6)})}
    study = {"workspace": ws, "seeds": args.seeds, "runs": train_arms(ws, weak, args.seeds)}
    print_study(study)
    print(f"results: {_util.save('selection_study', study)}")


def val_logits(ws: str, weak: dict) -> tuple[np.ndarray, np.ndarray]:
    """A weak model's logits on the validation split and the labels (labelled once, as a store)."""
    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.storage import open_store

    url = weak["store"] + "-val"
    run_label(LabelConfig(weak=None, weak_checkpoint=weak["checkpoint"], data="digits", split="val", labels=url,
                          workers=0, precision="fp32", workspace=ws, progress=False))
    store = open_store(url)
    logits = np.concatenate([store.shard_rows(i).arrays["logits"].astype(np.float32) for i in range(len(store.shards))])
    return logits, store.index()["label"].to_numpy()


def train_arms(ws: str, weak: dict, seeds: int) -> list[dict]:
    from w2s_pipe.pipeline.weak.ensemble import combine, ensemble_index
    from w2s_pipe.storage import open_store

    runs = []
    for seed in range(seeds):
        members = [weak[seed + k] for k in (0, 3, 6)]
        val = [val_logits(ws, m) for m in members]
        ensemble_val = float((combine([v[0] for v in val], "mean-prob").argmax(1) == val[0][1]).mean())
        member_val = [float((v[0].argmax(1) == v[1]).mean()) for v in val]  # as labelled: the check on top1
        stores = [open_store(m["store"]) for m in members]
        index = stores[0].index()
        transfer_acc = float((index["pred"].to_numpy() == index["label"].to_numpy()).mean())
        ens = ensemble_index(stores, "mean-prob")
        ensemble_transfer = float((ens["pred"].to_numpy() == ens["label"].to_numpy()).mean())
        ceiling = study_run(ws, f"s{seed}-ceiling", loss="gt", data="digits", split="transfer", seed=seed)
        for arm, options in ARMS.items():
            labels = ",".join(m["store"] for m in members) if arm == "ensemble3" else members[0]["store"]
            weak_top1 = ensemble_val if arm == "ensemble3" else members[0]["top1"]
            for loss in LOSSES:
                r = study_run(ws, f"s{seed}-{arm}-{loss}", loss=loss, seed=seed, labels=labels, **options)
                gap = ceiling["top1"] - weak_top1
                kept_acc = (r["selection"] or {}).get("weak_top1_on_kept") or (
                    ensemble_transfer if arm == "ensemble3" else transfer_acc)
                runs.append({**r, "seed": seed, "arm": arm, "loss": loss, "weak_top1": weak_top1,
                             "member_top1": [m["top1"] for m in members], "member_val_labelled": member_val,
                             "ceiling_top1": ceiling["top1"],
                             "pgr": (r["top1"] - weak_top1) / gap if gap > 0 else None,
                             "weak_acc_on_trained": kept_acc,
                             "kept": (r["selection"] or {}).get("kept")})
        print(f"seed {seed}: done", flush=True)
    return runs


def print_study(study: dict) -> None:
    runs = study["runs"]
    print("\nweak-to-strong, resnet10t from test_vit on digits: top-1 / PGR (mean ± std over seeds); the weak "
          "labels' accuracy on the samples trained on")
    print("| arm | loss | top-1 | PGR | teacher's val top-1 | weak labels' accuracy on the trained samples |")
    print("|---|---|---|---|---|---|")
    for arm in ARMS:
        for loss in LOSSES:
            pick = [r for r in runs if r["arm"] == arm and r["loss"] == loss]
            if pick:
                print(f"| {arm} | {loss} | {_ms(r['top1'] for r in pick)} | {_ms(r['pgr'] for r in pick)} | "
                      f"{_ms(r['weak_top1'] for r in pick)} | {_ms(r['weak_acc_on_trained'] for r in pick)} |")
    ceilings = {r["seed"]: r["ceiling_top1"] for r in runs}
    print(f"\nceiling (gt on transfer): {_ms(ceilings.values())}; members' val top-1 per seed: "
          + "; ".join(f"s{r['seed']} {', '.join(f'{t:.3f}' for t in r['member_top1'])}"
                      for r in runs if r["arm"] == "none" and r["loss"] == "hard"))
    wall = {arm: statistics.mean(r["wall_s"] for r in runs if r["arm"] == arm) for arm in ARMS
            if any(r["arm"] == arm for r in runs)}
    print("per stage-two run (s): " + ", ".join(f"{a} {w:.1f}" for a, w in wall.items()))


if __name__ == "__main__":
    main()
