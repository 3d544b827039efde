"""The training stream: shards split by rank and worker -> encoded samples -> join -> shuffle buffer
(of encoded samples) -> decode and augment -> batches, endlessly. The trainer takes a fixed number
of steps per epoch, so every DDP rank runs the same number of steps whatever its shards hold.

What the stream yields is a function of the run's seed, the rank, the worker count and the batch
size; each sample's view is a function of (seed, shard, key, pass) alone (`views/params.py`), applied by
`augment` (`pixels.TrainAugment`: uint8 crops, or the raw bytes for the device to decode). A batch
carries its views as a (N, 12) tensor (`params.VIEW_FIELDS`). A run resumed at step s skips, without
decoding, the samples of the s batches already trained on, so it sees the same samples in the same
order, with the same views, as the uninterrupted run.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch
import webdataset
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ...errors import W2SError
from ..image.decode import decode_label
from ..sources.shards import iter_samples, url_name
from ..views.mixing import plan
from ..views.params import view_seed
from .join import StoreJoin
from .shard_batches import LoadFailed
from .workers import worker_loader


def batches_before(step: int, worker: int, workers: int) -> int:
    """Batches worker `worker` of `workers` made for steps 0 .. step-1: the DataLoader takes batch b
    from worker b % workers (all workers are endless, so the round robin never skips one)."""
    return max(0, -(-(step - worker) // workers))


class TrainStream(IterableDataset):
    def __init__(self, urls: list[str], *, augment, image_fields, label_field, need_labels: bool,
                 join: StoreJoin | None, seed: int, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000,
                 batch_size: int = 1, start_step: int = 0, storage_options: dict | None = None,
                 view_passes: int = 0, mix=None, classes: tuple[int, ...] | None = None):
        self.urls = list(urls)
        self.classes = None if classes is None else frozenset(classes)  # --classes: only samples of these
        self.augment = augment  # (sample, image fields, shard, pass) -> (uint8 image or bytes, View)
        self.image_fields = tuple(image_fields)
        self.label_field = label_field
        self.need_labels = need_labels
        self.join = join
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.batch_size = batch_size
        self.start_step = start_step
        self.storage_options = storage_options
        # Replaying a per-view store of K views: pass p draws view p mod K, the one the weak model saw;
        # with its mixing recipe (`mix`, a mixing.MixRecipe) mixed with the partner it was mixed with.
        self.view_passes = view_passes
        self.mix = mix if mix is not None and mix.on else None

    def __iter__(self):
        info = get_worker_info()
        workers = info.num_workers if info else 1
        # A new loader takes its first batch from process 0; the batch of step `start_step` came from
        # process start_step % workers, so process i plays that one's part: (i + start_step) % workers.
        worker = ((info.id if info else 0) + self.start_step) % workers
        me, everyone = self.rank * workers + worker, self.world_size * workers
        rng = random.Random(view_seed(self.seed, "shuffle", str(me), everyone))
        # Shuffled while still encoded: a buffer of 1,000 ImageNet JPEGs is ~110 MB, of 224 px float
        # crops 0.6 GB, and only the samples that leave the buffer are ever decoded.
        encoded = webdataset.filters.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(
            self._encoded(me, everyone))
        done = self.batch_size * batches_before(self.start_step, worker, workers)
        try:
            for sample in itertools.islice(encoded, done, None):
                yield self._decode(sample)
        except W2SError as exc:
            yield LoadFailed(str(exc))  # as data: the main process says it on one line

    def _encoded(self, me: int, everyone: int):
        dropped = 0
        for epoch in itertools.count():
            # The same shard order on every rank and worker, new each pass.
            order = list(self.urls)
            random.Random(self.seed + 7919 * epoch).shuffle(order)
            # Whole shards per worker when there are enough; otherwise every worker reads every
            # shard and keeps every `everyone`-th sample (small data sets, many workers).
            mine, stride = (order[me::everyone], None) if len(order) >= everyone else (order, everyone)
            for url in mine:
                stream = iter_samples(url, self.storage_options)
                if self.classes is not None:  # before the shuffle buffer: the others are never held or decoded
                    stream = (x for x in stream if decode_label(x, self.label_field, url_name(url), True) in self.classes)
                if self.join is not None:
                    stream = self.join(stream)
                if self.mix is not None:  # a sample's partner may be anywhere in its shard
                    stream = self._with_partners(list(stream), url, epoch)
                for n, sample in enumerate(stream):
                    if stride and n % stride != me:
                        continue
                    sample["__pass__"] = epoch
                    if self.join is not None:  # samples --skip-missing left out since the last one
                        sample["__dropped__"], dropped = self.join.skipped - dropped, self.join.skipped
                    yield sample

    def _with_partners(self, samples: list[dict], url: str, epoch: int):
        """A shard's samples, each with its mix of this pass (`__mix__`) and its partner sample."""
        shard, drawn = url_name(url), epoch % self.view_passes if self.view_passes else epoch
        for position, sample in enumerate(samples):
            mix = plan(self.mix, self.augment.views.seed, shard, sample["__key__"], drawn, position, len(samples))
            sample["__mix__"] = mix
            sample["__partner__"] = samples[mix.partner] if mix.partner >= 0 else None
            yield sample

    def _decode(self, sample: dict) -> dict:
        shard, key = url_name(sample["__url__"]), sample["__key__"]
        label = decode_label(sample, self.label_field, shard, self.need_labels)
        drawn = sample["__pass__"] % self.view_passes if self.view_passes else sample["__pass__"]
        image, view = self.augment(sample, self.image_fields, shard, drawn)
        out = {"image": image, "view": view.as_row(), "label": -1 if label is None else label,
               "key": (shard, key, sample["__pass__"]), "dropped": sample.get("__dropped__", 0)}
        if self.join is not None:
            # A numpy row in the stored precision (float16 logits): stacked once per batch in
            # `collate`, half the bytes between processes; the losses compute in float32.
            out["weak"] = sample["weak"]
            if "id" in sample:  # --ensemble learned-sample: the sample's row of the weights
                out["id"] = sample["id"]
            if "trust" in sample:  # --weight-by: the sample's (view's) stored statistic
                out["trust"] = float(sample["trust"][drawn] if self.view_passes else sample["trust"])
            if self.view_passes:
                out["weak"] = sample["weak"][drawn]
                check_replayed(sample["view_boxes"][drawn], view, shard, key, drawn, sample.get("__mix__"))
        if self.mix is not None:
            out.update(self._partner(sample, shard, drawn, out))
        return out

    def _partner(self, sample: dict, shard: str, drawn: int, out: dict) -> dict:
        """The partner's view of the same pass (pixels and row), its label and the mix (`mixing.MIX_FIELDS` at the
        output size); an unmixed sample is its own partner, with a row that mixes nothing."""
        mix, partner = sample["__mix__"], sample["__partner__"]
        if partner is None:
            image, label, row = out["image"], out["label"], out["view"]
        else:
            image, view = self.augment(partner, self.image_fields, shard, drawn)
            label = decode_label(partner, self.label_field, shard, self.need_labels)
            label, row = -1 if label is None else label, view.as_row()
        return {"partner_image": image, "partner_view": row, "partner_label": label, "mix": mix.row(*self.augment.size)}


