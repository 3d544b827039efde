"""Benchmark 3: strong-model training steps/s reading the weak logits from the store, against the
same training running the weak teacher on every batch (as the official code does).

    python bench/cached_vs_online.py [--weak resnet18] [--strong resnet50] [--img-size 64] [--steps 12]

Both loops run the same loader, loss (adaptconf), optimizer and step function; the online loop
adds the teacher's forward pass (inference mode, same precision). Prints steps/s and the ratio.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import _util


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weak", default="resnet18")
    ap.add_argument("--strong", default="resnet50")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "w2s-bench-jpeg"))
    args = ap.parse_args()

    import timm.data
    import timm.optim
    import torch

    from w2s_pipe.pipeline import distributed
    from w2s_pipe.pipeline.join import StoreJoin
    from w2s_pipe.pipeline.loader import default_workers
    from w2s_pipe.pipeline.losses import objective
    from w2s_pipe.pipeline.models import create_model, load_model
    from w2s_pipe.pipeline.shards import expand_pattern
    from w2s_pipe.pipeline.train_loader import TrainStream, train_loader
    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.stages.train import train_step

    device = distributed.pick_device("auto")
    precision = distributed.resolve_precision("auto", device)
    workers = args.workers if args.workers is not None else default_workers()
    pattern = _util.jpeg_shards(os.path.join(args.data, str(args.samples)), args.samples)
    ckpt = _util.checkpoint(os.path.join(args.data, f"{args.weak}-{args.img_size}.pt"), args.weak, 1000, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        store = run_label(LabelConfig(weak=None, weak_checkpoint=ckpt, data=pattern, labels=os.path.join(tmp, "s"),
                                      workers=workers, progress=False)).store
        teacher = load_model(None, checkpoint=ckpt, num_classes=1000).model.to(device).eval()
        transform = timm.data.create_transform(input_size=(3, args.img_size, args.img_size), is_training=True)
        loss = objective("adaptconf", threshold=4.0)
        autocast = torch.autocast(device.type, dtype=distributed.autocast_dtype(precision), enabled=precision != "fp32")

        def run(online: bool) -> float:
            torch.manual_seed(0)
            student = create_model(args.strong, 1000).to(device).train()
            opt = timm.optim.create_optimizer_v2(student, opt="adamw", lr=1e-4)
            stream = TrainStream(expand_pattern(pattern), transform=transform, image_fields=("jpg",), label_field="cls",
                                 need_labels=False, join=None if online else StoreJoin(store), seed=0, shuffle_buffer=64,
                                 batch_size=args.batch_size)
            batches = iter(train_loader(stream, workers, device.type == "cuda"))
            timed = 0.0
            for n, batch in enumerate(itertools.islice(batches, args.steps + 2)):
                t = time.perf_counter()
                batch = {k: v.to(device) for k, v in batch.items() if k not in ("key", "dropped")}
                if online:
                    with torch.inference_mode(), autocast:
                        batch["weak"] = teacher(batch["image"]).float()
                    batch["weak"] = batch["weak"].clone()
                train_step(student, batch, opt, loss, progress=0.5, autocast=autocast)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if n >= 2:  # the first two steps warm up
                    timed += time.perf_counter() - t
            return args.steps / timed

        cached, online = run(False), run(True)
    print(f"strong {args.strong} from weak {args.weak}, {args.img_size} px, batch {args.batch_size}, {precision}, {device}")
    print(f"cached weak logits  {cached:7.2f} steps/s")
    print(f"online teacher      {online:7.2f} steps/s")
    print(f"cached / online = {cached / online:.2f}")
    print("results:", _util.save("cached_vs_online", {"args": vars(args), "precision": precision, "cached_steps_per_s": cached,
                                                       "online_steps_per_s": online, "ratio": cached / online}))


if __name__ == "__main__":
    main()
