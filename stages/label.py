"""Stage one: run a weak timm model over WebDataset shards and write its outputs to a label store.

    w2s-pipe label --weak resnet18 --data imagenet

Reads top to bottom: resolve the data, the weak model and the store; begin the store (or find it
finished: then it is checked and nothing is written); then for each batch the loader yields, the
labelling step (`labelling.weak_outputs`), its outputs landing on the host one batch late, and each
shard written as it ends. Under torchrun, rank r labels shards r, r+W, ...; each shard is written
by one process, and any process that finds every shard done writes the index. Re-running the same
command labels only the shards that have no completion marker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import os
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from .. import __version__
from ..errors import W2SError
from ..pipeline.config.options import parse_classes
from ..pipeline.image.decode import pixel_limited, resolve_decoder
from ..pipeline.image.preprocess import DeviceNormalize, Preprocess, TensorGeometry
from ..pipeline.loaders.shard_batches import (
    ImageBatch,
    ShardBatches,
    ShardEnd,
    ShardTaken,
    batch_images,
    events,
    label_loader,
)
from ..pipeline.loaders.workers import loading_processes
from ..pipeline.models.build import load_model
from ..pipeline.models.features import feature_width, pooled_features
from ..pipeline.runtime import distributed, watchdog
from ..pipeline.runtime.workspace import default_store_path
from ..pipeline.sources.datasets import resolve_data
from ..pipeline.sources.shards import describe_shards, fingerprint, shards_as_dicts
from ..pipeline.views.params import TrainViews
from ..pipeline.views.pixels import LabelViews
from ..pipeline.weak.labelling import Gathered, HostCopy, ShardWrites, view_inputs, weak_outputs
from ..storage import existing_store, open_store, schema
from ..storage.claims import ShardClaims
from ..storage.fsutil import absolute
from ..storage.writer import StoreWriter, begin_store
from .label_config import LabelConfig


@dataclass
class LabelResult:
    store: str
    complete: bool
    samples: int  # labelled by this process in this run
    shards: int  # labelled by this process in this run (not those another process claimed)
    shards_total: int
    samples_total: int
    seconds: float  # from the first batch to the last write
    images_per_s: float
    claimed_elsewhere: list = None  # live claims of other processes on unfinished shards
    skipped: int = 0  # bad samples (or unreadable shards) recorded and left out in this run
    already_complete: bool = False  # the store was finished before this run, which checked it and wrote nothing
    size_bytes: int | None = None  # the complete store's size
    kind: str = "store"  # or "feature store"

    def summary(self) -> list[str]:
        if self.already_complete:
            return [f"{self.kind} {self.store}: already complete ({self.samples_total} samples in {self.shards_total} shards; "
                    "its index and rows checked against what label wrote); nothing to do"]
        lines = [f"{'embedded' if self.kind != 'store' else 'labelled'} {self.samples} samples in {self.shards} shards at {self.images_per_s:.0f} img/s "
                 f"({self.seconds:.1f} s)"]
        if self.skipped:
            lines.append(f"skipped {self.skipped} bad samples or shards; see skipped.parquet in the store for keys and "
                         "reasons")
        if self.complete:
            size = self.size_bytes or 0
            lines.append(f"{self.kind} {self.store}: complete, {self.samples_total} samples, {self.shards_total} shards, "
                         f"{size / 1024:.0f} KiB ({size / max(1, self.samples_total):.0f} B/sample)")
        elif self.claimed_elsewhere:
            holders = sorted({f"pid {c['pid']} on {c['host']}" for c in self.claimed_elsewhere})
            lines.append(f"{self.kind} {self.store}: {len(self.claimed_elsewhere)} shards are being labelled by another "
                         f"process ({', '.join(holders)}); it will finish the store")
        else:
            lines.append(f"{self.kind} {self.store}: incomplete; re-run the same command to finish it")
        return lines


@pixel_limited
def run_label(cfg: LabelConfig) -> LabelResult:
    with distributed.session(cfg.device, stall_timeout=cfg.stall_timeout) as (info, device):
        # -- the data, the weak model and the store ----------------------------------------------
        source = resolve_data(cfg.data, cfg.split, workspace=cfg.workspace, num_classes=cfg.num_classes)
        loaded = load_model(cfg.weak, checkpoint=cfg.weak_checkpoint, num_classes=source.num_classes,
                            img_size=cfg.img_size)
        num_classes = _check_classes(source.num_classes or loaded.num_classes, cfg.topk, cfg.features)
        precision = distributed.resolve_precision(cfg.precision, device)
        url = store_url(cfg, source, loaded.name)
        # What is at `url` is looked at by the main process alone: another rank would race its creation.
        found = {}
        decoder = distributed.on_main(lambda: _store_so_far(cfg, url, device, loaded.data_config, found))
        existing = found.get("existing")

        # -- begin the store, or find it finished (decided once, by the main process) -----------
        writer = None
        if info.is_main:
            attrs = _store_attrs(cfg, source, loaded, num_classes, decoder, precision)
            writer = begin_store(url, attrs, existing, overwrite=cfg.overwrite)
        if distributed.broadcast(info.is_main and writer is None):
            finished = existing if info.is_main else open_store(url)
            return LabelResult(store=url, complete=True, samples=0, shards=0, shards_total=len(finished.shards),
                               samples_total=finished.num_samples, seconds=0.0, images_per_s=0.0, already_complete=True,
                               kind=finished.kind)
        writer = writer or StoreWriter(url)
        shards, names = writer.shards, [s["name"] for s in writer.shards]
        done = writer.done_shards()
        todo = [i for i in range(info.rank, len(shards), info.world_size) if i not in done][: cfg.max_shards]

        # -- the model and the loader --------------------------------------------------------------
        labelling = Labelling.of(cfg, loaded, device, decoder, precision, names)
        claims = ShardClaims(url, os.getpid())
        dataset = ShardBatches([(i, shards[i]["url"]) for i in todo if shards[i]["count"] > 0],
                               prepare=Preprocess(loaded.data_config, decoder), batch_size=cfg.batch_size,
                               image_fields=source.image_fields, label_field=source.label_field,
                               label_required=source.label_required, claims=claims, skip_bad=cfg.skip_bad,
                               views=_label_views(cfg, loaded.data_config, decoder))
        workers = loading_processes(cfg.workers)
        loader = label_loader(dataset, min(workers, max(1, len(dataset.shards))) if workers else 0,
                              device.type == "cuda")

        # -- the loop: label each batch, write each shard as it ends -------------------------------
        samples_todo = sum(shards[i]["count"] for i in todo)
        bar = tqdm(total=samples_todo, unit="img", disable=not (cfg.progress and info.is_main) or not todo,
                   desc=f"label {loaded.name}", dynamic_ncols=True)
        gathered = Gathered()  # each shard's landed rows, until it ends
        lost: dict[int, list] = {}  # shard -> samples the device decoder could not read (gpu, skip)
        copy = HostCopy(device, names, "the model's features" if cfg.features else None)  # landing one batch late
        start, written, taken, skipped = None, 0, 0, 0
        with ShardWrites(writer, claims) as writes, torch.inference_mode():
            skipped += _record_unreadable(writes, claims, [i for i in todo if shards[i]["count"] == 0])
            watchdog.beat("the first batch from the loading processes")
            for event in events(loader) if dataset.shards else ():
                claims.renew()  # the lease other hosts see on the shards this run is labelling
                if isinstance(event, ShardTaken):  # another process labels it
                    taken += shards[event.shard]["count"]
                    bar.total = samples_todo - taken
                elif isinstance(event, ShardEnd):
                    bar.update(gathered.add(copy.drain()))
                    unread = lost.pop(event.shard, [])  # read by a loading process, undecodable on the device
                    writes.submit(event.shard, gathered.pop(event.shard), event.count - len(unread),
                                  event.skipped + unread)
                    written, skipped = written + 1, skipped + len(event.skipped) + len(unread)
                    bar.update(len(event.skipped) + len(unread))
                elif isinstance(event, ImageBatch):
                    start = start or time.perf_counter()
                    bar.update(gathered.add(labelling(event, copy, lost)))
                watchdog.beat("the next batch from the loading processes", f"shard {names[event.shard]}")
            watchdog.beat("the store's last writes")
            bar.update(gathered.add(copy.drain()))
            writes.wait()
        bar.close()

        # -- finish: the index, once every shard is done ---------------------------------------------
        seconds = time.perf_counter() - start if start is not None else 0.0
        return _finish(writer, claims, info, LabelResult(
            store=url, complete=False, samples=gathered.rows, shards=written, shards_total=len(shards),
            samples_total=sum(s["count"] for s in shards), seconds=seconds, skipped=skipped,
            images_per_s=gathered.rows / seconds if seconds > 0 else 0.0,
            kind="feature store" if cfg.features else "store"))


@dataclass
class Labelling:
    """The labelling step of one batch: its images (decoded on the device under --decode gpu),
    normalised, through the weak model (and its views, with --views), pushed to the host copy."""

    model: torch.nn.Module
    normalize: DeviceNormalize
    geometry: TensorGeometry | None  # the eval crop's geometry, for --decode gpu
    autocast: object
    device: object
    names: list[str]  # the shards' names
    topk: int | None
    skip_bad: bool
    features: bool = False  # the model's pooled features, not its outputs (a feature store)

    @classmethod
    def of(cls, cfg: LabelConfig, loaded, device, decoder: str, precision: str, names: list[str]) -> "Labelling":
        model = loaded.model.to(device).eval()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if cfg.compile:
            model = torch.compile(model)
        return cls(model, DeviceNormalize(loaded.data_config, device),
                   TensorGeometry(loaded.data_config) if decoder == "gpu" else None,
                   distributed.autocast(precision, device), device, names, cfg.topk, cfg.skip_bad, cfg.features)

    def __call__(self, batch: ImageBatch, copy: HostCopy, lost: dict):
        """The rows that landed on the host (the batch before this one's); `lost` collects, per shard,
        the samples the device decoder could not read (skipped under --on-bad-sample skip)."""
        images, keys, labels, unread = batch_images(batch, self.geometry, self.device, self.names[batch.shard],
                                                    skip_bad=self.skip_bad, hint=" (or pass --on-bad-sample skip)")
        lost.setdefault(batch.shard, []).extend(unread)
        if images is None:
            return None
        if self.features:
            return copy.push(batch.shard, keys, labels, pooled_features(self.model, self.normalize(images),
                                                                        autocast=self.autocast))
        views, records = view_inputs(batch, self.normalize)
        outputs = weak_outputs(self.model, self.normalize(images), topk=self.topk, autocast=self.autocast, views=views)
        return copy.push(batch.shard, keys, labels, {**outputs, **records})


def _finish(writer: StoreWriter, claims: ShardClaims, info, result: LabelResult) -> LabelResult:
    """The store's index, written by the first process that finds every shard done (the main
    process after every rank is through); the result says whether the store is complete, and if not,
    which other processes still hold claims on its shards."""
    watchdog.beat("every rank to finish its shards")
    complete = writer.finalize()
    distributed.barrier()
    if info.is_main and not complete:
        complete = writer.finalize()
    return dataclasses.replace(
        result, complete=complete, claimed_elsewhere=[] if complete else claims.held_by_others(writer.done_shards()),
        size_bytes=open_store(result.store).size_bytes() if complete and info.is_main else None)


def _check_classes(num_classes: int, topk: int | None, features: bool = False) -> int:
    if features:  # a feature store keeps no outputs: the data set's classes are only recorded
        return num_classes
    if num_classes < 2:
        raise W2SError(f"the weak model has {num_classes} output; labelling needs at least 2 classes")
    if topk is not None and topk >= num_classes:
        raise W2SError(f"--topk {topk} must be smaller than the number of classes ({num_classes})", option="--topk")
    return num_classes


def store_url(cfg: LabelConfig, source, weak_name: str) -> str:
    """--labels, or the workspace's default store of this data, split and weak model. A literal
    pattern's store is named after its manifest's data set where there is one (imagenet-3f9a0c1e),
    with the pattern's hash, so two patterns never share a default store."""
    data_name = source.name if source.name != "shards" else \
        f"{source.dataset or 'shards'}-{hashlib.sha1(source.pattern.encode()).hexdigest()[:8]}"
    return absolute(cfg.labels or default_store_path(cfg.workspace, data_name, source.split, weak_name, cfg.topk,
                                                     cfg.views, features=cfg.features))


