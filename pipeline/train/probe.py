"""A probe from stores alone (`train --features STORE`): the strong model's frozen pooled features,
stored once (`w2s-pipe features`), joined with the weak labels by (shard, key), train its classifier.

    feature store rows  +  label store rows (StoreJoin.shard: an ensemble combined, --select's
    masks, --weight-by's statistic)  ->  in memory, in shard order  ->  each epoch a seeded
    permutation, cut into every rank's batches  ->  {"image": features, "weak", "target", "trust"}

The head is the model's own classifier (`get_classifier()`), which reads exactly what the store
holds (models/features.py), so `train_step`, the objective, the checkpoints (the whole model, its
head trained) and the report are a fine-tuning run's. No image is decoded: a grid of losses x
thresholds x seeds costs a head's steps. The batch of a step is a function of (seed, epoch, step),
so `--resume` continues exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import W2SError
from ...storage import open_store, schema
from ...storage.fsutil import absolute
from ..evaluation.predictions import Predictions
from ..image.preprocess import DATA_CONFIG_KEYS
from ..loaders.join import StoreJoin
from ..models.checkpoint import file_sha256
from ..models.features import feature_width
from ..runtime.workspace import default_store_path
from ..views.params import view_seed


@dataclass
class ProbeRows:
    """A split's rows in shard order: features (n, D) as stored (float16: half the memory; a batch is
    made float32 on its device), weak logits (n, C) as stored, targets (n,), --weight-by's statistic
    (n,), each None where the run does not read it. ImageNet's 1.28 M rows of 768-d features and
    1,000 logits take 4.5 GB so."""

    features: torch.Tensor
    weak: torch.Tensor | None = None  # (n, C), or (n, M, C): every member's (an ensemble combined at each step)
    target: torch.Tensor | None = None
    trust: torch.Tensor | None = None
    ids: torch.Tensor | None = None  # the samples' ids in the label store (--ensemble learned-sample)
    keys: list[str] | None = None  # the samples' keys (validation rows: its kept predictions name them)

    def __len__(self) -> int:
        return len(self.features)

    def take(self, index: torch.Tensor) -> dict:
        return {name: getattr(self, name)[index] for name in ("features", "weak", "target", "trust", "ids")
                if getattr(self, name) is not None}


def feature_store(url: str, option: str, strong: str, model, checkpoint_sha256: str | None):
    """The feature store at `url`, complete and checked (rows against markers, index against parts),
    of the model this run builds: its name, its weights (the checkpoint's sha256; None: timm's
    pretrained weights) and its feature width. Each difference is one line naming the store."""
    store = open_store(absolute(url))
    if not store.features:
        raise W2SError(f"{option} {url} is a label store, not a feature store (`w2s-pipe features` makes one)",
                       option=option)
    store.require_complete()
    store.check_rows()
    store.check_index()
    made_by = store.attrs["weak"]
    if made_by["model"] != strong:
        raise W2SError(f"{option} {url} holds {made_by['model']}'s features, not --strong {strong}'s", option=option)
    if made_by.get("checkpoint_sha256") != checkpoint_sha256:
        stored = made_by.get("checkpoint") or "timm's pretrained weights"
        raise W2SError(f"{option} {url} was embedded with {stored}, not this run's weights; give --strong-checkpoint "
                       "with the file it was embedded with (or --pretrained for timm's weights), so the checkpoints "
                       "hold the backbone its head was trained on", option=option)
    if store.features != feature_width(model):
        raise W2SError(f"{option} {url} holds {store.features}-d features; {strong}'s classifier reads "
                       f"{feature_width(model)}", option=option)
    return store


def embedded_input(url: str, img_size: int | None) -> dict:
    """The data config a feature store's rows were embedded with (its backbone's input): a probe's
    model is built for it and its checkpoints record it, so that eval, label and --teacher run the
    saved model on the images as the features were made. A different --img-size is one line."""
    store = open_store(absolute(url))
    if not store.features:
        raise W2SError(f"--features {url} is a label store, not a feature store (`w2s-pipe features` makes one)",
                       option="--features")
    config = {k: v for k, v in schema.preprocessing(store.attrs).items() if k in DATA_CONFIG_KEYS}
    size = int(config["input_size"][-1])
    if img_size and int(img_size) != size:
        raise W2SError(f"--img-size {img_size}: feature store {url} was embedded at {size} px, the input of the "
                       "backbone whose head a probe trains; drop --img-size", option="--img-size")
    return config


def probe_steps(rows: int, batch_size: int, accum: int, world_size: int) -> int:
    """Steps in a probe's epoch: every row once, the last partial batch kept (as OpenAI's loader and
    torch's DataLoader keep it). Two cases drop it: with --grad-accum (its micro-batches would be of
    unequal sizes, which the accumulation's mean would weigh wrongly), and where it holds fewer rows
    than there are ranks (one would have none)."""
    whole, left = divmod(rows, batch_size * accum * world_size)
    keep = left and accum == 1 and left >= world_size
    return max(1, whole + (1 if keep else 0))


def training_rows(features, join: StoreJoin | None, label_url: str | None, need_labels: bool,
                  trust: bool) -> ProbeRows:
    """The training rows: every labelled row of the label store (kept by --select / --keep-frac)
    with its features, or every row of the feature store where the run reads no weak labels (--loss
    gt). A sample of the label store the feature store lacks is an error naming both stores."""
    if label_url is not None:
        label_store = open_store(label_url)
        if label_store.attrs["data"]["fingerprint"] != features.attrs["data"]["fingerprint"]:
            a, b = label_store.attrs["data"], features.attrs["data"]
            raise W2SError(f"label store {label_url} ({a['name']} {a['split']}) and feature store {features.url} "
                           f"({b['name']} {b['split']}) are of different samples (their data fingerprints differ); "
                           "embed the label store's split", option="--features")
    columns = {"features": [], "weak": [], "target": [], "trust": [], "ids": []}
    for shard in features.shards:
        rows = features.shard_rows(shard["name"], arrays=("features",))
        position = np.arange(len(rows.keys))
        if join is not None:
            keys, weak, _, _, stat = join.shard(shard["name"])
            kept = np.ones(len(keys), bool) if join.keep is None else _mask(join.keep.get(shard["name"]), len(keys))
            position = _positions(keys, rows.keys, shard["name"], label_url, features.url)[kept]
            columns["weak"].append(np.asarray(weak)[kept])
            if trust:
                columns["trust"].append(np.asarray(stat, np.float32)[kept])
            if join.ids:  # as the join gives them to a fine-tuning run's samples
                columns["ids"].append(join.offset(shard["name"]) + np.arange(len(keys))[kept])
        columns["features"].append(rows.arrays["features"][position])
        if need_labels:
            if rows.labels is None:
                raise W2SError(f"feature store {features.url}: its shards carry no ground-truth labels, which this "
                               "run reads", option="--features")
            columns["target"].append(rows.labels[position].astype(np.int64))
    tensors = {name: torch.from_numpy(np.concatenate(parts)) if parts else None for name, parts in columns.items()}
    if not len(tensors["features"]):
        raise W2SError(f"no training rows: feature store {features.url} and the label store share no kept sample",
                       option="--features")
    return ProbeRows(**tensors)


def _positions(keys: list[str], stored: list[str], shard: str, label_url: str, features_url: str) -> np.ndarray:
    """Where each of the label store's `keys` sits among the feature store's rows of the shard: by
    position where both stores hold the shard's samples in the same order (label's machinery wrote
    both), else by key; a key the feature store lacks is an error naming both stores."""
    if keys == stored:
        return np.arange(len(keys))
    where = {k: i for i, k in enumerate(stored)}
    missing = [k for k in keys if k not in where]
    if missing:
        raise W2SError(f"shard {shard}, key {missing[0]!r} has a row in label store {label_url} but none in feature "
                       f"store {features_url}", option="--features")
    return np.array([where[k] for k in keys], dtype=np.int64)


def _mask(mask, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    if mask is not None:
        out[: min(n, len(mask))] = np.asarray(mask[:n], bool)
    return out


def validation_rows(store) -> ProbeRows:
    """A validation feature store's rows with their ground truth."""
    parts = [store.shard_rows(s["name"], arrays=("features",)) for s in store.shards]
    if any(p.labels is None for p in parts if p.keys):
        raise W2SError(f"validation feature store {store.url} carries no labels", option="--val-features")
    return ProbeRows(torch.from_numpy(np.concatenate([p.arrays["features"] for p in parts])),
                     target=torch.from_numpy(np.concatenate([p.labels for p in parts if p.keys]).astype(np.int64)),
                     keys=[k for p in parts for k in p.keys])


