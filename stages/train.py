"""Stage two: train a strong timm model from the shards joined with the weak labels in a store.

    w2s-pipe train --strong vit_b16 --loss adaptconf --threshold 4.0 --epochs 100

Reads top to bottom: resolve the inputs (store, data, validation), build the model, optimizer and
schedule, then loop: `train_step` per batch, a JSON line per logging step, evaluation and an
atomic checkpoint per epoch. Under torchrun the model is wrapped in DDP (gloo on CPU).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

from .. import __version__
from ..errors import W2SError
from ..pipeline import distributed
from ..pipeline.inputs import Inputs, resolve_inputs
from ..pipeline.losses import LOSSES
from ..pipeline.runs import MetricsLog, weights_digest
from ..pipeline.workspace import slug, workspace_dir

OPTIMIZERS = ("adamw", "sgd", "momentum", "adam", "lamb", "lion")
SCHEDULES = ("cosine", "step", "const")


@dataclass(frozen=True)
class TrainConfig:
    strong: str
    loss: str = "adaptconf"
    labels: str | None = None  # store; default: the workspace's most recent complete store
    data: str | None = None  # only to override the store's, or with --loss gt
    split: str | None = None
    val_data: str | None = None  # default: the data set's validation split
    val_split: str | None = None
    no_eval: bool = False
    img_size: int | None = None
    pretrained: bool = False
    strong_checkpoint: str | None = None
    linear_probe: bool = False
    threshold: float = 0.5  # adaptconf's tau; augconf's final alpha
    kd_temperature: float = 1.0
    warmup_frac: float = 0.2  # augconf's alpha ramp
    beta_warmup_frac: float = 0.0
    gt_weight: float = 0.0
    skip_missing: bool = False
    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: int = 0
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: samples // (world size * batch size)
    batch_size: int = 128
    workers: int | None = None
    precision: str = "auto"
    device: str = "auto"
    clip_grad: float | None = None
    seed: int = 0
    hflip: float = 0.5
    color_jitter: float = 0.0
    crop_scale: float = 0.08
    shuffle_buffer: int = 1000
    run: str | None = None  # run name (a directory under <workspace>/runs) or path
    resume: bool = False
    max_steps: int | None = None  # stop after this many steps in this invocation; --resume continues
    log_every: int = 20
    workspace: str | None = None
    progress: bool = True

    def __post_init__(self):
        def bad(option, value, valid):
            raise W2SError(f"{option} {value!r} is invalid: {valid}")

        if self.loss not in LOSSES:
            bad("--loss", self.loss, f"choose one of {', '.join(LOSSES)}")
        if self.opt not in OPTIMIZERS:
            bad("--opt", self.opt, f"choose one of {', '.join(OPTIMIZERS)}")
        if self.sched not in SCHEDULES:
            bad("--sched", self.sched, f"choose one of {', '.join(SCHEDULES)}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            bad("--precision", self.precision, "choose one of auto, bf16, fp16, fp32")
        for option, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                   ("--log-every", self.log_every, 1), ("--shuffle-buffer", self.shuffle_buffer, 1)):
            if value < low:
                bad(option, value, f"must be at least {low}")
        for option, value in (("--lr", self.lr), ("--threshold", self.threshold), ("--kd-temperature", self.kd_temperature)):
            if not value > 0:
                bad(option, value, "must be positive")
        for option, value in (("--warmup-frac", self.warmup_frac), ("--beta-warmup-frac", self.beta_warmup_frac),
                              ("--hflip", self.hflip), ("--crop-scale", self.crop_scale)):
            if not 0 <= value <= 1:
                bad(option, value, "must be between 0 and 1")
        if self.gt_weight < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            bad("--gt-weight/--weight-decay/--warmup-epochs", (self.gt_weight, self.weight_decay, self.warmup_epochs),
                "must not be negative")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            bad("--steps-per-epoch", self.steps_per_epoch, "must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            bad("--max-steps", self.max_steps, "must be at least 1")
        if self.pretrained and self.strong_checkpoint:
            raise W2SError("give --pretrained or --strong-checkpoint, not both")
        if self.resume and not self.run:
            raise W2SError("--resume needs --run-name NAME: the run to continue")
        if self.workers is not None and self.workers < 0:
            bad("--workers", self.workers, "must be 0 or more")

    @classmethod
    def tiny(cls, **overrides) -> "TrainConfig":
        """A seconds-long preset for tests and smoke runs: 32 px, small batches, two epochs."""
        base = dict(strong="test_resnet", img_size=32, batch_size=32, epochs=2, workers=0, log_every=2,
                    precision="fp32", shuffle_buffer=64, hflip=0.0, progress=False)
        return cls(**{**base, **overrides})


@dataclass
class TrainResult:
    run_dir: str
    step: int
    epoch: int
    finished: bool
    val_top1: float | None
    val_top5: float | None
    best_top1: float | None
    seconds: float


# ---------------------------------------------------------------------------------------------
def train_step(model, batch: dict, optimizer, objective, *, progress: float, scaler=None, clip_grad=None,
               autocast=None) -> dict:
    """One optimisation step on one batch (already on the device). Returns detached metrics."""
    import contextlib

    import torch

    with autocast or contextlib.nullcontext():
        logits = model(batch["image"])
    loss, parts = objective(logits, batch.get("weak"), batch["label"], progress)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
    if batch.get("weak") is not None:
        parts["agree"] = (logits.detach().argmax(1) == batch["weak"].argmax(1)).float().mean()
    return parts


# ---------------------------------------------------------------------------------------------
def run_train(cfg: TrainConfig) -> TrainResult:
    import numpy as np
    import timm.data
    import timm.optim
    import timm.scheduler
    import torch
    from tqdm import tqdm

    from ..pipeline.checkpoint import save_checkpoint
    from ..pipeline.join import StoreJoin
    from ..pipeline.loader import default_workers
    from ..pipeline.losses import objective as make_objective
    from ..pipeline.models import build_strong, head_parameters, resolve_model_name
    from ..pipeline.train_loader import TrainStream, train_loader
    from .evaluate import evaluate

    info = distributed.dist_info()
    device = distributed.pick_device(cfg.device, info.local_rank)
    info = distributed.init_distributed(device)
    try:
        inputs = resolve_inputs(cfg)
        strong = resolve_model_name(cfg.strong)
        precision = distributed.resolve_precision(cfg.precision, device)

        # -- run directory -------------------------------------------------------------------
        name = cfg.run or f"{slug(strong)}-{cfg.loss}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if info.world_size > 1:
            import torch.distributed as dist

            shared = [name]
            dist.broadcast_object_list(shared, src=0)
            name = shared[0]
        run_dir = name if os.path.sep in name else str(workspace_dir(cfg.workspace) / "runs" / name)
        last_path, best_path = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
        if cfg.resume and not os.path.exists(last_path):
            raise W2SError(f"--resume: run {run_dir} has no last.pt to continue from")
        if not cfg.resume and os.path.exists(os.path.join(run_dir, "config.json")):
            raise W2SError(f"run {run_dir} exists; pass --resume to continue it, or choose another --run-name")
        log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), info.is_main)

        # -- model, optimizer, schedule ------------------------------------------------------
        torch.manual_seed(cfg.seed)
        # timm's training transforms draw from Python's `random`; in-process loading (--workers 0)
        # would leave augmentation unseeded (loader workers are seeded by torch from the above).
        random.seed(cfg.seed * 1000 + info.rank)
        np.random.seed((cfg.seed * 1000 + info.rank) % 2**32)
        model, data_config = build_strong(strong, inputs.num_classes, img_size=cfg.img_size,
                                          pretrained=cfg.pretrained, checkpoint=cfg.strong_checkpoint)
        model.to(device)
        if cfg.linear_probe:
            head = {id(p) for p in head_parameters(model)}
            for p in model.parameters():
                p.requires_grad_(id(p) in head)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = timm.optim.create_optimizer_v2(params, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
        world_batch = cfg.batch_size * info.world_size
        samples = _count(inputs, cfg)
        steps_per_epoch = cfg.steps_per_epoch or max(1, samples // world_batch)
        total_steps = steps_per_epoch * cfg.epochs
        scheduler = None
        if cfg.sched != "const":
            scheduler, _ = timm.scheduler.create_scheduler_v2(
                optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_prefix=True,
                step_on_epochs=False, updates_per_epoch=steps_per_epoch, decay_epochs=max(1, cfg.epochs // 3))
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

        step, best_top1 = 0, None
        if cfg.resume:
            ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
            saved = ckpt.get("config", {})
            for field in ("strong", "loss", "epochs", "batch_size"):
                if saved.get(field) != getattr(cfg, field):
                    raise W2SError(f"--resume: run {run_dir} was started with {field}={saved.get(field)!r}, "
                                   f"this command has {getattr(cfg, field)!r}")
            if ckpt.get("data", {}).get("store_id") != inputs.record.get("store_id"):
                raise W2SError(f"--resume: run {run_dir} trained from another store than {inputs.store_url}")
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None and ckpt.get("scheduler"):
                scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            step, best_top1 = int(ckpt["step"]), ckpt.get("best_top1")
            log.truncate_after(step)
        elif info.is_main:
            os.makedirs(run_dir, exist_ok=True)
            config = {**asdict(cfg), "strong": strong, "precision_resolved": precision, "data_source": inputs.record,
                      "num_classes": inputs.num_classes, "steps_per_epoch": steps_per_epoch, "world_size": info.world_size,
                      "data_config": data_config, "tool_version": __version__}
            with open(os.path.join(run_dir, "config.json"), "w") as f:
                json.dump(config, f, indent=1)

        net = model
        if info.world_size > 1:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)

        # -- data ----------------------------------------------------------------------------
        transform = timm.data.create_transform(
            input_size=tuple(data_config["input_size"]), is_training=True, hflip=cfg.hflip,
            color_jitter=cfg.color_jitter, scale=(cfg.crop_scale, 1.0), interpolation=data_config["interpolation"],
            mean=tuple(data_config["mean"]), std=tuple(data_config["std"]))
        join = StoreJoin(inputs.store_url, skip_missing=cfg.skip_missing) if LOSSES[cfg.loss].needs_weak else None
        needs_labels = cfg.loss == "gt" or cfg.gt_weight > 0
        stream = TrainStream(inputs.urls, transform=transform, image_fields=inputs.image_fields,
                             label_field=inputs.label_field, need_labels=needs_labels, join=join,
                             seed=cfg.seed + step, rank=info.rank, world_size=info.world_size,
                             shuffle_buffer=cfg.shuffle_buffer)
        workers = cfg.workers if cfg.workers is not None else default_workers()
        batches = iter(train_loader(stream, cfg.batch_size, workers, device.type == "cuda"))
        objective = make_objective(cfg.loss, temperature=cfg.kd_temperature, threshold=cfg.threshold,
                                   warmup_frac=cfg.warmup_frac, beta_warmup_frac=cfg.beta_warmup_frac,
                                   gt_weight=cfg.gt_weight)
        autocast = torch.autocast(device_type=device.type, dtype=distributed.autocast_dtype(precision),
                                  enabled=precision != "fp32")

        def sync_norm_stats():
            # DDP keeps parameters equal, but each rank's BatchNorm running statistics follow its own
            # batches: average them so that every rank evaluates and saves the same model.
            if info.world_size > 1:
                import timm.utils

                timm.utils.distribute_bn(model, info.world_size, reduce=True)

        def evaluate_now():
            if inputs.val is None:
                return None
            return evaluate(model, list(inputs.val.urls), data_config, image_fields=inputs.val.image_fields,
                            label_field=inputs.val.label_field, batch_size=cfg.batch_size, workers=workers,
                            device=device, precision=precision)

        def checkpoint(path, epoch):
            if info.is_main:
                save_checkpoint(
                    path, model.state_dict(), model_name=strong, num_classes=inputs.num_classes,
                    data_config={**data_config}, class_names=inputs.class_names,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler else None,
                    scaler=scaler.state_dict() if scaler else None, step=step, epoch=epoch, best_top1=best_top1,
                    config=asdict(cfg), data=inputs.record, tool_version=__version__)

        # -- the loop ------------------------------------------------------------------------
        net.train()
        if cfg.linear_probe:
            net.eval()  # a frozen backbone keeps its normalisation statistics
        bar = tqdm(total=total_steps, initial=step, unit="step", disable=not (cfg.progress and info.is_main),
                   desc=f"train {strong} ({cfg.loss})", dynamic_ncols=True)
        stop_at = min(total_steps, step + cfg.max_steps) if cfg.max_steps else total_steps
        window, window_steps, window_start, window_images = {}, 0, time.perf_counter(), 0
        started = time.perf_counter()
        result_val = None
        epoch_agree, epoch_steps = 0.0, 0
        while step < stop_at:
            batch = next(batches)
            if "error" in batch:
                raise W2SError(batch["error"])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "key"}
            if device.type == "cuda":
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            parts = train_step(net, batch, optimizer, objective, progress=step / total_steps, scaler=scaler,
                               clip_grad=cfg.clip_grad, autocast=autocast)
            step += 1
            # One device-to-host copy per step for all the metrics (loss first).
            values = dict(zip(parts, torch.stack([v.float().reshape(()) for v in parts.values()]).tolist()))
            if not math.isfinite(values["loss"]):
                raise W2SError(f"the loss is {values['loss']} at step {step} (epoch {(step - 1) // steps_per_epoch + 1}); "
                               "lower --lr, set --clip-grad, or use --precision fp32")
            if scheduler is not None:
                scheduler.step_update(num_updates=step)
            for k, v in values.items():
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            window_images += len(batch["image"]) * info.world_size
            if "agree" in values:
                epoch_agree += values["agree"]
            epoch_steps += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == stop_at:
                elapsed = time.perf_counter() - window_start
                record = {"kind": "step", "step": step, "epoch": (step - 1) // steps_per_epoch + 1,
                          "lr": optimizer.param_groups[0]["lr"], "img_per_s": window_images / max(elapsed, 1e-9),
                          **{k: v / window_steps for k, v in window.items()}}
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                window, window_steps, window_start, window_images = {}, 0, time.perf_counter(), 0
            if step % steps_per_epoch == 0:
                epoch = step // steps_per_epoch
                sync_norm_stats()
                result_val = evaluate_now()
                record = {"kind": "epoch", "step": step, "epoch": epoch}
                if result_val:
                    record.update(val_top1=result_val["top1"], val_top5=result_val["top5"])
                    if best_top1 is None or result_val["top1"] > best_top1:
                        best_top1 = result_val["top1"]
                        checkpoint(best_path, epoch)
                if epoch_steps and join is not None:
                    record["train_agree"] = epoch_agree / epoch_steps
                epoch_agree, epoch_steps = 0.0, 0
                log.write(record)
                checkpoint(last_path, epoch)
        bar.close()
        if step % steps_per_epoch:  # stopped mid-epoch by --max-steps
            sync_norm_stats()
            checkpoint(last_path, step // steps_per_epoch)
        finished = step >= total_steps
        if finished:
            digest = weights_digest(model)
            digests = [digest]
            if info.world_size > 1:
                import torch.distributed as dist

                digests = [None] * info.world_size
                dist.all_gather_object(digests, digest)
                if len(set(digests)) != 1:
                    raise W2SError(f"DDP ranks ended with different weights: {digests}")
            log.write({"kind": "end", "step": step, "epoch": cfg.epochs, "weights_sha256": digests,
                       "best_val_top1": best_top1, "seconds": time.perf_counter() - started})
        distributed.barrier()
        return TrainResult(run_dir, step, step // steps_per_epoch, finished,
                           result_val["top1"] if result_val else None, result_val["top5"] if result_val else None,
                           best_top1, time.perf_counter() - started)
    finally:
        distributed.shutdown()


def _count(inputs: Inputs, cfg: TrainConfig) -> int:
    """Training samples: from the store's records, else from the shards' manifest or headers."""
    if inputs.store_url:
        from ..storage.reader import open_store

        return open_store(inputs.store_url).num_samples
    from ..pipeline.shards import describe_shards

    return sum(s.count for s in describe_shards(inputs.urls))


__all__ = ["TrainConfig", "TrainResult", "run_train", "train_step"]
