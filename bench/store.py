"""Benchmark 4: store write/read throughput, bytes per sample for full logits and for top-k, and the
mean KL divergence between the full weak distribution and its top-k reconstruction.

    python bench/store.py [--classes 1000] [--shards 20] [--per-shard 1000]

Logits are synthetic but classifier-like (one to a few large values over a noise floor; see
bench/store_codec.py). Reads are what the training join does: one block per shard.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import _util
import numpy as np
from store_codec import logits as make_logits


def softmax(x):
    z = x.astype(np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--topk", default="5,10,20")
    args = ap.parse_args()

    from w2s_pipe.storage import open_store
    from w2s_pipe.storage.schema import topk_index_dtype
    from w2s_pipe.storage.writer import StoreWriter

    n, C = args.shards * args.per_shard, args.classes
    data = [make_logits(args.per_shard, C, seed=i) for i in range(args.shards)]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in [None] + [int(x) for x in args.topk.split(",")]:
            attrs = {"weak": {"model": "m", "checkpoint": None, "checkpoint_sha256": "x"}, "num_classes": C,
                     "class_names": None, "preprocessing": {}, "precision": "bf16",
                     "data": {"name": "bench", "split": "train", "pattern": "p", "image_field": "jpg", "label_field": None,
                              "fingerprint": "f", "shards": [{"name": f"s{i}.tar", "url": f"/x/s{i}.tar",
                                                              "count": args.per_shard, "bytes": 1} for i in range(args.shards)]},
                     "layout": {"capacity": args.per_shard, "rows": n, "topk": k}, "tool_version": "bench"}
            url = os.path.join(tmp, f"store-{k or 'full'}")
            t = time.perf_counter()
            w = StoreWriter.create(url, attrs)
            for i, x in enumerate(data):
                p = softmax(x)
                top2 = -np.sort(-p, 1)[:, :2]
                out = {"pred": x.argmax(1).astype(np.int32), "confidence": top2[:, 0].astype(np.float32),
                       "margin": (top2[:, 0] - top2[:, 1]).astype(np.float32),
                       "entropy": (-(p * np.log(p)).sum(1)).astype(np.float32)}
                if k:
                    idx = np.argsort(-x.astype(np.float32), 1)[:, :k]
                    out["topk_values"] = np.take_along_axis(x, idx, 1)
                    out["topk_indices"] = idx.astype(topk_index_dtype(C))
                else:
                    out["logits"] = x
                w.write_shard(i, [f"k{j}" for j in range(args.per_shard)], None, out)
            w.finalize()
            write_s = time.perf_counter() - t
            store = open_store(url)
            t = time.perf_counter()
            kl = []
            for i in range(args.shards):
                shard = store.shard_rows(i, arrays=("topk_values", "topk_indices", "confidence") if k else ("logits",))
                dense = shard.dense_logits(C)
                if k:
                    p, q = softmax(data[i]), softmax(dense)
                    kl.append(float((p * (np.log(p) - np.log(q))).sum(1).mean()))
            read_s = time.perf_counter() - t  # includes the reconstruction and the KL for top-k
            rows[k or "full"] = {"bytes_per_sample": store.size_bytes() / n, "write_samples_per_s": n / write_s,
                                 "read_samples_per_s": n / read_s, "kl_mean": float(np.mean(kl)) if kl else 0.0}
    full = rows["full"]["bytes_per_sample"]
    print(f"{n} samples, {C} classes, {args.shards} shards")
    print(f"{'layout':8s} {'B/sample':>9s} {'vs full':>8s} {'write/s':>9s} {'read/s':>9s} {'KL(full||top-k)':>16s}")
    for k, r in rows.items():
        print(f"{str(k):8s} {r['bytes_per_sample']:9.0f} {r['bytes_per_sample'] / full:8.3f} {r['write_samples_per_s']:9.0f} "
              f"{r['read_samples_per_s']:9.0f} {r['kl_mean']:16.4f}")
    print("results:", _util.save("store", {"args": vars(args), "rows": {str(k): v for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
