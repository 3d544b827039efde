"""Helpers shared by the benchmarks: synthetic shards, a tiny checkpoint, results as JSON."""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _jpeg_shard(job) -> None:
    """One shard of jpeg_shards (a pool task): its images drawn from (seed, shard) alone."""
    from PIL import Image

    from w2s_pipe.pipeline.sources.shards import write_shard

    directory, shard, first, last, size, seed, classes = job
    rng = np.random.default_rng([seed, shard])
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    batch = []
    for i in range(first, last):
        base = np.stack([np.sin(xx / rng.uniform(8, 60) + c) * np.cos(yy / rng.uniform(8, 60)) for c in range(3)], -1)
        img = np.clip((base * 80 + 128) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        batch.append({"__key__": f"img{i:07d}", "jpg": buf.getvalue(), "cls": int(rng.integers(classes))})
    write_shard(os.path.join(directory, f"bench-{shard:06d}.tar"), batch)


def jpeg_shards(data: str, samples: int, per_shard: int = 128, size=(500, 375), seed: int = 0,
                classes: int = 1000) -> str:
    """ImageNet-like JPEG shards (500x375, quality 90: smooth structure plus noise, ~60-110 KB each);
    returns a shard pattern of exactly `samples` images. A finished set in `data` itself (`done`
    beside its bench-*.tar, as ../shared/gpu/make_jpeg_shards.py leaves it) is used when it holds
    enough whole shards; otherwise the set is made once in data/<samples>, one shard per process
    (a single process made 20,480 in about 19 minutes, past every step's budget on a GPU machine)."""
    import glob
    from multiprocessing import get_context

    have = sorted(glob.glob(os.path.join(data, "bench-*.tar")))
    if os.path.exists(os.path.join(data, "done")) and samples % per_shard == 0 and len(have) >= samples // per_shard:
        return os.path.join(data, f"bench-{{000000..{samples // per_shard - 1:06d}}}.tar")
    directory = os.path.join(data, str(samples))
    shards = (samples + per_shard - 1) // per_shard
    pattern = os.path.join(directory, f"bench-{{000000..{shards - 1:06d}}}.tar")
    if os.path.exists(os.path.join(directory, "done")):
        return pattern
    os.makedirs(directory, exist_ok=True)
    jobs = [(directory, k, k * per_shard, min(samples, (k + 1) * per_shard), size, seed, classes) for k in range(shards)]
    with get_context("spawn").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(_jpeg_shard, jobs)
    open(os.path.join(directory, "done"), "w").close()
    return pattern


def checkpoint(path: str, model: str, num_classes: int, img_size: int | None = None) -> str:
    import timm
    import torch

    from w2s_pipe.pipeline.image.preprocess import data_config_for
    from w2s_pipe.pipeline.models.checkpoint import save_checkpoint

    if not os.path.exists(path):
        torch.manual_seed(0)
        net = timm.create_model(model, num_classes=num_classes)
        save_checkpoint(path, net.state_dict(), model_name=model, num_classes=num_classes,
                        data_config=data_config_for(net, img_size))
    return path


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "gpu": gpu, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}


def taken(rounds: dict, name: str, value: float, round_: int) -> None:
    """Add one measurement to `rounds` and print it at once (flushed)."""
    rounds[name].append(value)
    print(f"  round {round_ + 1}: {name:<12} {value:10.1f} img/s", flush=True)


def save(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=1)
    return path
