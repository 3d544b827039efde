"""What starting loading processes from the fork server costs, against forking them from the stage.

    python bench/loader_start.py [--workers 1 2] [--rounds 3]

Seconds from creating the evaluation loader (`label_loader` over digits' val shards, 32 px) to its
first batch, in a fresh process that has imported torch and started threads (as a stage has):
`fork` from that process (what the loaders did before issue 29, and what could hang), the fork
server's first loader of the process (it starts the server and imports torch and the loading modules
there once), a later loader from the running server (every epoch's evaluation after the first),
and `spawn` (a new interpreter per worker, importing everything each time). Each measurement runs
in its own process, the methods alternating, over `--rounds`; prints medians and ratios to fork.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _util

METHODS = ("fork", "forkserver", "spawn")


def one(method: str, workers: int, data: str) -> dict:
    """Run in a child process: the first and a second loader's time to first batch."""
    import threading

    from torch.utils.data import DataLoader

    from w2s_pipe.pipeline.image.preprocess import Preprocess
    from w2s_pipe.pipeline.loaders import workers as worker_starts
    from w2s_pipe.pipeline.loaders.shard_batches import ShardBatches, label_loader
    from w2s_pipe.pipeline.sources.shards import expand_pattern

    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()  # a stage runs threads when its loaders start
    urls = list(enumerate(expand_pattern(os.path.join(data, "digits", "digits-val-{000000..000001}.tar"))))
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
              "mean": (0.5,) * 3, "std": (0.5,) * 3}

    def loader():
        dataset = ShardBatches(urls, prepare=Preprocess(config, "cpu"), batch_size=64, image_fields=("png",),
                               label_field="cls")
        if method == "forkserver":
            return label_loader(dataset, workers, False)
        return DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context=method,
                          worker_init_fn=worker_starts.WorkerStart.now(), prefetch_factor=4)

    times = []
    for _ in range(2):
        started = time.perf_counter()
        it = iter(loader())
        next(it)
        times.append(time.perf_counter() - started)
        del it
    stop.set()
    return {"first": times[0], "later": times[1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # method workers data: a child's measurement
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2])))
        return

    from w2s_pipe.stages.prepare import prepare_digits

    data = tempfile.mkdtemp(prefix="w2s-loader-start-")
    prepare_digits(os.path.join(data, "digits"), shard_size=256)
    results = {}
    for workers in args.workers:
        taken = {m: {"first": [], "later": []} for m in METHODS}
        for round_ in range(args.rounds):
            for method in METHODS if round_ % 2 == 0 else METHODS[::-1]:
                out = subprocess.run([sys.executable, __file__, "--one", method, str(workers), data],
                                     capture_output=True, text=True, check=True)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                for k in got:
                    taken[method][k].append(got[k])
                print(f"  workers {workers}, round {round_ + 1}: {method:<10} first {got['first']:.3f} s, "
                      f"later {got['later']:.3f} s", flush=True)
        med = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in taken.items()}
        results[workers] = {"median_s": med, "rounds": taken}
        fork = med["fork"]
        for m in METHODS:
            print(f"workers {workers}: {m:<10} first loader {med[m]['first']:.3f} s ({med[m]['first'] / fork['first']:.2f}x "
                  f"fork), later loaders {med[m]['later']:.3f} s ({med[m]['later'] / fork['later']:.2f}x fork)")
    print("results:", _util.save("loader_start", {"workers": results}))


if __name__ == "__main__":
    main()
