"""Benchmark: the training loader alone (no model) on ImageNet-sized JPEGs at 224 px.

    python bench/train_loader.py [--samples 2048] [--workers 1] [--batch-size 64]

For a shuffle buffer of 1 and of 1,000 samples (the default), each in its own process: seconds to
the first batch, samples/s after it, and the peak resident memory of the loading process. The buffer
holds encoded samples, so its cost is about 1,000 JPEGs (~100 MB), not 1,000 float crops (0.6 GB),
and the first batch waits only for the buffer's reading, not its decoding. Prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _util


def measure(args) -> dict:
    import itertools

    import timm.data

    from w2s_pipe.pipeline.shards import expand_pattern
    from w2s_pipe.pipeline.train_loader import TrainStream, train_loader

    pattern = _util.jpeg_shards(os.path.join(args.data, str(args.samples)), args.samples)
    transform = timm.data.create_transform(input_size=(3, 224, 224), is_training=True, hflip=0.5)
    stream = TrainStream(expand_pattern(pattern), transform=transform, image_fields=("jpg",), label_field="cls",
                         need_labels=False, join=None, seed=0, shuffle_buffer=args.buffer, batch_size=args.batch_size)
    started = time.perf_counter()
    batches = iter(train_loader(stream, args.workers, False))
    next(batches)
    first = time.perf_counter() - started
    t = time.perf_counter()
    n = sum(len(b["image"]) for b in itertools.islice(batches, args.batches))
    rate = n / (time.perf_counter() - t)
    del batches  # the loading processes exit, so their peak memory is counted below
    time.sleep(0.5)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN if args.workers else resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"buffer": args.buffer, "first_batch_s": first, "samples_per_s": rate, "loader_peak_rss_mib": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--data", default=os.path.join(_util.RESULTS, "data"))
    p.add_argument("--buffer", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, in a child
    args = p.parse_args()
    if args.buffer is not None:
        print(json.dumps(measure(args)))
        return
    _util.jpeg_shards(os.path.join(args.data, str(args.samples)), args.samples)  # made once, outside the timing
    rows = []
    for buffer in (1, 1000):
        cmd = [sys.executable, __file__, "--buffer", str(buffer), "--samples", str(args.samples), "--workers",
               str(args.workers), "--batch-size", str(args.batch_size), "--batches", str(args.batches), "--data", args.data]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    small, big = rows
    print(f"{'buffer':>7} {'first batch s':>14} {'samples/s':>10} {'loader peak RSS MiB':>20}")
    for r in rows:
        print(f"{r['buffer']:>7} {r['first_batch_s']:>14.2f} {r['samples_per_s']:>10.0f} {r['loader_peak_rss_mib']:>20.0f}")
    print(f"buffer 1000 / buffer 1: first batch {big['first_batch_s'] / small['first_batch_s']:.2f}x, "
          f"peak RSS +{big['loader_peak_rss_mib'] - small['loader_peak_rss_mib']:.0f} MiB, "
          f"samples/s {big['samples_per_s'] / small['samples_per_s']:.2f}x")
    _util.save("train_loader", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