def check_replayed(stored, view, shard: str, key: str, number: int, mix=None) -> None:
    """The view a replaying run draws must be the one the weak model saw (its box and flip, and a
    mixed view's partner and λ), or the stored output would label other pixels: a difference is a
    one-line error."""
    drawn = (view.top, view.left, view.height, view.width, int(view.flip))
    if tuple(int(v) for v in stored[:5]) != drawn:
        raise W2SError(f"shard {shard}, key {key!r}: view {number} of the store is (top, left, height, width, flip) "
                       f"{tuple(int(v) for v in stored[:5])}, this run draws {drawn}; the store's views were drawn by "
                       "another version of this tool or from other images: label the views again")
    if len(stored) > 5 and (mix is None or int(stored[5]) != mix.partner or abs(float(stored[6]) - mix.lam) > 1e-6):
        raise W2SError(f"shard {shard}, key {key!r}: view {number} of the store was mixed with the sample at position "
                       f"{int(stored[5])} (λ {float(stored[6]):.6f}), this run mixes it otherwise; train with the "
                       "store's --mixup, --cutmix, --mixup-prob and --mixup-switch-prob")


def collate(samples: list[dict]) -> dict:
    """A batch: "image" uint8 (N, 3, H, W) or "blobs" (N encoded images, for the device to decode),
    "view" (N, 12), "label" (N,), "weak" (N, C) in the stored dtype (N, M, C: an ensemble's members), "ids" (N,) under
    --ensemble learned-sample, "trust" (N,) under --weight-by,
    "dropped", "key"; or the
    `loader.LoadFailed` of a loading process that stopped at bad input."""
    for s in samples:
        if isinstance(s, LoadFailed):
            return s
    batch = {"view": torch.tensor([s["view"] for s in samples], dtype=torch.float32),
             "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
             "dropped": torch.tensor(sum(s["dropped"] for s in samples), dtype=torch.long),
             "key": [s["key"] for s in samples]}
    if "mix" in samples[0]:  # replayed mixing: each sample's partner view, label and mix
        batch.update(partner_image=torch.stack([s["partner_image"] for s in samples]),
                     partner_view=torch.tensor([s["partner_view"] for s in samples], dtype=torch.float32),
                     partner_label=torch.tensor([s["partner_label"] for s in samples], dtype=torch.long),
                     mix=torch.tensor([s["mix"] for s in samples], dtype=torch.float32))
    if isinstance(samples[0]["image"], bytes):
        batch["blobs"] = [s["image"] for s in samples]
    else:
        batch["image"] = torch.stack([s["image"] for s in samples])
    if "weak" in samples[0]:
        batch["weak"] = torch.from_numpy(np.stack([s["weak"] for s in samples]))
    if "id" in samples[0]:
        batch["ids"] = torch.tensor([s["id"] for s in samples], dtype=torch.long)
    if "trust" in samples[0]:
        batch["trust"] = torch.tensor([s["trust"] for s in samples], dtype=torch.float32)
    return batch


def train_loader(stream: TrainStream, workers: int, pin_memory: bool) -> DataLoader:
    """The run's batches from `workers` loading processes kept for the whole run (workers.py: how
    they start)."""
    return worker_loader(stream, workers, pin_memory=pin_memory, persistent=True, batch_size=stream.batch_size,
                         collate_fn=collate)
