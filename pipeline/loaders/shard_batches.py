"""The labelling (and evaluation) loader: worker processes turn whole shards into batches of uint8
crops (or, for `--decode gpu`, of raw image bytes that the main process decodes on the device).

What it yields is a stream of typed events, in each shard's order:

    ImageBatch  samples of one shard only, in the shard's order (so the writer fills a shard's
                contiguous rows without sorting)
    ShardEnd    the shard is read: how many samples its batches held, and those skipped as bad
    ShardTaken  another process holds the shard's claim (labelling): this run leaves it
    LoadFailed  a loading process stopped at bad input; `events` raises it as the one-line error
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ...errors import W2SError
from ..image.decode import decode_batch, decode_label
from ..sources.shards import iter_samples, url_name
from .workers import worker_loader


@dataclass
class ImageBatch:
    shard: int  # position in the data source
    keys: list[str]
    labels: torch.Tensor | None  # int32 (N,), or None where the shards carry no label
    images: torch.Tensor | None = None  # uint8 (N, 3, H, W): the eval crops
    blobs: list[bytes] | None = None  # or the encoded images, for the device to decode (--decode gpu)
    views: torch.Tensor | None = None  # label --views K: uint8 (N, K, 3, H, W), each sample's training views
    view_rows: torch.Tensor | None = None  # and those views as (N, K, 12) rows (params.VIEW_FIELDS)
    partner_views: torch.Tensor | None = None  # mixed views: uint8 (N, K, 3, H, W), each view's partner's view
    mix_rows: torch.Tensor | None = None  # (N, K, 7) rows (mixing.MIX_FIELDS) at the weak model's size
    mix_partner: torch.Tensor | None = None  # (N, K) int: the partner's position in the shard (-1: not mixed)
    mix_lam: torch.Tensor | None = None  # (N, K): the drawn λ
    partner_rows: torch.Tensor | None = None  # (N, K, 12): the partners' view rows (their erasing)

    def pin_memory(self) -> "ImageBatch":
        """The DataLoader's pinning thread calls this (page-locked memory copies to a GPU asynchronously)."""
        pin = (lambda t: None if t is None else t.pin_memory())
        return dataclasses.replace(self, labels=pin(self.labels), images=pin(self.images), views=pin(self.views),
                                   partner_views=pin(self.partner_views))


@dataclass
class ShardEnd:
    shard: int
    count: int  # samples in the shard's batches
    skipped: list[dict] = field(default_factory=list)  # {"key", "reason"} of bad samples left out (--on-bad-sample skip)


@dataclass
class ShardTaken:
    shard: int  # claimed by another labelling process, which labels it


@dataclass
class LoadFailed:
    message: str  # passed as data, not raised in the loading process: the main process says it on one line


def events(loader: Iterable) -> Iterator:
    """The loader's events, with a loading process's failure raised as its one-line error."""
    for event in loader:
        if isinstance(event, LoadFailed):
            raise W2SError(event.message)
        yield event


