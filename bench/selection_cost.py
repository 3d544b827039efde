"""Benchmark: the cost of choosing weak labels at ImageNet scale (`train --keep-frac F --rank-by S
--per-class`, and `inspect`'s coverage-accuracy curve, which chooses 2 x 3 x 10 times).

    python bench/selection_cost.py [--rows 1281167] [--classes 1000] [--shards 1282]

A synthetic index with the store's columns (shard, key, row, pred, label, margin, confidence, entropy),
then, in one run: `selection.most_trusted` per class against the per-class loop it replaced (the
reference: every class scanned all rows, one sort per call), checked equal; `selection.choose`;
and the coverage curve, which now ranks once per statistic and mode for its ten fractions, against
the same curve through the loop. Prints seconds and the ratios.
"""

from __future__ import annotations

import argparse
import math
import time

import _util  # noqa: F401  (puts the repository on the path)
import numpy as np


def loop_most_trusted(table, candidates, keep_frac, rank_by, per_class):
    """The implementation before 2026-11-30: one pass over every row per predicted class."""
    from w2s_pipe.pipeline.weak.selection import TRUSTED_HIGH

    score = table.column(rank_by).to_numpy(zero_copy_only=False).astype(np.float64)
    score = -score if TRUSTED_HIGH[rank_by] else score
    groups = table.column("pred").to_numpy(zero_copy_only=False) if per_class else np.zeros(table.num_rows, np.int64)
    mask = np.zeros(table.num_rows, dtype=bool)
    for group in np.unique(groups[candidates]):
        rows = np.flatnonzero(candidates & (groups == group))
        order = rows[np.lexsort((rows, score[rows]))]
        mask[order[:math.ceil(keep_frac * len(rows) - 1e-9)]] = True
    return mask


def index_table(rows: int, classes: int, shards: int):
    import pyarrow as pa

    rng = np.random.default_rng(0)
    label = rng.integers(0, classes, rows)
    pred = np.where(rng.random(rows) < 0.7, label, rng.integers(0, classes, rows))
    confidence = rng.beta(5, 2, rows).astype(np.float32)
    per_shard = -(-rows // shards)
    shard = np.repeat(np.arange(shards), per_shard)[:rows]
    return pa.table({"shard": pa.array([f"s-{i:06d}.tar" for i in range(shards)])
                              .take(pa.array(shard)).dictionary_encode(),
                     "key": pa.array([f"k{i}" for i in range(rows)]),
                     "row": (np.arange(rows) - shard * per_shard).astype(np.int64),
                     "pred": pred.astype(np.int32), "label": label.astype(np.int32), "confidence": confidence,
                     "margin": (confidence * rng.random(rows)).astype(np.float32),
                     "entropy": rng.random(rows).astype(np.float32)})


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_281_167)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1282)
    args = parser.parse_args()
    from w2s_pipe.pipeline.weak.selection import choose, most_trusted
    from w2s_pipe.stages.inspect import coverage_accuracy

    table, built = timed(lambda: index_table(args.rows, args.classes, args.shards))
    print(f"index: {args.rows:,} rows, {args.classes} classes, {args.shards} shards (built in {built:.1f} s)")
    everyone = np.ones(table.num_rows, dtype=bool)
    new, t_new = timed(lambda: most_trusted(table, everyone, 0.7, "margin", True))
    old, t_old = timed(lambda: loop_most_trusted(table, everyone, 0.7, "margin", True))
    assert np.array_equal(new, old), "the two choices differ"
    print(f"most_trusted 70% by margin per class: {t_new:.2f} s against the per-class loop's {t_old:.2f} s "
          f"({t_old / t_new:.1f}x), the same {int(new.sum()):,} rows")
    _, t_choose = timed(lambda: choose(table, None, 0.7, "margin", True))
    print(f"selection.choose (per-shard masks and the record): {t_choose:.2f} s")
    curve, t_curve = timed(lambda: coverage_accuracy(table))
    correct = table["pred"].to_numpy() == table["label"].to_numpy()

    def loop_curve():
        return {mode: {stat: [round(float(correct[loop_most_trusted(table, everyone, f, stat, per_class)].mean()), 6)
                              for f in curve["coverage"]] for stat in ("margin", "confidence", "entropy")}
                for mode, per_class in (("overall", False), ("per_class", True))}

    old_curve, t_old_curve = timed(loop_curve)
    assert all(old_curve[m] == curve[m] for m in ("overall", "per_class")), "the two curves differ"
    print(f"inspect's coverage-accuracy curve (60 choices): {t_curve:.2f} s against {t_old_curve:.2f} s through the "
          f"loop ({t_old_curve / t_curve:.1f}x), the same curve")


if __name__ == "__main__":
    main()
