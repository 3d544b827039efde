"""Stage one: run a weak timm model over WebDataset shards and write its outputs to a label store.

    w2s-pipe label --weak resnet18 --data imagenet

Under torchrun, rank r labels shards r, r+W, ...; each shard is written by one rank, and any rank
that finds every shard done writes the index. Re-running the same command labels only the
shards that have no completion marker.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from .. import __version__
from ..errors import W2SError
from ..pipeline import distributed
from ..pipeline.data.datasets import resolve_data
from ..pipeline.data.shards import describe_shards, fingerprint, shards_as_dicts
from ..pipeline.data.transforms import DECODERS
from ..pipeline.workspace import default_store_path
from ..storage.claims import ShardClaims
from ..storage.fsutil import absolute
from ..storage.writer import StoreWriter, identity_mismatch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class LabelConfig:
    weak: str | None
    data: str
    split: str | None = None
    labels: str | None = None  # store path or URL; default: <workspace>/stores/<data>-<split>-<weak>
    weak_checkpoint: str | None = None
    num_classes: int | None = None
    img_size: int | None = None
    batch_size: int = 256
    workers: int | None = None  # None: loader.default_workers()
    precision: str = "auto"  # auto: bf16 on GPU and on CPUs with native bf16, else fp32
    device: str = "auto"
    topk: int | None = None
    decode: str = "auto"  # gpu (nvJPEG, batched crops) where CUDA is, else cpu (libjpeg-turbo in workers); pil
    compile: bool = False
    overwrite: bool = False
    max_shards: int | None = None  # label at most this many shards per rank in this run
    on_bad_sample: str = "fail"  # or "skip": record bad samples (and unreadable shards) and go on
    workspace: str | None = None
    progress: bool = True

    def __post_init__(self):
        def bad(option, value, valid):
            raise W2SError(f"{option} {value!r} is invalid: {valid}")

        if not self.weak and not self.weak_checkpoint:
            raise W2SError("give --weak MODEL (a timm name or alias) or --weak-checkpoint PATH")
        if self.batch_size < 1:
            bad("--batch-size", self.batch_size, "must be at least 1")
        if self.workers is not None and self.workers < 0:
            bad("--workers", self.workers, "must be 0 or more")
        if self.precision not in PRECISIONS:
            bad("--precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        if self.topk is not None and self.topk < 1:
            bad("--topk", self.topk, "must be at least 1")
        if self.img_size is not None and self.img_size < 8:
            bad("--img-size", self.img_size, "must be at least 8 pixels")
        if self.max_shards is not None and self.max_shards < 1:
            bad("--max-shards", self.max_shards, "must be at least 1")
        if self.on_bad_sample not in ("fail", "skip"):
            bad("--on-bad-sample", self.on_bad_sample, "choose fail or skip")
        if self.decode not in ("auto", *DECODERS):
            bad("--decode", self.decode, f"choose one of auto, {', '.join(DECODERS)}")


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


def run_label(cfg: LabelConfig) -> LabelResult:
    import torch

    from ..pipeline.data.loader import ShardBatches, default_workers, label_loader
    from ..pipeline.models import load_model
    from ..pipeline.stats import unstorable_rows, weak_outputs
    from ..pipeline.data.transforms import DeviceNormalize, Preprocess, TensorGeometry, check_decoder

    info = distributed.dist_info()
    device = distributed.pick_device(cfg.device, info.local_rank)
    info = distributed.init_distributed(device)
    try:
        source = resolve_data(cfg.data, cfg.split, workspace=cfg.workspace, num_classes=cfg.num_classes)
        loaded = load_model(cfg.weak, checkpoint=cfg.weak_checkpoint, num_classes=source.num_classes, img_size=cfg.img_size)
        num_classes = source.num_classes or loaded.num_classes
        if num_classes < 2:
            raise W2SError(f"the weak model has {num_classes} output; labelling needs at least 2 classes")
        if cfg.topk is not None and cfg.topk >= num_classes:
            raise W2SError(f"--topk {cfg.topk} must be smaller than the number of classes ({num_classes})")
        precision = distributed.resolve_precision(cfg.precision, device)
        # A literal pattern's store is named after its manifest's data set where there is one
        # (imagenet-3f9a0c1e), with the pattern's hash, so two patterns never share a default store.
        data_name = source.name if source.name != "shards" else \
            f"{source.dataset or 'shards'}-{hashlib.sha1(source.pattern.encode()).hexdigest()[:8]}"
        url = absolute(cfg.labels or default_store_path(cfg.workspace, data_name, source.split, loaded.name, cfg.topk))
        existing = None if cfg.overwrite else existing_store(url)  # a damaged one is a one-line error here
        decoder = resolve_label_decoder(cfg.decode, device, loaded.data_config, existing)
        check_decoder(decoder, loaded.data_config)
        if decoder == "gpu" and device.type != "cuda":
            if cfg.decode == "auto":
                raise W2SError(f"store {url} was begun with --decode gpu, which needs a CUDA device: finish it on one, "
                               "or start it again with --overwrite")
            raise W2SError(f"--decode gpu needs a CUDA device, and this run uses {device}; use --decode cpu")

        if info.is_main:
            skip_bad = cfg.on_bad_sample == "skip"
            shards = describe_shards(list(source.urls), tolerate=skip_bad)
            empty = [s.url for s in shards if s.count == 0 and not s.error]
            if empty and not skip_bad:
                raise W2SError(f"shard {empty[0]} holds no samples (or pass --on-bad-sample skip)")
            if not any(s.count for s in shards):
                raise W2SError(f"no readable samples in {source.pattern}")
            capacity = max(s.count for s in shards)
            attrs = {
                "weak": {"model": loaded.name, "checkpoint": loaded.checkpoint, "checkpoint_sha256": loaded.checkpoint_sha256},
                "num_classes": num_classes,
                "class_names": list(source.class_names or loaded.class_names or []) or None,
                "preprocessing": {**loaded.data_config, "decode": decoder},
                "precision": precision,
                "data": {
                    "name": source.name,
                    "split": source.split,
                    "pattern": source.pattern,
                    "image_field": ";".join(source.image_fields),
                    "label_field": source.label_field,
                    "fingerprint": fingerprint(shards),
                    "shards": shards_as_dicts(shards),
                },
                "layout": {"capacity": capacity, "rows": capacity * len(shards), "topk": cfg.topk},
                "tool_version": __version__,
                "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
            }
            if existing is not None and existing.complete:
                # A finished store is checked, never written: not its index, nor its metadata.
                problem = identity_mismatch(existing.attrs, {"format": existing.attrs.get("format"), **attrs})
                if problem:
                    raise W2SError(f"store {url} was made by another job: {problem}; give another --labels PATH to "
                                   "keep both, or --overwrite to replace it")
                existing.check_rows()
                existing.check_index()
            else:
                writer = StoreWriter.create(url, attrs, overwrite=cfg.overwrite)
            distributed.barrier()
        else:
            distributed.barrier()
            if existing is None or not existing.complete:
                writer = StoreWriter(url)
        if existing is not None and existing.complete:
            return LabelResult(store=url, complete=True, samples=0, shards=0, shards_total=len(existing.shards),
                               samples_total=existing.num_samples, seconds=0.0, images_per_s=0.0, already_complete=True)

        done = writer.done_shards()
        todo = [i for i in range(info.rank, len(writer.shards), info.world_size) if i not in done]
        if cfg.max_shards:
            todo = todo[: cfg.max_shards]
        samples_todo = sum(writer.shards[i]["count"] for i in todo)

        model = loaded.model.to(device).eval()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if cfg.compile:
            model = torch.compile(model)
        dtype = distributed.autocast_dtype(precision)

        claims = ShardClaims(url, os.getpid())
        skipped_count = 0
        for i in [i for i in todo if writer.shards[i]["count"] == 0]:
            # Unreadable or empty (with --on-bad-sample skip): recorded whole, nothing to read.
            if claims.claim(i):
                reason = writer.shards[i].get("error") or "empty shard"
                writer.write_shard(i, [], None, _empty_outputs(writer), skipped=[{"key": None, "reason": reason}])
                claims.release(i)
                skipped_count += 1
        todo = [i for i in todo if writer.shards[i]["count"] > 0]
        dataset = ShardBatches(
            [(i, writer.shards[i]["url"]) for i in todo],
            prepare=Preprocess(loaded.data_config, decoder),
            batch_size=cfg.batch_size,
            image_fields=source.image_fields,
            label_field=source.label_field,
            label_required=source.label_required,
            claims=claims,
            skip_bad=cfg.on_bad_sample == "skip",
        )
        workers = cfg.workers if cfg.workers is not None else default_workers()
        loader = label_loader(dataset, min(workers, max(1, len(todo))) if workers else 0, device.type == "cuda")

        from tqdm import tqdm

        bar = tqdm(total=samples_todo, unit="img", disable=not (cfg.progress and info.is_main) or not todo,
                   desc=f"label {loaded.name}", dynamic_ncols=True)
        pending: dict[int, dict] = {}  # shard -> rows read back from the device so far
        dropped: dict[int, list] = {}  # shard -> samples the device decoder could not read (gpu, skip)
        writes: list[Future] = []
        normalize = DeviceNormalize(loaded.data_config, device)
        geometry = TensorGeometry(loaded.data_config) if decoder == "gpu" else None
        skip_bad = cfg.on_bad_sample == "skip"
        inflight = None  # the last batch's outputs, on their way to the host
        start = None
        labelled = labelled_elsewhere = written = 0  # shards another process claimed are not ours

        def land(batch) -> None:
            """Wait for a batch's outputs on the host, check them, and buffer them for its shard."""
            nonlocal labelled
            i, keys, labels, out, bad, done = batch
            if done is not None:
                done.synchronize()
            if bool(bad.any()):
                key = keys[int(bad.nonzero()[0, 0])]
                raise W2SError(
                    f"shard {writer.shards[i]['name']}, key {key!r}: the weak model's logits are not finite or exceed "
                    f"float16's range; nothing was stored for this shard (try --precision fp32, or check the checkpoint)"
                )
            buf = pending.setdefault(i, {"keys": [], "labels": [], "out": []})
            buf["keys"].extend(keys)
            buf["labels"].append(labels)
            buf["out"].append({k: v.numpy() for k, v in out.items()})
            labelled += len(keys)
            bar.update(len(keys))

        with ThreadPoolExecutor(max_workers=1) as io_pool, torch.inference_mode():
            for item in loader if todo else ():
                if "error" in item:
                    raise W2SError(item["error"])
                i = item["shard"]
                claims.renew()  # the lease other hosts see on the shards this run is labelling
                if item.get("claimed_elsewhere"):
                    labelled_elsewhere += writer.shards[i]["count"]
                    bar.total = samples_todo - labelled_elsewhere
                    continue
                if item.get("end"):
                    if inflight is not None:
                        land(inflight)
                        inflight = None
                    written += 1
                    lost = dropped.pop(i, [])  # read by the worker, undecodable on the device
                    skipped = item["skipped"] + lost
                    skipped_count += len(skipped)
                    bar.update(len(skipped))
                    count = item["count"] - len(lost)
                    writes.append(io_pool.submit(_write_shard, writer, claims, i, pending.pop(i, None), count, skipped))
                    _raise_failed(writes)
                    continue
                if start is None:
                    start = time.perf_counter()
                if "blobs" in item:
                    images, keys, labels, bad = decode_on_device(item, geometry, device, writer.shards[i]["name"], skip_bad)
                    dropped.setdefault(i, []).extend(bad)
                    if images is None:
                        continue
                else:
                    images, keys, labels = item["images"], item["keys"], item["labels"]
                x = normalize(images)
                with torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32"):
                    logits = model(x)
                # Outputs go to the host asynchronously; the batch before lands meanwhile, so the
                # device always has the next batch queued (one wait per batch, no other sync).
                on_device = {"bad": unstorable_rows(logits), **weak_outputs(logits, cfg.topk)}
                on_host = {k: v.to("cpu", non_blocking=True) for k, v in on_device.items()}
                done = None
                if device.type == "cuda":
                    done = torch.cuda.Event()
                    done.record()
                batch = (i, keys, None if labels is None else labels.numpy(), on_host, on_host.pop("bad"), done)
                if inflight is not None:
                    land(inflight)
                inflight = batch
            if inflight is not None:
                land(inflight)
            for f in writes:
                f.result()
        bar.close()
        seconds = time.perf_counter() - start if start is not None else 0.0
        complete = writer.finalize()
        distributed.barrier()
        if info.is_main and not complete:
            complete = writer.finalize()
        return LabelResult(
            store=url,
            claimed_elsewhere=[] if complete else claims.held_by_others(writer.done_shards()),
            skipped=skipped_count,
            complete=complete,
            samples=labelled,
            shards=written,
            shards_total=len(writer.shards),
            samples_total=sum(s["count"] for s in writer.shards),
            seconds=seconds,
            images_per_s=labelled / seconds if seconds > 0 else 0.0,
        )
    finally:
        distributed.shutdown()


