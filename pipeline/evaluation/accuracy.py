"""Top-1/top-5 of a model on a data set's validation shards: what `train` measures each epoch,
`eval` prints for a checkpoint and `report` takes as the weak model's accuracy."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ...errors import W2SError
from ..image.decode import resolve_decoder
from ..image.preprocess import DeviceNormalize, Preprocess, TensorGeometry
from ..loaders.shard_batches import ImageBatch, ShardBatches, batch_images, events, label_loader
from ..loaders.workers import loading_processes
from ..models.build import load_model
from ..runtime import distributed, watchdog
from ..sources.datasets import resolve_data
from ..sources.noise import described, scored_on_clean
from ..sources.shards import url_name
from .predictions import Predictions


def batches(urls, data_config: dict, *, image_fields, label_field, batch_size: int, workers: int, device,
            decoder: str = "cpu"):
    """This rank's share of `urls` (shards r, r+W, ...) as (normalised images on `device`, labels
    (N,) long): the evaluation crop, decoded by `decoder` (a bad image stops it, naming shard and key)."""
    info = distributed.dist_info()
    mine = [(i, u) for i, u in enumerate(urls) if i % info.world_size == info.rank]
    geometry = TensorGeometry(data_config) if decoder == "gpu" else None
    dataset = ShardBatches(mine, prepare=Preprocess(data_config, decoder), batch_size=batch_size,
                           image_fields=image_fields, label_field=label_field, label_required=True)
    loader = label_loader(dataset, min(workers, len(mine)) if mine else 0, device.type == "cuda")
    normalize = DeviceNormalize(data_config, device)
    for batch in events(loader) if mine else ():
        watchdog.beat("the evaluation's next batch from the loading processes")
        if not isinstance(batch, ImageBatch):
            continue  # a shard's end
        images, keys, labels, _ = batch_images(batch, geometry, device, url_name(urls[batch.shard]))
        yield normalize(images), labels.to(device).long(), keys


def outputs(model, forward, urls, data_config: dict, *, precision: str = "fp32", keys: bool = False, **loading):
    """(forward(model, images), labels) for each of `batches(urls, data_config, **loading)` (with
    `keys`, their keys third), the model in eval mode (its mode restored after), under inference
    mode and the precision's autocast. The caller's code between batches also runs in inference
    mode: read the outputs, train nothing."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x, y, names in batches(urls, data_config, **loading):
                with distributed.autocast(precision, loading["device"]):
                    out = forward(model, x)
                yield (out, y, names) if keys else (out, y)
    finally:
        model.train(was_training)


def evaluate(model, urls, data_config: dict, *, image_fields, label_field, batch_size: int, workers: int,
             device, precision: str = "fp32", decoder: str = "cpu", keep: bool = False) -> dict:
    """{"top1", "top5", "samples"} over `urls`; under DDP each rank takes shards r, r+W, ... and
    the counts are summed, so every rank returns the same numbers. `decoder` is resolved, as
    `label --decode` (a bad image stops the evaluation, naming shard and key). With `keep`, also
    "predictions": every sample's (predictions.Predictions, every rank's gathered, in shard order)."""
    info = distributed.dist_info()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top1, top5, n
    kept = []
    for logits, y, keys in outputs(model, lambda m, x: m(x), urls, data_config, image_fields=image_fields,
                                   label_field=label_field, batch_size=batch_size, workers=workers, device=device,
                                   decoder=decoder, precision=precision, keys=True):
        k = min(5, logits.shape[1])
        top = logits.float().topk(k, dim=1).indices
        counts[0] += (top[:, 0] == y).sum()
        counts[1] += (top == y[:, None]).any(dim=1).sum()
        counts[2] += len(y)
        if keep:
            kept.append((list(keys), y.cpu().numpy(), logits.float().cpu().numpy()))
    if info.world_size > 1:
        dist.all_reduce(counts)
    n = max(1.0, float(counts[2]))
    out = {"top1": float(counts[0]) / n, "top5": float(counts[1]) / n, "samples": int(counts[2])}
    if keep:
        out["predictions"] = _gathered(kept, info.world_size)
    return out


