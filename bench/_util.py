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


def jpeg_shards(directory: str, samples: int, per_shard: int = 128, size=(500, 375), seed: int = 0,
                classes: int = 1000) -> str:
    """ImageNet-like JPEG shards (500x375, quality 90: smooth structure plus noise, ~60-110 KB each);
    returns a glob pattern. Made once per directory."""
    from PIL import Image

    from w2s_pipe.pipeline.data.shards import write_shard

    pattern = os.path.join(directory, "bench-*.tar")
    if os.path.exists(os.path.join(directory, "done")):
        return pattern
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for shard in range(0, samples, per_shard):
        batch = []
        for i in range(shard, min(samples, shard + per_shard)):
            base = np.stack([np.sin(xx / rng.uniform(8, 60) + c) * np.cos(yy / rng.uniform(8, 60)) for c in range(3)], -1)
            img = np.clip((base * 80 + 128) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            batch.append({"__key__": f"img{i:07d}", "jpg": buf.getvalue(), "cls": int(rng.integers(classes))})
        write_shard(os.path.join(directory, f"bench-{shard // per_shard:06d}.tar"), batch)
    open(os.path.join(directory, "done"), "w").close()
    return pattern


def checkpoint(path: str, model: str, num_classes: int, img_size: int | None = None) -> str:
    import timm
    import torch

    from w2s_pipe.pipeline.train.checkpoint import save_checkpoint
    from w2s_pipe.pipeline.data.transforms import data_config_for

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


def save(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=1)
    return path