def label_decoder(requested: str, device, data_config: dict, existing, url: str, views: int = 0) -> str:
    """`auto`: the decoder the `existing` store began with (a store is finished with the decoder it
    began with), else gpu where there is a CUDA device, the crop is a plain box and there are no
    training views to crop in the loading processes (`--views`), else cpu."""
    begun = schema.preprocessing(existing.attrs).get("decode") if existing is not None else None
    if requested == "auto" and begun:
        if begun == "gpu" and device.type != "cuda":
            raise W2SError(f"store {url} was begun with --decode gpu, which needs a CUDA device: finish it on one, "
                           "or start it again with --overwrite")
        return begun
    return resolve_decoder(requested, device, loading_only=("--views",) if views else (),
                           border_crop=data_config.get("crop_mode") == "border")


def _specialist(loaded) -> dict:
    """{"classes": [...]} of a weak model trained on some classes only (`train --classes`), else {}."""
    classes = ((loaded.trained or {}).get("config") or {}).get("classes")
    return {"classes": list(parse_classes(classes))} if classes else {}


def _store_attrs(cfg: LabelConfig, source, loaded, num_classes: int, decoder: str, precision: str) -> dict:
    """The new store's attributes (storage.schema.store_attrs), with its shards described and
    checked: an empty shard is an error unless bad input is skipped."""
    shards = describe_shards(list(source.urls), tolerate=cfg.skip_bad)
    empty = [s.url for s in shards if s.count == 0 and not s.error]
    if empty and not cfg.skip_bad:
        raise W2SError(f"shard {empty[0]} holds no samples (or pass --on-bad-sample skip)")
    if not any(s.count for s in shards):
        raise W2SError(f"no readable samples in {source.pattern}")
    return schema.store_attrs(
        weak={"model": loaded.name, "checkpoint": loaded.checkpoint, "checkpoint_sha256": loaded.checkpoint_sha256,
              **_specialist(loaded)},
        num_classes=num_classes, class_names=source.class_names or loaded.class_names,
        preprocessing={**loaded.data_config, "decode": decoder}, precision=precision,
        data={"name": source.name, "split": source.split, "pattern": source.pattern,
              "image_field": ";".join(source.image_fields), "label_field": source.label_field},
        shards=shards_as_dicts(shards), fingerprint=fingerprint(shards), topk=cfg.topk, tool_version=__version__,
        config={k: v for k, v in asdict(cfg).items() if k not in ("progress", "stall_timeout")},  # what was computed
        features=feature_width(loaded.model) if cfg.features else 0,
        views=None if not cfg.views else {"k": cfg.views, "seed": cfg.seed, "recipe": cfg.recipe(TrainViews(0).ratio),
                                          "fingerprint": view_fingerprint(loaded.data_config, decoder)})


