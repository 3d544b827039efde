"""Our probes against OpenAI's probe trainer on the very same rows: each probe run of a study (a run
from stored `--features`) beside `train_logreg` of openai/weak-to-strong (vision/run_weak_strong.py),
re-typed here for the CPU: a fresh nn.Linear, Adam (lr 1e-3, no weight decay), the cross-entropy to
the weak model's soft labels, a DataLoader of batch 100 that shuffles and keeps the last partial
batch, CosineAnnealingLR over every step, 10 epochs. It reads the run's own feature and label
stores and scores on its validation feature store; its shuffling is its own (torch's generator
seeded by the run's seed), so single runs differ by the order and the mean over seeds is what to
compare. Only kd runs (the loss train_logreg computes) of the openai_probe recipe are compared.

    python bench/probe_reference.py /work/runs/methods     # a study's workspace (--out of `w2s-pipe study`)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics

import _util
import numpy as np
import torch

from w2s_pipe.storage import open_store


def rows(url: str, array: str):
    store = open_store(url)
    parts = [store.shard_rows(s["name"], arrays=(array,)) for s in store.shards]
    return ([k for p in parts for k in p.keys], np.concatenate([p.arrays[array] for p in parts]),
            None if parts[0].labels is None else np.concatenate([p.labels for p in parts]))


def train_logreg(x, soft, x_val, y_val, seed: int, epochs=10, lr=1e-3, batch_size=100) -> float:
    """OpenAI's loop, as their code writes it, on the CPU; returns the final validation top-1."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, soft), shuffle=True, batch_size=batch_size)
    model = torch.nn.Linear(x.shape[1], soft.shape[1])
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), weight_decay=0.0, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer=optimizer, T_max=len(loader) * epochs)
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            criterion(model(xb), yb).backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        return float((model(x_val).argmax(1) == y_val).float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", help="a study's workspace holding probe runs (runs/*/config.json)")
    args = ap.parse_args()
    pairs = []
    for path in sorted(glob.glob(os.path.join(args.workspace, "runs", "*", "config.json"))):
        config = json.load(open(path))
        if not config.get("features") or config.get("loss") != "kd" or "," in (config.get("labels") or ","):
            continue
        if (config.get("config"), config.get("epochs"), config.get("batch_size")) != ("openai_probe", 10, 100):
            continue
        metrics = [json.loads(line) for line in open(os.path.join(os.path.dirname(path), "metrics.jsonl"))]
        ours = [r["val_top1"] for r in metrics if r.get("kind") == "epoch" and "val_top1" in r][-1]
        keys, weak, _ = rows(config["labels"], "logits")
        feature_keys, x, _ = rows(config["features"], "features")
        assert keys == feature_keys, "the stores list their samples in one order"
        _, x_val, y_val = rows(config["val_features"], "features")
        soft = torch.softmax(torch.from_numpy(weak).float(), dim=1)
        theirs = train_logreg(torch.from_numpy(x).float(), soft, torch.from_numpy(x_val).float(),
                              torch.from_numpy(y_val).long(), seed=config["seed"])
        pairs.append({"run": os.path.basename(os.path.dirname(path)), "seed": config["seed"], "ours": ours,
                      "train_logreg": theirs})
        print(f"{pairs[-1]['run']}: ours {100 * ours:.2f}, train_logreg {100 * theirs:.2f}")
    if not pairs:
        raise SystemExit("no kd probe of the openai_probe recipe (10 epochs, batch 100) in this workspace")
    for who in ("ours", "train_logreg"):
        values = [100 * p[who] for p in pairs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{who}: {statistics.mean(values):.2f} ± {spread:.2f} over {len(values)} runs")
    diffs = [100 * (p["ours"] - p["train_logreg"]) for p in pairs]
    print(f"ours - train_logreg, per seed: {', '.join(f'{d:+.2f}' for d in diffs)} (mean {statistics.mean(diffs):+.2f})")
    _util.save("probe_reference", {"runs": pairs})


if __name__ == "__main__":
    main()