def default_val_features(cfg, val, strong: str) -> str:
    """--val-features, or the workspace's feature store of the validation split (`val`, a DataSource)."""
    if cfg.val_features:
        return cfg.val_features
    if val is None:
        raise W2SError("a --features probe evaluates on a feature store of the validation split: give --val-features "
                       "STORE, or --no-eval", option="--val-features")
    path = default_store_path(cfg.workspace, val.name, val.split, strong, None, features=True)
    if not os.path.exists(os.path.join(path, "zarr.json")):
        raise W2SError(f"no feature store of the validation split at {path}: run `w2s-pipe features --model {strong} "
                       f"--data {val.name} --split {val.split}` (with the same weights), or give --val-features",
                       option="--val-features")
    return path


class ProbeBatches:
    """This rank's endless batches from the `batch`-th (micro-)batch on: global batch b is the slice
    of epoch b // per_epoch's permutation (seeded by the run's seed and the epoch) at position
    b % per_epoch, of up to `batch_size` x ranks rows (the epoch's last one may be shorter), and
    rank r takes its r-th part (torch.tensor_split: the parts differ by a row at most). Each batch's
    "share" is its part's size x ranks / the global batch's, the weight that makes DDP's mean of the
    ranks' mean losses the mean over the global batch."""

    def __init__(self, rows: ProbeRows, *, batch_size: int, per_epoch: int, seed: int, rank: int, world_size: int,
                 start: int = 0, partial: bool = True):
        self.rows, self.batch_size, self.per_epoch = rows, batch_size, per_epoch
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start
        self.partial = partial  # False: every batch full, wrapping within the epoch (--steps-per-epoch)

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(view_seed(self.seed, "probe", "order", epoch))
        return torch.randperm(len(self.rows), generator=generator)

    def __iter__(self):
        b, epoch, order = self.start, None, None
        width = self.batch_size * self.world_size
        while True:
            if b // self.per_epoch != epoch:
                epoch = b // self.per_epoch
                order = self.order(epoch)
            first = (b % self.per_epoch) * width
            index = order[first: first + width]
            if len(index) < (self.world_size if self.partial else width):  # --steps-per-epoch: wrap in the epoch
                index = order[(first + torch.arange(width)) % len(order)]
            mine = torch.tensor_split(index, self.world_size)[self.rank]
            yield {**self.rows.take(mine), "share": len(mine) * self.world_size / len(index)}
            b += 1