def _store_so_far(cfg: LabelConfig, url: str, device, data_config: dict, found: dict) -> str:
    """The store already at `url` (into `found["existing"]`; a damaged one is a one-line error) and
    the decoder this job uses with it (`label_decoder`)."""
    found["existing"] = None if cfg.overwrite else existing_store(url)
    return label_decoder(cfg.decode, device, data_config, found["existing"], url, views=cfg.views)


def _label_views(cfg: LabelConfig, data_config: dict, decoder: str):
    """The loading processes' per-view step of `--views K`: the views `train --seed S --crop-scale X
    --hflip P [--aa A] [--color-jitter J] [--reprob E] [--mixup M --cutmix C ...]` draws in passes 0..K-1, at the
    teacher's input size (None without --views)."""
    if not cfg.views:
        return None
    return LabelViews.from_recipe(cfg.recipe(TrainViews(0).ratio), cfg.seed, cfg.views, data_config, decoder)


def view_fingerprint(data_config: dict, decoder: str) -> dict:
    """What shapes a stored view's pixels besides its box and flip: the decoder, the teacher's input
    size and interpolation, and the versions of the libraries that decode and resize."""
    def version(package):
        try:
            return md.version(package)
        except md.PackageNotFoundError:
            return None

    return {"decode": decoder, "input_size": list(data_config["input_size"]),
            "interpolation": data_config.get("interpolation", "bilinear"),
            **{p: version(p) for p in ("torch", "torchvision", "timm", "pillow")}}


def _record_unreadable(writes, claims, positions: list[int]) -> int:
    """Shards with nothing to read (unreadable or empty, with --on-bad-sample skip), each recorded
    whole as skipped by the process that claims it. Returns how many this process recorded."""
    recorded = 0
    for i in positions:
        if claims.claim(i):
            shard = writes.writer.shards[i]
            writes.record_unreadable(i, shard.get("error") or "empty shard")
            recorded += 1
    return recorded


__all__ = ["LabelConfig", "LabelResult", "run_label"]
