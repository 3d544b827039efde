"""Benchmark 5: `label` time and peak memory at N and 4N samples: time should grow linearly,
memory should not grow.

    python bench/scaling.py [--samples 256] [--model test_resnet] [--img-size 64]

Each run is a fresh `w2s-pipe label` process; peak memory is the largest resident set of it and
its loader workers (getrusage of the waited-for children, measured by a wrapper per run). Time is
the labelling time the command reports (first batch to last write), so start-up is excluded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import _util

WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
           "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def run(exe, ckpt, pattern, store, batch):
    out = subprocess.run([sys.executable, "-c", WRAPPER, exe, "label", "--weak-checkpoint", ckpt, "--data", pattern,
                          "--labels", store, "--quiet", "--batch-size", str(batch)],
                         capture_output=True, text=True, check=True).stdout
    seconds = float(out.split(" img/s (")[1].split(" s)")[0])
    rss = int(out.split("maxrss_kb ")[1].split()[0]) / 1024
    return seconds, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "w2s-bench-jpeg"))
    args = ap.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")
    ckpt = _util.checkpoint(os.path.join(args.data, f"{args.model}-{args.img_size}.pt"), args.model, 1000, args.img_size)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.samples, 4 * args.samples):
            pattern = _util.jpeg_shards(args.data, n)
            results[n] = run(exe, ckpt, pattern, os.path.join(tmp, f"s{n}"), args.batch_size)
    (t1, m1), (t4, m4) = results[args.samples], results[4 * args.samples]
    print(f"{args.model} at {args.img_size} px, JPEG 500x375, batch {args.batch_size}")
    for n, (t, m) in results.items():
        print(f"N = {n:6d}: {t:7.2f} s labelling, peak {m:7.0f} MiB")
    print(f"time 4N / N = {t4 / t1:.2f} (linear: 4.00); peak memory 4N / N = {m4 / m1:.2f} (flat: 1.00)")
    print("results:", _util.save("scaling", {"args": vars(args), "seconds": {str(k): v[0] for k, v in results.items()},
                                             "peak_mib": {str(k): v[1] for k, v in results.items()},
                                             "time_ratio": t4 / t1, "memory_ratio": m4 / m1}))


if __name__ == "__main__":
    main()
