"""Which codec for the `logits` array? Bytes and read speed of one shard chunk, measured in one run.

    python bench/store_codec.py [--classes 1000] [--rows 1000] [--repeats 20]

Logits are synthetic but shaped like a classifier's (a few large values per row over a wide
noise floor), cast to float16 as the store keeps them. Prints, per codec, the compression
ratio and read throughput relative to no codec. Results also go to bench/results/store_codec.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec


def logits(rows: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.5, size=(rows, classes))
    x[np.arange(rows), rng.integers(0, classes, rows)] += rng.uniform(2, 12, rows)
    return x.astype(np.float16)


def measure(data: np.ndarray, compressors, repeats: int, where: str):
    arr = zarr.create_array(where, shape=data.shape, chunks=data.shape, dtype="float16", compressors=compressors)
    t = time.perf_counter()
    arr[:] = data
    write = time.perf_counter() - t
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(where) for f in fs if f != "zarr.json")
    reader = zarr.open_array(where, mode="r")
    t = time.perf_counter()
    for _ in range(repeats):
        out = reader[:]
    read = (time.perf_counter() - t) / repeats
    assert np.array_equal(out, data)
    return {"bytes": stored, "ratio": data.nbytes / stored, "write_s": write, "read_s": read}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1000, help="rows per chunk (one shard)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    data = logits(args.rows, args.classes)
    codecs = {
        "none": None,
        "zstd-3": ZstdCodec(level=3),
        "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle),
        "blosc-zstd-bitshuffle": BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, comp in codecs.items():
            results[name] = measure(data, comp, args.repeats, os.path.join(tmp, name))
    base = results["none"]
    print(f"{args.rows} x {args.classes} float16 logits ({data.nbytes / 1e6:.1f} MB raw)")
    print(f"{'codec':24s} {'ratio':>6s} {'read MB/s':>10s} {'read vs none':>13s}")
    for name, r in results.items():
        print(f"{name:24s} {r['ratio']:6.2f} {data.nbytes / r['read_s'] / 1e6:10.0f} {base['read_s'] / r['read_s']:13.2f}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "store_codec.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