def existing_store(url: str):
    """The store already at `url` (opened and its metadata checked), or None where there is none yet,
    or only a creation cut short (a group without attributes, which `StoreWriter.create` rebuilds).
    Anything else there that is not a readable store is a one-line error naming the file."""
    import zarr

    from ..storage import open_store
    from ..storage.fsutil import get_fs, join
    from ..storage.writer import _zarr_store

    fs, path = get_fs(url)
    if not fs.exists(join(path, "zarr.json")):
        return None
    try:
        return open_store(url)
    except W2SError:
        try:
            if not dict(zarr.open_group(store=_zarr_store(url, None, True), mode="r", use_consolidated=False).attrs):
                return None
        except Exception:  # the store's own error below says what is wrong
            pass
        raise


def resolve_label_decoder(decoder: str, device, data_config: dict, existing=None) -> str:
    """`auto`: the decoder the `existing` store began with (a store is finished with the decoder it
    began with), else gpu where there is a CUDA device and the crop is a plain box, else cpu."""
    if decoder != "auto":
        return decoder
    if existing is not None:
        from ..storage import schema

        recorded = schema.preprocessing(existing.attrs).get("decode")
        if recorded:
            return recorded
    from ..pipeline.data.augment import resolve_decoder

    decoder = resolve_decoder("auto", device)  # the same default as train's
    return "cpu" if decoder == "gpu" and data_config.get("crop_mode") == "border" else decoder


