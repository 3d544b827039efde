"""The training stream: shuffled shards split by rank and worker -> samples -> join -> decode ->
transform -> shuffle buffer -> batches, endlessly; the trainer takes a fixed number of steps
per epoch, so every DDP rank runs the same number of steps whatever its shards hold.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import W2SError
from .join import StoreJoin
from .shards import iter_samples, url_name
from .transforms import decode_image, decode_label


def shuffled(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of `size` samples (webdataset's idea), for streams too large to permute."""
    buf = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        i = rng.randrange(size)
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


class TrainStream(IterableDataset):
    def __init__(self, urls: list[str], *, transform, image_fields, label_field, need_labels: bool,
                 join: StoreJoin | None, seed: int, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000,
                 storage_options: dict | None = None):
        self.urls = list(urls)
        self.transform = transform
        self.image_fields = tuple(image_fields)
        self.label_field = label_field
        self.need_labels = need_labels
        self.join = join
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.storage_options = storage_options

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        me, everyone = self.rank * workers + worker, self.world_size * workers
        rng = random.Random(self.seed * 1_000_003 + me)
        try:
            yield from shuffled(self._samples(me, everyone), self.shuffle_buffer, rng)
        except W2SError as exc:
            yield {"error": str(exc)}

    def _samples(self, me: int, everyone: int):
        for epoch in itertools.count():
            # The same shard order on every rank and worker, new each pass.
            order = list(self.urls)
            random.Random(self.seed + 7919 * epoch).shuffle(order)
            # Whole shards per worker when there are enough; otherwise every worker reads every
            # shard and keeps every `everyone`-th sample (small data sets, many workers).
            mine, stride = (order[me::everyone], None) if len(order) >= everyone else (order, everyone)
            for url in mine:
                stream = iter_samples(url, self.storage_options)
                if self.join is not None:
                    stream = self.join(stream)
                for n, sample in enumerate(stream):
                    if stride and n % stride != me:
                        continue
                    yield self._decode(sample, url_name(url))

    def _decode(self, sample: dict, shard: str) -> dict:
        label = decode_label(sample, self.label_field, shard, self.need_labels)
        out = {"image": self.transform(decode_image(sample, self.image_fields, shard)),
               "label": -1 if label is None else label, "key": (shard, sample["__key__"])}
        if self.join is not None:
            # A numpy row in the stored precision (float16 logits): stacked once per batch in
            # `collate`, half the bytes between processes; the losses compute in float32.
            out["weak"] = sample["weak"]
        return out


def collate(samples: list[dict]) -> dict:
    for s in samples:
        if "error" in s:
            return {"error": s["error"]}
    batch = {"image": torch.stack([s["image"] for s in samples]),
             "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
             "key": [s["key"] for s in samples]}
    if "weak" in samples[0]:
        batch["weak"] = torch.from_numpy(np.stack([s["weak"] for s in samples]))
    return batch


def train_loader(stream: TrainStream, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    kwargs = {"prefetch_factor": 4, "persistent_workers": True} if workers > 0 else {}
    return DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, **kwargs)
