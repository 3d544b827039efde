"""Benchmark: what the paper's recipe parts cost a training step: `train` end to end with and without
mixup/cutmix, RandAugment, random erasing and the weight average (EMA), on one machine in one run.

    python bench/recipe_cost.py                                   # ViT-tiny at 224 px, batch 32 (the CPU figures)
    python bench/recipe_cost.py --strong vit_b16 --batch-size 128 --samples 8192 --steps 30   # on a GPU

Each arm is `run_train` (`w2s-pipe train`) from a store of ImageNet-sized JPEGs (bench/_util's
recipe, labelled once, not timed) with adaptconf and the ground-truth term; its seconds per step are
the mean of its logged windows after the first (the warm-up). The arms' order is reversed every
round, and each figure is the best of its rounds. Prints a table with each arm's ratio to the plain
run last; results also go to bench/results/recipe_cost.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import _util

ARMS = {
    "plain": {},
    "mixup+cutmix": {"mixup": 0.8, "cutmix": 1.0},
    "randaugment": {"aa": "rand-m9-mstd0.5-inc1"},
    "erasing": {"reprob": 0.25},
    "ema": {"model_ema": True},
    "all (imagenet_mae)": {"mixup": 0.8, "cutmix": 1.0, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25,
                           "model_ema": True, "drop_path": 0.1, "layer_decay": 0.65, "smoothing": 0.1},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strong", default="vit_tiny_patch16_224")
    ap.add_argument("--weak", default="resnet18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per arm (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "w2s-bench-jpeg"))
    args = ap.parse_args()

    from w2s_pipe.pipeline.loaders.workers import default_workers
    from w2s_pipe.pipeline.runtime import distributed
    from w2s_pipe.pipeline.train.runs import read_metrics
    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.stages.train import TrainConfig, run_train

    device = distributed.pick_device("auto")
    workers = args.workers if args.workers is not None else default_workers()
    pattern = _util.jpeg_shards(args.data, args.samples)
    ckpt = _util.checkpoint(os.path.join(args.data, f"{args.weak}-{args.img_size}.pt"), args.weak, 1000, args.img_size)
    seconds = {name: [] for name in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        store = run_label(LabelConfig(weak=None, weak_checkpoint=ckpt, data=pattern, labels=os.path.join(tmp, "s"),
                                      workers=workers, progress=False)).store
        steps = args.warmup * (1 + -(-args.steps // args.warmup))
        for r in range(args.rounds):
            for name in (list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]):
                result = run_train(TrainConfig(
                    strong=args.strong, labels=store, img_size=args.img_size, batch_size=args.batch_size, epochs=1,
                    steps_per_epoch=steps, no_eval=True, log_every=args.warmup, workers=workers, gt_weight=1.0,
                    threshold=4.0, run=os.path.join(tmp, f"{r}-{len(seconds[name])}-{name.split()[0]}"),
                    progress=False, **ARMS[name]))
                windows = read_metrics(result.run_dir, "step")[1:]
                per_image = sum(1 / w["img_per_s"] for w in windows) / len(windows)
                seconds[name].append(per_image * args.batch_size)
    best = {name: min(v) for name, v in seconds.items()}
    print(f"train {args.strong} at {args.img_size} px, batch {args.batch_size}, adaptconf + ground truth, {device}, "
          f"{workers} loading processes, {os.cpu_count()} cores, best of {args.rounds} rounds")
    print(f"  {'arm':<22} {'s/step':>8} {'x plain':>8}")
    for name, value in best.items():
        print(f"  {name:<22} {value:>8.3f} {value / best['plain']:>8.2f}")
    _util.save("recipe_cost", {"args": vars(args), "device": str(device), "workers": workers, "seconds": seconds})


if __name__ == "__main__":
    main()
