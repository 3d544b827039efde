"""Benchmark 2: the training loader's samples/s with the store join against the same loader without it.

    python bench/join_overhead.py [--samples 4096] [--img-size 32] [--workers N]

Small images (digits-sized PNGs, 32 px transform) make decoding cheap, so the join's share is as
large as it gets. Prints both rates and with/without (target >= 0.98).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import _util


def rate(stream, workers, batches):
    from w2s_pipe.pipeline.loaders.train_stream import train_loader

    it = iter(train_loader(stream, workers, False))
    for b in itertools.islice(it, 3):  # warm-up: workers started, first shards read
        pass
    t = time.perf_counter()
    n = sum(len(b["image"]) for b in itertools.islice(it, batches))
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import timm.data

    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.loaders.train_stream import TrainStream
    from w2s_pipe.pipeline.loaders.workers import default_workers
    from w2s_pipe.pipeline.sources.shards import describe_shards, expand_pattern, write_shard
    from w2s_pipe.storage.writer import StoreWriter

    workers = args.workers if args.workers is not None else default_workers()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        import io

        from PIL import Image

        per = 512
        for s in range(0, args.samples, per):
            samples = []
            for i in range(s, min(args.samples, s + per)):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
                samples.append({"__key__": f"k{i:07d}", "png": buf.getvalue(), "cls": int(rng.integers(args.classes))})
            write_shard(os.path.join(tmp, f"j-{s // per:06d}.tar"), samples)
        urls = expand_pattern(os.path.join(tmp, "j-*.tar"))
        shards = describe_shards(urls)
        cap = max(s.count for s in shards)
        attrs = {"weak": {"model": "m", "checkpoint": None, "checkpoint_sha256": "x"}, "num_classes": args.classes,
                 "class_names": None, "preprocessing": {}, "precision": "fp32",
                 "data": {"name": "shards", "split": "train", "pattern": "p", "image_field": "png", "label_field": "cls",
                          "fingerprint": "f", "shards": [vars(s) for s in shards]},
                 "layout": {"capacity": cap, "rows": cap * len(shards), "topk": None}, "tool_version": "bench"}
        store = os.path.join(tmp, "store")
        w = StoreWriter.create(store, attrs)
        from w2s_pipe.pipeline.sources.shards import iter_samples

        for i, s in enumerate(shards):
            keys = [x["__key__"] for x in iter_samples(s.url)]
            logits = rng.normal(size=(len(keys), args.classes)).astype(np.float16)
            w.write_shard(i, keys, None, {"logits": logits, "pred": logits.argmax(1).astype(np.int32),
                                          "confidence": np.ones(len(keys), np.float32), "margin": np.ones(len(keys), np.float32),
                                          "entropy": np.ones(len(keys), np.float32)})
        w.finalize()
        transform = timm.data.create_transform(input_size=(3, args.img_size, args.img_size), is_training=True, hflip=0.5)
        batches = max(4, args.samples // args.batch_size)
        kw = dict(transform=transform, image_fields=("png",), label_field="cls", need_labels=False, seed=0,
                  shuffle_buffer=1000, batch_size=args.batch_size)
        plain, joined = [], []
        for _ in range(args.repeats):  # interleaved, so drifting load hits both alike
            plain.append(rate(TrainStream(urls, join=None, **kw), workers, batches))
            joined.append(rate(TrainStream(urls, join=StoreJoin(store), **kw), workers, batches))
    p, j = float(np.median(plain)), float(np.median(joined))
    print(f"{args.samples} samples, {args.classes} classes, {args.img_size} px, batch {args.batch_size}, {workers} workers")
    print(f"loader without join  {p:9.0f} samples/s")
    print(f"loader with join     {j:9.0f} samples/s")
    print(f"with / without = {j / p:.3f}  (median of {args.repeats} interleaved runs)")
    print("results:", _util.save("join_overhead", {"args": vars(args), "workers": workers, "without": plain,
                                                    "with": joined, "ratio": j / p}))


if __name__ == "__main__":
    main()
