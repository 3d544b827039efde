"""Stage two: train a strong timm model from the shards joined with the weak labels in a store.

    w2s-pipe train --strong vit_b16 --loss adaptconf --threshold 4.0 --epochs 100

Reads top to bottom: resolve the inputs (store, data, validation), build the model, optimizer and
schedule, then loop: `train_step` per batch, a JSON line per logging step, evaluation and an
atomic checkpoint per epoch. Under torchrun the model is wrapped in DDP (gloo on CPU).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

from .. import __version__
from ..errors import W2SError
from ..pipeline import distributed
from ..pipeline.data.inputs import Inputs, resolve_inputs
from ..pipeline.train.losses import LOSSES
from ..pipeline.train.resume import INVOCATION_ONLY
from ..pipeline.train.runs import MetricsLog, weights_digest
from ..pipeline.workspace import slug, workspace_dir
from .train_config import TrainConfig


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
def train_step(model, batches: list[dict], optimizer, objective, *, progress: float, epoch: int = 0, scaler=None,
               clip_grad=None, autocast=None, no_sync=None) -> dict:
    """One optimisation step on one or more batches (already on the device): each batch's loss is
    divided by their number and its gradient added (gradient accumulation); under DDP `no_sync`
    skips the all-reduce of every batch but the last. A batch's "target" is its ground truth (class
    indices, or soft targets under mixup) and "weak" its weak logits. Returns detached metrics."""
    import contextlib

    import torch

    optimizer.zero_grad(set_to_none=True)
    per_batch = []
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with autocast or contextlib.nullcontext():
                logits = model(batch["image"])
            loss, parts = objective(logits, batch.get("weak"), batch.get("target"), progress, epoch)
            loss = loss / len(batches) if len(batches) > 1 else loss
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if batch.get("weak") is not None:
            parts["agree"] = (logits.detach().argmax(1) == batch["weak"].argmax(1)).float().mean()
        per_batch.append(parts)
    if scaler is not None:
        if clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
    if len(per_batch) == 1:
        return per_batch[0]
    return {name: sum(p[name] for p in per_batch) / len(per_batch) for name in per_batch[0]}


# ---------------------------------------------------------------------------------------------
def run_train(cfg: TrainConfig) -> TrainResult:
    info = distributed.dist_info()
    device = distributed.pick_device(cfg.device, info.local_rank)
    with distributed.deterministic_mode(cfg.deterministic):
        info = distributed.init_distributed(device)
        try:
            return _train(cfg, info, device)
        except RuntimeError as exc:
            if cfg.deterministic and "does not have a deterministic implementation" in str(exc):
                op = str(exc).split(" does not have", 1)[0].strip()
                raise W2SError(f"--deterministic: {op} has no deterministic kernel on {device}, so this model cannot "
                               "train deterministically there; drop --deterministic (runs then differ slightly)") from None
            raise
        finally:
            distributed.shutdown()


def _train(cfg: TrainConfig, info, device) -> TrainResult:
    import torch
    from tqdm import tqdm

    from ..pipeline.data.augment import DeviceAugment, TrainAugment, resolve_decoder
    from ..pipeline.data.crops import erase_where
    from ..pipeline.data.join import StoreJoin
    from ..pipeline.data.loader import default_workers
    from ..pipeline.data.train_loader import TrainStream, train_loader
    from ..pipeline.data.transforms import DeviceNormalize
    from ..pipeline.data.views import TrainViews, view_seed
    from ..pipeline.models import build_strong, head_parameters, resolve_model_name
    from ..pipeline.train.checkpoint import save_checkpoint
    from ..pipeline.train.ema import build_ema
    from ..pipeline.train.losses import objective as make_objective
    from ..pipeline.train.mixing import BatchMix
    from ..pipeline.train.optim import Schedule, ScheduleSpec, build_optimizer
    from ..pipeline.train.resume import (check_resumable, gather_rank_states, rank_state, restore_rank_state,
                                         seed_everything)
    from ..pipeline.train.runs import MetricWindow, NonFiniteLoss
    from .evaluate import evaluate

    inputs = resolve_inputs(cfg)
    if info.is_main and inputs.store_url:
        print(f"weak labels: store {inputs.store_url} ({inputs.store_chosen})", file=sys.stderr)
    strong = resolve_model_name(cfg.strong)
    precision = distributed.resolve_precision(cfg.precision, device)
    decoder = resolve_decoder(cfg.decode, device, per_sample_policies=bool(cfg.aa or cfg.color_jitter))
    workers = cfg.workers if cfg.workers is not None else default_workers()

    # -- run directory -----------------------------------------------------------------------
    name = cfg.run or f"{slug(strong)}-{cfg.loss}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if info.world_size > 1:
        import torch.distributed as dist

        shared = [name]
        dist.broadcast_object_list(shared, src=0)
        name = shared[0]
    run_dir = name if os.path.sep in name else str(workspace_dir(cfg.workspace) / "runs" / name)
    last_path, best_path = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    ema_path = os.path.join(run_dir, "ema.pt")
    if cfg.resume and not os.path.exists(last_path):
        raise W2SError(f"--resume: run {run_dir} has no last.pt to continue from")
    if not cfg.resume and os.path.exists(os.path.join(run_dir, "config.json")):
        raise W2SError(f"run {run_dir} exists; pass --resume to continue it, or choose another --run-name")
    log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), info.is_main)  # and TensorBoard events

    # -- model, optimizer, schedule ----------------------------------------------------------
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model, data_config = build_strong(strong, inputs.num_classes, img_size=cfg.img_size,
                                      pretrained=cfg.pretrained, checkpoint=cfg.strong_checkpoint,
                                      drop_path=cfg.drop_path, head_init_std=cfg.head_init_std)
    if cfg.crop_pct:  # evaluation's geometry, saved with every checkpoint for `eval` and `label`
        data_config = {**data_config, "crop_pct": cfg.crop_pct}
    model.to(device)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)  # before DDP, which keeps the layout it is given
    if cfg.linear_probe:
        head = {id(p) for p in head_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
    optimizer = build_optimizer(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                layer_decay=cfg.layer_decay)
    ema = build_ema(model, cfg.model_ema_decay) if cfg.model_ema else None
    accum = cfg.grad_accum  # batches per optimizer step; a step is one optimizer step
    steps_per_epoch = cfg.steps_per_epoch or max(1, _count(inputs) // (cfg.batch_size * accum * info.world_size))
    total_steps = steps_per_epoch * cfg.epochs
    schedule = Schedule(optimizer, ScheduleSpec(
        cfg.sched, total_steps, warmup_steps=cfg.warmup_epochs * steps_per_epoch, warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr, decay_steps=(cfg.decay_epochs or max(1, cfg.epochs // 3)) * steps_per_epoch,
        decay_rate=cfg.decay_rate))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    # Everything that decides what the run computes; --resume refuses any difference by name.
    settings = {**{k: v for k, v in asdict(cfg).items() if k not in INVOCATION_ONLY}, "strong": strong,
                "data_source": inputs.record, "precision_resolved": precision, "device_type": device.type,
                "decode_resolved": decoder, "workers_resolved": workers, "world_size": info.world_size,
                "steps_per_epoch": steps_per_epoch}
    # From here each rank draws from its own generators (dropout masks, say); the data's
    # augmentation draws from none of them (views.py).
    seed_everything(view_seed(cfg.seed, "train", str(info.rank), 0))

    step, best_top1, sums = 0, None, {"agree": 0.0, "agree_steps": 0, "dropped": 0, "dropped_total": 0}
    if cfg.resume:
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        check_resumable(ckpt.get("settings"), settings, run_dir)
        model.load_state_dict(ckpt["state_dict"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, best_top1 = int(ckpt["step"]), ckpt.get("best_top1")
        sums = restore_rank_state(model, ckpt["ranks"][info.rank], device, ema.module if ema is not None else None)
        log.truncate_after(step)
    elif info.is_main:
        os.makedirs(run_dir, exist_ok=True)
        config = {**asdict(cfg), **settings, "num_classes": inputs.num_classes, "data_config": data_config,
                  "tool_version": __version__}
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=1)

    log.open_board(step)
    averaged_module = ema.module if ema is not None else None
    net = model
    if info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    no_sync = net.no_sync if info.world_size > 1 else None
    if cfg.compile:
        net = torch.compile(net)

    # -- data --------------------------------------------------------------------------------
    size = tuple(int(v) for v in data_config["input_size"][1:])
    views = TrainViews(cfg.seed, scale=(cfg.crop_scale, 1.0), hflip=cfg.hflip, reprob=cfg.reprob, size=size)
    augment = TrainAugment(data_config, views, decoder, color_jitter=cfg.color_jitter, auto_augment=cfg.aa)
    on_device = DeviceAugment(data_config, device) if decoder == "gpu" else None
    normalize = DeviceNormalize(data_config, device)
    join = StoreJoin(inputs.store_url, skip_missing=cfg.skip_missing) if LOSSES[cfg.loss].needs_weak else None
    need_labels = cfg.loss == "gt" or cfg.gt_weight > 0
    stream = TrainStream(inputs.urls, augment=augment, image_fields=inputs.image_fields,
                         label_field=inputs.label_field, need_labels=need_labels, join=join,
                         seed=cfg.seed, rank=info.rank, world_size=info.world_size, shuffle_buffer=cfg.shuffle_buffer,
                         batch_size=cfg.batch_size, start_step=step * accum)
    batches = iter(train_loader(stream, workers, device.type == "cuda"))
    mixer = BatchMix(mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                     smoothing=cfg.smoothing, num_classes=inputs.num_classes, seed=cfg.seed) if cfg.mixes else None
    eraser = torch.Generator(device=device) if cfg.reprob else None
    objective = make_objective(cfg.loss, temperature=cfg.kd_temperature, threshold=cfg.threshold,
                               warmup_frac=cfg.warmup_frac, ramp=cfg.ramp, epochs=cfg.epochs,
                               beta_warmup_frac=cfg.beta_warmup_frac, gt_weight=cfg.gt_weight,
                               kd_weight=cfg.kd_weight, smoothing=cfg.smoothing)
    autocast = torch.autocast(device_type=device.type, dtype=distributed.autocast_dtype(precision),
                              enabled=precision != "fp32")

    def prepare(raw: dict, micro: int) -> dict:
        """A loader batch -> the step's inputs on the device: decoded (--decode gpu), normalised,
        erased (--reprob) and mixed (--mixup, --cutmix), each drawn from (seed, rank, step, micro)."""
        if "error" in raw:
            raise W2SError(raw["error"])
        dropped = int(raw.pop("dropped"))  # a CPU tensor: no device wait
        keys, blobs, views_cpu = raw.pop("key"), raw.pop("blobs", None), raw["view"]
        batch = {k: v.to(device, non_blocking=True) for k, v in raw.items()}
        # uint8 views from the loading processes, or bytes decoded and cropped here (--decode gpu)
        image = normalize(on_device(blobs, batch["view"], keys) if blobs is not None else batch["image"])
        if eraser is not None:
            eraser.manual_seed(view_seed(cfg.seed, "erase", f"{info.rank}.{micro}", step))
            image = erase_where(image, views_cpu, eraser)
        target, weak = (batch["label"] if need_labels else None), batch.get("weak")
        if mixer is not None:
            image, target, weak, _ = mixer(image, target, weak, rank=info.rank, step=step, micro=micro)
        return {"image": image, "target": target, "weak": weak, "dropped": dropped}

    def sync_norm_stats():
        # DDP keeps parameters equal, but each rank's BatchNorm running statistics follow its own
        # batches: average them so that every rank evaluates and saves the same model.
        if info.world_size > 1:
            import timm.utils

            for module in (model, averaged_module):
                if module is not None:
                    timm.utils.distribute_bn(module, info.world_size, reduce=True)

    def evaluate_now(which):
        if inputs.val is None:
            return None
        return evaluate(which, list(inputs.val.urls), data_config, image_fields=inputs.val.image_fields,
                        label_field=inputs.val.label_field, batch_size=cfg.batch_size, workers=workers,
                        device=device, precision=precision, decoder=decoder)

    def checkpoint(path, epoch, ranks=None):
        if info.is_main:
            common = dict(model_name=strong, num_classes=inputs.num_classes, data_config={**data_config},
                          class_names=inputs.class_names, step=step, epoch=epoch, precision=precision,
                          config=asdict(cfg), settings=settings, data=inputs.record, tool_version=__version__)
            save_checkpoint(path, model.state_dict(), optimizer=optimizer.state_dict(),
                            scaler=scaler.state_dict() if scaler else None, best_top1=best_top1,
                            ranks=ranks, ema=ema.module.state_dict() if ema is not None and path == last_path else None, **common)
            if ema is not None and path == last_path:
                save_checkpoint(ema_path, ema.module.state_dict(), averaged=cfg.model_ema_decay, **common)

    # -- the loop ----------------------------------------------------------------------------
    net.train()
    if cfg.linear_probe:
        net.eval()  # a frozen backbone keeps its normalisation statistics
    bar = tqdm(total=total_steps, initial=step, unit="step", disable=not (cfg.progress and info.is_main),
               desc=f"train {strong} ({cfg.loss})", dynamic_ncols=True)
    stop_at = min(total_steps, step + cfg.max_steps) if cfg.max_steps else total_steps
    window = MetricWindow()
    started = time.perf_counter()
    result_val = None
    while step < stop_at:
        micro = [prepare(next(batches), i) for i in range(accum)]
        lr = schedule.apply(step)  # the rate this step trains with, and the one logged for it
        parts = train_step(net, micro, optimizer, objective, progress=step / total_steps,
                           epoch=step // steps_per_epoch, scaler=scaler, clip_grad=cfg.clip_grad, autocast=autocast,
                           no_sync=no_sync)
        step += 1
        if ema is not None:
            ema.update(model, step=step)
        window.add(step, parts, sum(len(b["image"]) for b in micro) * info.world_size,
                   sum(b["dropped"] for b in micro))
        bar.update(1)
        epoch_end = step % steps_per_epoch == 0
        if step % cfg.log_every == 0 or step == stop_at or epoch_end:
            try:
                flushed = window.flush(info.world_size)
            except NonFiniteLoss as bad:
                raise W2SError(f"{bad} (epoch {(bad.step - 1) // steps_per_epoch + 1}); lower --lr, set --clip-grad, "
                               "or use --precision fp32") from None
            means = flushed["means"]
            log.write({"kind": "step", "step": step, "epoch": (step - 1) // steps_per_epoch + 1, "lr": lr,
                       "img_per_s": flushed["images"] / max(flushed["seconds"], 1e-9), **means})
            bar.set_postfix(loss=f"{means['loss']:.3f}")
            sums["agree"] += flushed["sums"].get("agree", 0.0)
            sums["agree_steps"] += flushed["steps"]
            sums["dropped"] += flushed["dropped"]
            sums["dropped_total"] += flushed["dropped"]
        if epoch_end:
            epoch = step // steps_per_epoch
            sync_norm_stats()
            result_val = evaluate_now(model)
            record = {"kind": "epoch", "step": step, "epoch": epoch}
            if ema is not None and result_val:
                averaged = evaluate_now(ema.module)
                record.update(val_top1_ema=averaged["top1"], val_top5_ema=averaged["top5"])
            if result_val:
                record.update(val_top1=result_val["top1"], val_top5=result_val["top5"])
                if best_top1 is None or result_val["top1"] > best_top1:
                    best_top1 = result_val["top1"]
                    checkpoint(best_path, epoch)
            if join is not None:
                record["train_agree"] = sums["agree"] / max(1, sums["agree_steps"])
                if cfg.skip_missing:
                    record["dropped_missing"] = sums["dropped"]
            sums.update(agree=0.0, agree_steps=0, dropped=0)
            log.write(record)
            checkpoint(last_path, epoch, gather_rank_states(rank_state(model, device, sums, averaged_module),
                                                            info.world_size))
    bar.close()
    if step % steps_per_epoch:  # stopped mid-epoch by --max-steps
        ranks = gather_rank_states(rank_state(model, device, sums, averaged_module), info.world_size)  # before the averaging
        sync_norm_stats()
        checkpoint(last_path, step // steps_per_epoch, ranks)
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
                   "best_val_top1": best_top1, "seconds": time.perf_counter() - started,
                   **({"dropped_missing": sums["dropped_total"]} if cfg.skip_missing else {})})
    log.close()
    distributed.barrier()
    return TrainResult(run_dir, step, step // steps_per_epoch, finished,
                       result_val["top1"] if result_val else None, result_val["top5"] if result_val else None,
                       best_top1, time.perf_counter() - started)


def _count(inputs: Inputs) -> int:
    """Training samples: from the store's records, else from the shards' manifest or headers."""
    if inputs.store_url:
        from ..storage.reader import open_store

        return open_store(inputs.store_url).num_samples
    from ..pipeline.data.shards import describe_shards

    return sum(s.count for s in describe_shards(inputs.urls))


__all__ = ["TrainConfig", "TrainResult", "run_train", "train_step"]
