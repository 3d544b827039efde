"""The labelling loader: worker processes turn whole shards into batches of uint8 crops (or, for
`--decode gpu`, of raw image bytes that the main process decodes on the device).

Each batch holds samples of one shard only, in the shard's order, so the writer can fill a
shard's contiguous rows without sorting. A shard ends with an `end` item carrying its count.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ...errors import W2SError
from .shards import iter_samples, url_name
from .transforms import decode_label


class ShardBatches(IterableDataset):
    def __init__(self, shards: list[tuple[int, str]], *, prepare, batch_size: int, image_fields, label_field,
                 label_required: bool = False, storage_options: dict | None = None, claims=None,
                 skip_bad: bool = False):
        self.shards = shards  # (position in the data source, url)
        self.prepare = prepare  # transforms.Preprocess: sample -> uint8 crop (or raw bytes, for GPU decoding)
        self.batch_size = batch_size
        self.image_fields = tuple(image_fields)
        self.label_field = label_field
        self.label_required = label_required
        self.storage_options = storage_options
        self.claims = claims  # storage.claims.ShardClaims: skip shards another process is labelling
        self.skip_bad = skip_bad  # record bad samples and go on, instead of stopping

    def __iter__(self):
        info = get_worker_info()
        mine = self.shards[info.id :: info.num_workers] if info else self.shards
        for position, url in mine:
            if self.claims is not None and not self.claims.claim(position):
                yield {"shard": position, "claimed_elsewhere": True}
                continue
            try:
                yield from self._shard(position, url)
            except W2SError as exc:
                # Passed as data, not raised: the main process reports it on one line.
                yield {"error": str(exc)}
                return

    def _shard(self, position: int, url: str):
        name = url_name(url)
        images, keys, labels = [], [], []
        count, seen, skipped = 0, set(), []
        for sample in iter_samples(url, self.storage_options):
            key = sample["__key__"]
            try:
                if key in seen:
                    raise W2SError(f"shard {name}, key {key!r}: appears more than once in the shard")
                seen.add(key)
                image = self.prepare(sample, self.image_fields, name)
                label = decode_label(sample, self.label_field, name, self.label_required)
            except W2SError as exc:
                if not self.skip_bad:
                    raise W2SError(f"{exc} (or pass --on-bad-sample skip)") from None
                skipped.append({"key": key, "reason": str(exc).split(": ", 1)[-1]})
                continue
            images.append(image)
            keys.append(key)
            labels.append(label)
            if len(images) == self.batch_size:
                yield self._batch(position, count, images, keys, labels)
                count += len(images)
                images, keys, labels = [], [], []
        if images:
            yield self._batch(position, count, images, keys, labels)
            count += len(images)
        yield {"shard": position, "end": True, "count": count, "skipped": skipped}

    def _batch(self, position, start, images, keys, labels):
        has_labels = all(label is not None for label in labels)
        raw = self.prepare.decoder == "gpu"  # bytes, decoded on the device by the main process
        return {
            "shard": position,
            "start": start,
            "blobs" if raw else "images": images if raw else torch.stack(images),
            "keys": keys,
            "labels": torch.tensor(labels, dtype=torch.int32) if has_labels else None,
        }


def default_workers() -> int:
    """One loading process per spare core of this process's share of the machine: cores divided by
    the processes torchrun started on this node, less one for the process itself. No cap: on an
    H100 machine's 16 cores, 15 loading processes labelled 3,270 img/s against 2,463 with 8
    (`--decode cpu`, resnet18; issue 12's measurement)."""
    import os

    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, (os.cpu_count() or 2) // per_node - 1)


def die_with_parent(_worker_id: int = 0) -> None:
    """A loading process's first act: end when the process that started it ends, however it ended
    (SIGKILL included), through Linux's PR_SET_PDEATHSIG. Without it a killed `label` left its
    loading processes running (torch's own watchdog only looks between batches). Elsewhere a no-op."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent ended before the call above
        os._exit(0)


def label_loader(dataset: ShardBatches, workers: int, pin_memory: bool) -> DataLoader:
    kwargs = {"prefetch_factor": 4, "persistent_workers": False, "worker_init_fn": die_with_parent} if workers > 0 else {}
    # An own generator, so that evaluating inside a training run draws nothing from the run's.
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator(), **kwargs)