class ProbeInputs:
    """A probe batch -> a training step's inputs on the device (as train/batch.StepInputs)."""

    def __init__(self, device):
        self.device = device

    def __call__(self, raw: dict, *, step: int, micro: int = 0) -> dict:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in raw.items() if k != "share"}
        weak = batch.get("weak")
        return {"image": batch["features"].float(), "target": batch.get("target"),
                "weak": None if weak is None else weak.float(),
                "trust": batch.get("trust"), "ids": batch.get("ids"), "dropped": 0, "share": raw.get("share", 1.0)}


def probe_validator(rows: ProbeRows, device, batch_size: int = 4096, split: str = "val"):
    """(model, keep=False) -> {"top1", "top5", "samples", "split"} of its classifier on the validation
    features; with `keep`, "predictions" too (evaluation/predictions.Predictions)."""
    def validate(model, keep: bool = False) -> dict:
        head = model.get_classifier()
        was_training = head.training
        head.eval()
        top1 = top5 = 0
        kept = []
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                logits = head(rows.features[start: start + batch_size].to(device).float()).float()
                y = rows.target[start: start + batch_size].to(device)
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                top1 += int((top[:, 0] == y).sum())
                top5 += int((top == y[:, None]).any(1).sum())
                if keep:
                    kept.append(logits.cpu().numpy())
        head.train(was_training)
        n = max(1, len(rows))
        out = {"top1": top1 / n, "top5": top5 / n, "samples": len(rows), "split": split}
        if keep:
            out["predictions"] = Predictions.from_logits(rows.keys, rows.target.numpy(), np.concatenate(kept))
        return out
    return validate


def run_weights(cfg) -> str | None:
    """The sha256 of the run's --strong-checkpoint, or None for timm's pretrained weights (as a
    store records them); a probe from scratch is refused: its checkpoints would hold a backbone
    other than the one whose features trained the head."""
    if cfg.strong_checkpoint:
        return file_sha256(cfg.strong_checkpoint)
    if cfg.pretrained:
        return None
    raise W2SError("a --features probe's backbone is the feature store's: give the --strong-checkpoint it was "
                   "embedded with, or --pretrained for timm's weights", option="--features")
