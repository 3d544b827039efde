"""Top-1/top-5 of a model on a data set's validation shards; shared by `train` and `eval`.

    w2s-pipe eval --run RUN                # the run's final weights, in its training precision
    w2s-pipe eval --run RUN --pick best    # the epoch picked by its val top-1 (selected on validation)
    w2s-pipe eval --run RUN --pick ema     # the moving average of the weights (train --model-ema)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import W2SError
from ..pipeline import distributed


@dataclass(frozen=True)
class EvalConfig:
    run: str | None = None  # run directory or name in the workspace
    pick: str = "last"  # with --run: last.pt (the final weights), best.pt (picked on validation) or ema.pt
    checkpoint: str | None = None
    data: str | None = None  # default: the data the run trained on
    split: str | None = None  # default: that data set's validation split
    batch_size: int = 256
    workers: int | None = None
    device: str = "auto"
    precision: str | None = None  # default: the precision the checkpoint was trained in, else fp32
    decode: str | None = None  # default: the decoder the run trained with where this device can, else cpu
    workspace: str | None = None

    def __post_init__(self):
        if bool(self.run) == bool(self.checkpoint):
            raise W2SError("give exactly one of --run RUN or --checkpoint PATH")
        if self.pick not in ("last", "best", "ema"):
            raise W2SError(f"--pick {self.pick!r} is invalid: choose last, best or ema")
        if self.pick != "last" and not self.run:
            raise W2SError("--pick chooses among a run's checkpoints: give --run RUN")
        if self.precision not in (None, "auto", "bf16", "fp16", "fp32"):
            raise W2SError(f"--precision {self.precision!r} is invalid: choose one of auto, bf16, fp16, fp32")
        if self.decode not in (None, "cpu", "gpu", "pil"):
            raise W2SError(f"--decode {self.decode!r} is invalid: choose one of cpu, gpu, pil")
        if self.batch_size < 1:
            raise W2SError(f"--batch-size {self.batch_size!r} is invalid: must be at least 1")


def evaluate(model, urls, data_config: dict, *, image_fields, label_field, batch_size: int, workers: int,
             device, precision: str = "fp32", decoder: str = "cpu") -> dict:
    """{"top1", "top5", "samples"} over `urls`; under DDP each rank takes shards r, r+W, ... and
    the counts are summed, so every rank returns the same numbers. `decoder` as `label --decode`
    (a bad image stops the evaluation, naming shard and key)."""
    import torch

    from ..pipeline.data.loader import ShardBatches, label_loader
    from ..pipeline.data.transforms import DeviceNormalize, Preprocess, TensorGeometry, decode_batch

    info = distributed.dist_info()
    mine = [(i, u) for i, u in enumerate(urls) if i % info.world_size == info.rank]
    geometry = TensorGeometry(data_config) if decoder == "gpu" else None
    dataset = ShardBatches(mine, prepare=Preprocess(data_config, decoder), batch_size=batch_size,
                           image_fields=image_fields, label_field=label_field, label_required=True)
    loader = label_loader(dataset, min(workers, len(mine)) if mine else 0, device.type == "cuda")
    normalize = DeviceNormalize(data_config, device)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top1, top5, n
    dtype = distributed.autocast_dtype(precision)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for item in loader if mine else ():
            if "error" in item:
                raise W2SError(item["error"])
            if item.get("end"):
                continue
            if "blobs" in item:
                name = urls[item["shard"]].rstrip("/").rsplit("/", 1)[-1]
                keys = item["keys"]
                images, bad = decode_batch(item["blobs"], geometry, device,
                                           lambda i: f"shard {name}, key {keys[i]!r}: cannot decode the image")
                if bad:
                    raise W2SError(bad[min(bad)])
            else:
                images = item["images"]
            x = normalize(images)
            y = item["labels"].to(device).long()
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32"):
                logits = model(x)
            k = min(5, logits.shape[1])
            top = logits.float().topk(k, dim=1).indices
            counts[0] += (top[:, 0] == y).sum()
            counts[1] += (top == y[:, None]).any(dim=1).sum()
            counts[2] += len(y)
    model.train(was_training)
    if info.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
    n = max(1.0, float(counts[2]))
    return {"top1": float(counts[0]) / n, "top5": float(counts[1]) / n, "samples": int(counts[2])}


def run_eval(cfg: EvalConfig) -> dict:
    """Top-1 and top-5, with what they were measured on: checkpoint, its step and epoch, how it was
    picked, the precision, the data and split."""
    import json
    import os

    import torch

    from ..pipeline.data.datasets import resolve_data
    from ..pipeline.data.loader import default_workers
    from ..pipeline.models import load_model
    from ..pipeline.train.runs import find_run

    checkpoint = cfg.checkpoint
    trained_on = {}
    if cfg.run:
        run_dir = find_run(cfg.run, cfg.workspace)
        checkpoint = os.path.join(run_dir, f"{cfg.pick}.pt")
        if not os.path.exists(checkpoint):
            why = {"best": "it ran without validation", "ema": "it ran without --model-ema, or has not saved yet"}.get(
                cfg.pick, "it has not finished an epoch or a --max-steps stop")
            raise W2SError(f"run {run_dir} has no {cfg.pick}.pt ({why})")
        with open(os.path.join(run_dir, "config.json")) as f:
            trained_on = json.load(f).get("data_source", {})
    loaded = load_model(None, checkpoint=checkpoint, num_classes=None, option="--strong")
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = {k: meta.get(k) for k in ("step", "epoch", "precision", "settings")} if isinstance(meta, dict) else {}
    data = cfg.data or trained_on.get("name")
    if not data or data == "shards":
        raise W2SError("give --data (a dataset name or validation shard pattern) to evaluate this checkpoint on")
    source = resolve_data(data, None, workspace=cfg.workspace)
    split = cfg.split or (source.val_split if source.entry else source.split)
    if split != source.split:
        source = resolve_data(data, split, workspace=cfg.workspace)
    device = distributed.pick_device(cfg.device)
    precision = distributed.resolve_precision(cfg.precision or meta.get("precision") or "fp32", device)
    trained_with = (meta.get("settings") or {}).get("decode_resolved", "cpu")
    decoder = cfg.decode or (trained_with if trained_with != "gpu" or device.type == "cuda" else "cpu")
    if decoder == "gpu" and device.type != "cuda":
        raise W2SError(f"--decode gpu needs a CUDA device, and this evaluation is on {device}; use --decode cpu")
    result = evaluate(loaded.model.to(device), list(source.urls), loaded.data_config, image_fields=source.image_fields,
                      label_field=source.label_field, batch_size=cfg.batch_size,
                      workers=cfg.workers if cfg.workers is not None else default_workers(), device=device,
                      precision=precision, decoder=decoder)
    picked = {"last": "the final weights", "ema": "the moving average of the weights (--model-ema)",
              "best": "the epoch with the best val top-1: selected on validation, an optimistic figure"}[cfg.pick] \
        if cfg.run else "as given"
    return {**result, "checkpoint": checkpoint, "step": meta.get("step"), "epoch": meta.get("epoch"), "picked": picked,
            "precision": precision, "decode": decoder, "data": source.name, "split": source.split,
            "pattern": source.pattern, "trained_on": _trained_on(trained_on)}


def _trained_on(source: dict) -> str | None:
    """What the run trained from, said with the figure: the store (and whether it is still there), or
    the ground truth of its data."""
    import os

    if not source:
        return None
    store = source.get("store")
    if not store:
        return f"ground truth of {source.get('name')} {source.get('split')}"
    there = os.path.exists(os.path.join(store, "zarr.json")) if "://" not in store else None
    state = "" if there is None else " (still there)" if there else " (no longer there)"
    return f"weak labels of store {store}{state}, {source.get('weak')} on {source.get('name')} {source.get('split')}"