class ShardBatches(IterableDataset):
    def __init__(self, shards: list[tuple[int, str]], *, prepare, batch_size: int, image_fields, label_field,
                 label_required: bool = False, storage_options: dict | None = None, claims=None,
                 skip_bad: bool = False, views=None):
        self.shards = shards  # (position in the data source, url)
        self.prepare = prepare  # preprocess.Preprocess: sample -> uint8 crop (or raw bytes, for GPU decoding)
        self.batch_size = batch_size
        self.image_fields = tuple(image_fields)
        self.label_field = label_field
        self.label_required = label_required
        self.storage_options = storage_options
        self.claims = claims  # storage.claims.ShardClaims: skip shards another process is labelling
        self.skip_bad = skip_bad  # record bad samples and go on, instead of stopping
        self.views = views  # pixels.LabelViews: each sample's training views too (label --views)

    def __iter__(self):
        info = get_worker_info()
        mine = self.shards[info.id :: info.num_workers] if info else self.shards
        for position, url in mine:
            if self.claims is not None and not self.claims.claim(position):
                yield ShardTaken(position)
                continue
            try:
                yield from self._shard(position, url)
            except W2SError as exc:
                yield LoadFailed(str(exc))
                return

    def _shard(self, position: int, url: str):
        name = url_name(url)
        images, keys, labels, views = [], [], [], []
        count, seen, skipped = 0, set(), []
        samples, partners = iter_samples(url, self.storage_options), None
        if self.views is not None and self.views.mixes:  # a view's partner may be anywhere in the shard
            samples = list(samples)
            partners = ShardImages(samples, self.prepare, self.image_fields, name)
        for index, sample in enumerate(samples):
            key = sample["__key__"]
            try:
                if key in seen:
                    raise W2SError(f"shard {name}, key {key!r}: appears more than once in the shard")
                seen.add(key)
                if self.views is None:
                    image = self.prepare(sample, self.image_fields, name)
                else:  # decoded once, for the centre crop and the views
                    decoded = self.prepare.decode(sample, self.image_fields, name)
                    image = self.prepare.crop(decoded)
                    view = self.views(decoded, name, key, position=index, partners=partners)
                label = decode_label(sample, self.label_field, name, self.label_required)
            except W2SError as exc:
                if not self.skip_bad:
                    raise W2SError(f"{exc} (or pass --on-bad-sample skip)") from None
                skipped.append({"key": key, "reason": str(exc).split(": ", 1)[-1]})
                continue
            images.append(image)
            keys.append(key)
            labels.append(label)
            if self.views is not None:
                views.append(view)
            if len(images) == self.batch_size:
                yield self._batch(position, images, keys, labels, views)
                count += len(images)
                images, keys, labels, views = [], [], [], []
        if images:
            yield self._batch(position, images, keys, labels, views)
            count += len(images)
        yield ShardEnd(position, count, skipped)

    def _batch(self, position, images, keys, labels, views) -> ImageBatch:
        has_labels = all(label is not None for label in labels)
        labels = torch.tensor(labels, dtype=torch.int32) if has_labels else None
        if self.prepare.decoder == "gpu":  # bytes, decoded on the device by the main process
            return ImageBatch(position, keys, labels, blobs=images)
        batch = ImageBatch(position, keys, labels, images=torch.stack(images))
        if views:
            batch.views, batch.view_rows = torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])
            if views[0][2] is not None:  # mixed views: their partners' views and the mixes
                batch.partner_views, batch.mix_rows, batch.mix_partner, batch.mix_lam, batch.partner_rows = (
                    torch.stack([v[2][i] for v in views]) for i in range(5))
        return batch


class ShardImages:
    """The decoded images of one shard's samples by position, the last few kept: the partners of
    mixed views (`label --views K --mixup ...`) are other samples of the same shard."""

    def __init__(self, samples: list[dict], prepare, image_fields, shard: str, keep: int = 32):
        self.samples, self.prepare, self.image_fields, self.shard, self.keep = samples, prepare, image_fields, shard, keep
        self.cache: OrderedDict = OrderedDict()

    def __call__(self, position: int):
        """(decoded image, key) of the sample at `position`."""
        if position in self.cache:
            self.cache.move_to_end(position)
            return self.cache[position]
        sample = self.samples[position]
        self.cache[position] = self.prepare.decode(sample, self.image_fields, self.shard), sample["__key__"]
        if len(self.cache) > self.keep:
            self.cache.popitem(last=False)
        return self.cache[position]


def label_loader(dataset: ShardBatches, workers: int, pin_memory: bool) -> DataLoader:
    """Batches of whole shards from `workers` loading processes (workers.py: how they start); its own
    generator, so that evaluating inside a training run draws nothing from the run's."""
    return worker_loader(dataset, workers, pin_memory=pin_memory, batch_size=None)


def batch_images(batch: ImageBatch, geometry, device, shard: str, *, skip_bad: bool = False, hint: str = ""):
    """A batch's images ready to normalise: the loading processes' uint8 crops, or (--decode gpu)
    its encoded images decoded and cropped on `device` (`decode.decode_batch` with `geometry`,
    a `TensorGeometry`).

    Returns (images or None when none is left, keys, labels, skipped): a bad image stops the run
    naming shard and key (and `hint`, what the user can do), or under `skip_bad` is left out and
    returned as {"key", "reason"}.
    """
    if batch.blobs is None:
        return batch.images, batch.keys, batch.labels, []

    keys, labels = batch.keys, batch.labels
    images, bad = decode_batch(batch.blobs, geometry, device,
                               lambda i: f"shard {shard}, key {keys[i]!r}: cannot decode the image")
    if not bad:
        return images, keys, labels, []
    if not skip_bad:
        raise W2SError(bad[min(bad)] + hint)
    keep = [j for j in range(len(keys)) if j not in bad]
    skipped = [{"key": keys[j], "reason": bad[j].split(": ", 1)[-1]} for j in sorted(bad)]
    return images, [keys[j] for j in keep], None if labels is None else labels[keep], skipped