def _gathered(kept: list, world_size: int) -> Predictions:
    """Every rank's kept (keys, labels, logits) as one Predictions, rank by rank (readers match samples
    by key, not by position)."""
    parts = distributed.all_gather(kept) if world_size > 1 else [kept]
    batches_ = [b for part in parts for b in part]
    if not batches_:
        return Predictions.from_logits([], np.zeros(0, np.int64), np.zeros((0, 1), np.float32))
    return Predictions.from_logits([k for b in batches_ for k in b[0]], np.concatenate([b[1] for b in batches_]),
                                   np.concatenate([b[2] for b in batches_]))


def evaluate_checkpoint(checkpoint: str, *, data: str, split: str | None = None, batch_size: int = 256,
                        workers: int | None = None, device: str = "auto", precision: str | None = None,
                        decode: str | None = None, workspace=None, keep: bool = False) -> dict:
    """A checkpoint this tool wrote, evaluated on `data`'s `split` (default: its validation split).

    `precision` defaults to the one the checkpoint trained in (as training's own evaluation used),
    fp32 for a checkpoint that does not say; `decode` to the decoder it trained with where this
    device can use it, else cpu. Returns `evaluate`'s figures with the checkpoint's step and epoch,
    the precision, the decoder and the data they are for (with `keep`, "predictions" too)."""
    model, loading, about = checkpoint_on(checkpoint, data, split, device, precision, decode, workspace,
                                           batch_size, workers)
    return {**evaluate(model, **loading, keep=keep), **about}


def checkpoint_on(checkpoint: str, data: str, split: str | None, device: str, precision: str | None,
                   decode: str | None, workspace, batch_size: int, workers: int | None) -> tuple:
    """(the checkpoint's model on the device, the keyword arguments of `evaluate` and
    `fewshot.pooled_features` after it, what the figures are for) of an evaluation: the split
    defaults to the data set's validation split, the precision to the checkpoint's training one
    (fp32 if it does not say), the decoder to the one it trained with where this device can, and a
    noised split is scored against its clean labels (noise.scored_on_clean)."""
    loaded = load_model(None, checkpoint=checkpoint, num_classes=None, option=None)
    meta = loaded.trained or {}
    source = resolve_data(data, None, workspace=workspace)
    split = split or (source.val_split if source.entry else source.split)
    if split != source.split:
        source = resolve_data(data, split, workspace=workspace)
    device = distributed.pick_device(device)
    precision = distributed.resolve_precision(precision or meta.get("precision") or "fp32", device)
    trained_with = (meta.get("settings") or {}).get("decode_resolved", "cpu")
    usable = trained_with if trained_with != "gpu" or device.type == "cuda" else "cpu"
    decoder = resolve_decoder(decode or usable, device, border_crop=loaded.data_config.get("crop_mode") == "border")
    if source.label_field is None:
        raise W2SError(f"{source.pattern} carries no labels to evaluate against")
    source = scored_on_clean(source)
    loading = dict(urls=list(source.urls), data_config=loaded.data_config, image_fields=source.image_fields,
                   label_field=source.label_field, batch_size=batch_size,
                   workers=loading_processes(workers), device=device, precision=precision,
                   decoder=decoder)
    about = {"checkpoint": checkpoint, "step": meta.get("step"), "epoch": meta.get("epoch"), "precision": precision,
             "decode": decoder, "data": source.name, "split": source.split, "pattern": source.pattern,
             **scored_on(source)}
    return loaded.model.to(device), loading, about


def scored_on(source) -> dict:
    """What an evaluation's figures were scored against, for its result: {"labels": field} and,
    where the shards' labels are noisy (noise.scored_on_clean), the noise they carry."""
    out = {"labels": source.label_field}
    if source.label_noise:
        out["label_noise"] = described(source.label_noise)
    return out
