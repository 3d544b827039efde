"""`prepare folder` with 1 and 2 writing processes: files per second on a tree of JPEGs.

    python bench/prepare_throughput.py                      # 20,000 JPEGs of 160x120 in 100 class folders
    python bench/prepare_throughput.py --files 2000 --rounds 1

The tree is made once (in --data, default a temporary directory; kept with --data) with smooth
structure plus noise at JPEG quality 90, then `prepare folder` runs in a fresh process per
measurement, 1 and 2 workers alternating over --rounds, each into an empty directory (shards of
1,000). The files were just written, so they are read from the page cache: this measures the
reading, tar writing and fsync of shards, not a cold disk. Prints files/s and MB/s per worker
count and the ratio of their medians; results in bench/results/prepare_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _util
import numpy as np


def _class_folder(job) -> int:
    """One class folder of the tree (a pool task): its images drawn from (seed, class) alone."""
    from PIL import Image

    directory, cls, count, size, seed = job
    rng = np.random.default_rng([seed, cls])
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    folder = os.path.join(directory, f"class{cls:03d}")
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        base = np.stack([np.sin(xx / rng.uniform(4, 30) + c) * np.cos(yy / rng.uniform(4, 30)) for c in range(3)], -1)
        img = np.clip((base * 80 + 128) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
            f.write(buf.getvalue())
    return count


def make_tree(directory: str, files: int, classes: int, size: tuple[int, int]) -> tuple[str, int]:
    from multiprocessing import get_context

    tree = os.path.join(directory, f"tree-{files}-{size[0]}x{size[1]}")
    if not os.path.exists(os.path.join(tree, "..", f"done-{files}-{size[0]}x{size[1]}")):
        per = [files // classes + (1 if c < files % classes else 0) for c in range(classes)]
        with get_context("spawn").Pool(os.cpu_count() or 1) as pool:
            pool.map(_class_folder, [(tree, c, n, size, 0) for c, n in enumerate(per)])
        open(os.path.join(directory, f"done-{files}-{size[0]}x{size[1]}"), "w").close()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(tree) for f in names)
    return tree, total


def one(tree: str, out: str, workers: int) -> float:
    """Seconds of `w2s-pipe prepare folder` in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "w2s_pipe.cli", "prepare", "folder", tree, "--out", out, "--quiet",
                    "--workers", str(workers), "--shard-size", "1000"], check=True, capture_output=True)
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default=None, help="where the tree is made (kept) [default: a temporary directory]")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    directory = args.data or tempfile.mkdtemp(prefix="w2s-prepare-bench-")
    os.makedirs(directory, exist_ok=True)
    started = time.perf_counter()
    tree, total = make_tree(directory, args.files, args.classes, size)
    print(f"tree: {args.files} JPEGs of {args.size} in {args.classes} folders, {total / 1e6:.0f} MB "
          f"({total / args.files / 1e3:.1f} KB each), made in {time.perf_counter() - started:.0f} s")
    rounds = {w: [] for w in args.workers}
    for r in range(args.rounds):
        for w in (args.workers if r % 2 == 0 else args.workers[::-1]):
            seconds = one(tree, os.path.join(directory, "out"), w)
            rounds[w].append(seconds)
            print(f"round {r + 1}, {w} worker(s): {seconds:.1f} s, {args.files / seconds:.0f} files/s")
    medians = {w: statistics.median(v) for w, v in rounds.items()}
    for w, m in medians.items():
        print(f"{w} worker(s): median {m:.1f} s, {args.files / m:.0f} files/s, {total / m / 1e6:.0f} MB/s")
    base = args.workers[0]
    for w in args.workers[1:]:
        print(f"{w} workers against {base}: {medians[base] / medians[w]:.2f}x the files per second")
    _util.save("prepare_throughput", {"files": args.files, "size": args.size, "bytes": total, "seconds": rounds,
                                      "files_per_s": {w: args.files / m for w, m in medians.items()}})
    if not args.data:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