def decode_on_device(item: dict, geometry, device, shard: str, skip_bad: bool):
    """A batch of raw images from the loader, decoded and cropped on `device` (--decode gpu).

    Returns (images or None when none is left, keys, labels, skipped records). A bad image stops
    the run naming shard and key, or under skip is left out and recorded.
    """
    from ..pipeline.data.transforms import decode_batch

    keys, labels = item["keys"], item["labels"]
    images, bad = decode_batch(item["blobs"], geometry, device,
                               lambda i: f"shard {shard}, key {keys[i]!r}: cannot decode the image")
    if not bad:
        return images, keys, labels, []
    if not skip_bad:
        raise W2SError(f"{bad[min(bad)]} (or pass --on-bad-sample skip)")
    keep = [j for j in range(len(keys)) if j not in bad]
    skipped = [{"key": keys[j], "reason": bad[j].split(": ", 1)[-1]} for j in sorted(bad)]
    return images, [keys[j] for j in keep], None if labels is None else labels[keep], skipped


def _raise_failed(writes: list[Future]) -> None:
    for f in writes:
        if f.done() and f.exception() is not None:
            f.result()


def _empty_outputs(writer: StoreWriter) -> dict[str, np.ndarray]:
    return {name: np.zeros((0, *shape), dtype=dtype) for name, (dtype, shape) in writer.arrays.items()}


def _write_shard(writer: StoreWriter, claims, index: int, buf: dict | None, count: int, skipped: list) -> None:
    if buf is None:  # every sample of the shard was skipped as bad
        buf = {"keys": [], "labels": [None], "out": [_empty_outputs(writer)]}
    if len(buf["keys"]) != count:
        raise RuntimeError(f"shard {index}: {len(buf['keys'])} rows buffered, {count} read")
    out = {k: np.concatenate([o[k] for o in buf["out"]]) for k in buf["out"][0]}
    labels = None if any(lab is None for lab in buf["labels"]) else np.concatenate(buf["labels"])
    writer.write_shard(index, buf["keys"], labels, out, skipped=skipped)
    claims.release(index)


__all__ = ["LabelConfig", "LabelResult", "run_label"]
