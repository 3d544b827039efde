"""Benchmark: the training loader alone (no model) on ImageNet-sized JPEGs at 224 px.

    python bench/train_loader.py [--samples 2048] [--workers 1] [--batch-size 64] [--rounds 3]

Each `train --decode` path (pil: timm's PIL crop; cpu: libjpeg-turbo and uint8 tensor resizing in
the loading processes; gpu, where CUDA is: bytes from the loading processes, decoded and cropped
on the device), in its own process, rounds alternated, each figure the best of its rounds:
samples/s after the first batch (the gpu path's device step included, synchronised), seconds to
the first batch, peak resident memory of the loading process. Then, for the default decoder, a
shuffle buffer of 1 against the default 1,000: the buffer holds encoded samples, so it costs about
1,000 JPEGs (~100 MB), not 1,000 decoded crops. Prints the ratios last.
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

    import torch

    from w2s_pipe.pipeline.loaders.train_stream import TrainStream, train_loader
    from w2s_pipe.pipeline.runtime import distributed
    from w2s_pipe.pipeline.sources.shards import expand_pattern
    from w2s_pipe.pipeline.views.params import TrainViews
    from w2s_pipe.pipeline.views.pixels import DeviceAugment, TrainAugment

    device = distributed.pick_device("auto")
    pattern = _util.jpeg_shards(args.data, args.samples)
    config = {"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    stream = TrainStream(expand_pattern(pattern), augment=TrainAugment(config, TrainViews(0), args.decoder),
                         image_fields=("jpg",), label_field="cls", need_labels=False, join=None, seed=0,
                         shuffle_buffer=args.buffer, batch_size=args.batch_size)
    on_device = DeviceAugment(config, device) if args.decoder == "gpu" else None

    def finish(batch):
        if on_device is not None:
            x = on_device(batch["blobs"], batch["view"].to(device), batch["key"])
            torch.cuda.synchronize()
            return len(x)
        return len(batch["image"])

    started = time.perf_counter()
    batches = iter(train_loader(stream, args.workers, device.type == "cuda"))
    finish(next(batches))
    first = time.perf_counter() - started
    t = time.perf_counter()
    n = sum(finish(b) for b in itertools.islice(batches, args.batches))
    rate = n / (time.perf_counter() - t)
    del batches  # the loading processes exit, so their peak memory is counted below
    time.sleep(0.5)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN if args.workers else resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"decoder": args.decoder, "buffer": args.buffer, "first_batch_s": first, "samples_per_s": rate,
            "loader_peak_rss_mib": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default=os.path.join(_util.RESULTS, "data"))
    p.add_argument("--decoder", default=None, help=argparse.SUPPRESS)  # one measurement, in a child
    p.add_argument("--buffer", type=int, default=1000, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.decoder is not None:
        print(json.dumps(measure(args)))
        return
    import torch

    _util.jpeg_shards(args.data, args.samples)  # made once, outside the timing
    default = "gpu" if torch.cuda.is_available() else "cpu"
    cases = [("pil", 1000), ("cpu", 1000)] + ([("gpu", 1000)] if default == "gpu" else []) + [(default, 1)]
    rounds: dict = {case: [] for case in cases}
    for _ in range(args.rounds):
        for decoder, buffer in cases:
            cmd = [sys.executable, __file__, "--decoder", decoder, "--buffer", str(buffer), "--samples", str(args.samples),
                   "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--batches", str(args.batches),
                   "--data", args.data]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            rounds[(decoder, buffer)].append(json.loads(out))
    best = {case: {"samples_per_s": max(r["samples_per_s"] for r in rs), "first_batch_s": min(r["first_batch_s"] for r in rs),
                   "loader_peak_rss_mib": min(r["loader_peak_rss_mib"] for r in rs)} for case, rs in rounds.items()}
    print(f"{args.samples} JPEGs 500x375 -> 224 px, batch {args.batch_size}, {args.workers} loading processes, "
          f"best of {args.rounds} alternated rounds")
    print(f"{'decode':>6} {'buffer':>7} {'samples/s':>10} {'first batch s':>14} {'loader peak RSS MiB':>20}")
    for (decoder, buffer), r in best.items():
        print(f"{decoder:>6} {buffer:>7} {r['samples_per_s']:>10.0f} {r['first_batch_s']:>14.2f} "
              f"{r['loader_peak_rss_mib']:>20.0f}")
    pil, cpu, small, big = best[("pil", 1000)], best[("cpu", 1000)], best[(default, 1)], best[(default, 1000)]
    print(f"cpu / pil samples/s: {cpu['samples_per_s'] / pil['samples_per_s']:.2f}x")
    if default == "gpu":
        print(f"gpu / cpu samples/s: {best[('gpu', 1000)]['samples_per_s'] / cpu['samples_per_s']:.2f}x")
    print(f"{default}, buffer 1000 against 1: peak RSS +{big['loader_peak_rss_mib'] - small['loader_peak_rss_mib']:.0f} MiB, "
          f"first batch {big['first_batch_s'] / small['first_batch_s']:.2f}x")
    _util.save("train_loader", {"args": vars(args), "rounds": {f"{d}-{b}": rs for (d, b), rs in rounds.items()}})


if __name__ == "__main__":
    main()
