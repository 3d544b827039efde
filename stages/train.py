"""Stage two: train a strong timm model from the shards joined with the weak labels in a store.

    w2s-pipe train --strong vit_b16 --loss adaptconf --threshold 4.0 --epochs 100

Reads top to bottom: resolve the inputs (store, data, validation) and open the run; build the model,
optimizer and schedule; start or resume; then loop: the step's inputs from a loader batch,
`train_step`, a JSON line per logging step, and at each epoch's end an evaluation and an atomic
checkpoint; finish with every rank's weights checked equal. Under torchrun the model is wrapped in
DDP (gloo on CPU).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from .. import __version__
from ..errors import W2SError
from ..pipeline.config.choices import LOSSES
from ..pipeline.evaluation.accuracy import evaluate
from ..pipeline.image.decode import resolve_decoder
from ..pipeline.loaders.join import StoreJoin
from ..pipeline.loaders.train_stream import TrainStream, train_loader
from ..pipeline.loaders.workers import loading_processes
from ..pipeline.models.build import build_strong, head_parameters, resolve_model_name
from ..pipeline.models.checkpoint import Checkpoints
from ..pipeline.runtime import distributed, watchdog
from ..pipeline.runtime.workspace import slug
from ..pipeline.sources.shards import describe_shards
from ..pipeline.train.batch import StepInputs
from ..pipeline.train.ema import build_ema
from ..pipeline.train.inputs import Inputs, resolve_inputs
from ..pipeline.train.losses import objective as make_objective
from ..pipeline.train.optim import Schedule, ScheduleSpec, build_optimizer
from ..pipeline.train.resume import rank_state, resume, run_settings, seed_everything
from ..pipeline.train.runs import (
    EpochTotals,
    MetricsLog,
    MetricWindow,
    NonFiniteLoss,
    open_run,
    weights_digest,
    write_config,
)
from ..pipeline.views.mixing import BatchMix
from ..pipeline.views.params import TrainViews, view_seed
from ..pipeline.views.pixels import TrainAugment
from ..pipeline.weak.teacher import OnlineTeacher
from ..storage import open_store
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
    indices, or soft targets under mixup), "weak" its weak logits and "trust" (--weight-by) the statistic
    that weighs each sample's weak-label loss. Returns detached metrics."""
    watchdog.beat("the training step (under torchrun, with its gradients' all-reduce over every rank)")
    optimizer.zero_grad(set_to_none=True)
    per_batch = []
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with autocast or contextlib.nullcontext():
                logits = model(batch["image"])
            loss, parts = objective(logits, batch.get("weak"), batch.get("target"), progress, epoch, batch.get("trust"))
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
    with distributed.session(cfg.device, deterministic=cfg.deterministic,
                             stall_timeout=cfg.stall_timeout) as (info, device):
        # -- the inputs and the run --------------------------------------------------------------
        inputs = resolve_inputs(cfg)
        if info.is_main and (inputs.store_url or inputs.teacher is not None):
            print(f"weak labels: {_weak_labels(inputs)}", file=sys.stderr)
        strong = resolve_model_name(cfg.strong)
        precision = distributed.resolve_precision(cfg.precision, device)
        decoder = resolve_decoder(cfg.decode, device, loading_only=cfg.loading_only + (
            ("--mixup (replayed from a per-view store)",) if inputs.mix else ()))
        workers = loading_processes(cfg.workers)
        name = cfg.run or f"{slug(strong)}-{cfg.loss}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run_dir = distributed.on_main(lambda: open_run(name, cfg.workspace, resume=cfg.resume))  # the main's name
        log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), info.is_main)  # and TensorBoard events

        # -- model, optimizer, schedule -------------------------------------------------------------
        seed_everything(cfg.seed)  # the same initial weights on every rank
        model, data_config = _student(cfg, strong, inputs.num_classes, device)
        optimizer = build_optimizer(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, layer_decay=cfg.layer_decay)
        ema = build_ema(model, cfg.model_ema_decay) if cfg.model_ema else None
        averaged = ema.module if ema is not None else None
        accum = cfg.grad_accum  # batches per optimizer step; a step is one optimizer step
        steps_per_epoch = cfg.steps_per_epoch or max(1, _count(inputs) // (cfg.batch_size * accum * info.world_size))
        total_steps = steps_per_epoch * cfg.epochs
        schedule = Schedule(optimizer, _schedule_spec(cfg, steps_per_epoch))
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        settings = run_settings(cfg, strong=strong, data_source=inputs.record, precision_resolved=precision,
                                device_type=device.type, decode_resolved=decoder, workers_resolved=workers,
                                world_size=info.world_size, steps_per_epoch=steps_per_epoch)
        # From here each rank draws from its own generators (dropout masks, say); the data's
        # augmentation draws from none of them (views/params.py).
        seed_everything(view_seed(cfg.seed, "train", str(info.rank), 0))

        # -- start, or resume exactly where last.pt left off ----------------------------------------
        step, best_top1, sums = 0, None, {}
        if cfg.resume:
            step, best_top1, sums = resume(os.path.join(run_dir, "last.pt"), settings, run_dir, model=model,
                                           optimizer=optimizer, scaler=scaler, ema=averaged, rank=info.rank,
                                           device=device)
            log.truncate_after(step)
        elif info.is_main:
            write_config(run_dir, {**asdict(cfg), **settings, "num_classes": inputs.num_classes,
                                   "data_config": data_config, "tool_version": __version__})
        totals = EpochTotals(sums)
        log.open_board(step)
        net, no_sync = distributed.wrap_model(model, device, info, compile=cfg.compile)
        checkpoints = Checkpoints(run_dir, info.is_main, ema_decay=cfg.model_ema_decay, common=dict(
            model_name=strong, num_classes=inputs.num_classes, data_config={**data_config},
            class_names=inputs.class_names, precision=precision, config=asdict(cfg), settings=settings,
            data=inputs.record, tool_version=__version__))
        save = dict(optimizer=optimizer, scaler=scaler)

        # -- data, objective, validation ------------------------------------------------------------
        autocast = distributed.autocast(precision, device)
        batches, step_inputs = _data(cfg, inputs, data_config, decoder, workers, device, info, start_step=step * accum,
                                     autocast=autocast)
        objective = make_objective(cfg.loss, temperature=cfg.kd_temperature, threshold=cfg.threshold,
                                   warmup_frac=cfg.warmup_frac, ramp=cfg.ramp, epochs=cfg.epochs,
                                   beta_warmup_frac=cfg.beta_warmup_frac, gt_weight=cfg.gt_weight,
                                   kd_weight=cfg.kd_weight, smoothing=cfg.smoothing)
        validate = _validator(inputs.val, data_config, batch_size=cfg.batch_size, workers=workers, device=device,
                              precision=precision, decoder=decoder)

        # -- the loop ------------------------------------------------------------------------------
        net.train(not cfg.linear_probe)  # a linear probe's frozen backbone keeps its normalisation statistics
        bar = tqdm(total=total_steps, initial=step, unit="step", disable=not (cfg.progress and info.is_main),
                   desc=f"train {strong} ({cfg.loss})", dynamic_ncols=True)
        stop_at = min(total_steps, step + cfg.max_steps) if cfg.max_steps else total_steps
        window, started, val = MetricWindow(), time.perf_counter(), None
        while step < stop_at:
            watchdog.beat("the next batch from the loading processes", f"step {step + 1}, epoch {step // steps_per_epoch + 1}")
            micro = [step_inputs(next(batches), step=step, micro=i) for i in range(accum)]
            lr = schedule.apply(step)  # the rate this step trains with, and the one logged for it
            parts = train_step(net, micro, optimizer, objective, progress=step / total_steps,
                               epoch=step // steps_per_epoch, scaler=scaler, clip_grad=cfg.clip_grad,
                               autocast=autocast, no_sync=no_sync)
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            window.add(step, parts, sum(len(b["image"]) for b in micro) * info.world_size,
                       sum(b["dropped"] for b in micro))
            bar.update(1)
            epoch, epoch_end = step // steps_per_epoch, step % steps_per_epoch == 0
            if step % cfg.log_every == 0 or step == stop_at or epoch_end:
                bar.set_postfix(loss=f"{_log_window(window, totals, log, step, lr, info, steps_per_epoch):.3f}")
            if epoch_end:  # the epoch's evaluation, its record and its checkpoints
                distributed.sync_norm_stats((model, averaged), info.world_size)
                val, record = _validation(validate, model, averaged, step, epoch)
                if val and (best_top1 is None or val["top1"] > best_top1):
                    best_top1 = val["top1"]
                    checkpoints.save_best(model, step=step, epoch=epoch, best_top1=best_top1)
                log.write({**record, **(totals.epoch_figures(cfg.skip_missing) if LOSSES[cfg.loss].needs_weak else {})})
                totals.next_epoch()
                checkpoints.save_last(model, step=step, epoch=epoch, best_top1=best_top1, ema=averaged,
                                      ranks=_rank_states(model, device, totals, averaged), **save)
        bar.close()

        # -- finish ----------------------------------------------------------------------------------
        if step % steps_per_epoch:  # stopped mid-epoch by --max-steps
            ranks = _rank_states(model, device, totals, averaged)  # before the averaging
            distributed.sync_norm_stats((model, averaged), info.world_size)
            checkpoints.save_last(model, step=step, epoch=step // steps_per_epoch, best_top1=best_top1, ema=averaged,
                                  ranks=ranks, **save)
        finished = step >= total_steps
        if finished:
            log.write({"kind": "end", "step": step, "epoch": cfg.epochs, "weights_sha256": _equal_weights(model),
                       "best_val_top1": best_top1, "seconds": time.perf_counter() - started,
                       **({"dropped_missing": totals.dropped_total} if cfg.skip_missing else {})})
        log.close()
        distributed.barrier()
        return TrainResult(run_dir, step, step // steps_per_epoch, finished, val["top1"] if val else None,
                           val["top5"] if val else None, best_top1, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
def _student(cfg: TrainConfig, strong: str, num_classes: int, device):
    """The strong model on `device`, and its evaluation data config (with --crop-pct: evaluation's
    geometry, saved with every checkpoint for `eval` and `label`). Under --linear-probe only the
    classifier trains."""
    model, data_config = build_strong(strong, num_classes, img_size=cfg.img_size, pretrained=cfg.pretrained,
                                      checkpoint=cfg.strong_checkpoint, drop_path=cfg.drop_path,
                                      head_init_std=cfg.head_init_std)
    if cfg.crop_pct:
        data_config = {**data_config, "crop_pct": cfg.crop_pct}
    model.to(device)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)  # before DDP, which keeps the layout it is given
    if cfg.linear_probe:
        head = set(head_parameters(model))
        for p in model.parameters():
            p.requires_grad_(p in head)
    return model, data_config


def _weak_labels(inputs: Inputs) -> str:
    """Where the weak labels come from, said once when a run starts."""
    if inputs.teacher is not None:
        return f"online teacher {inputs.teacher.name} ({inputs.teacher.checkpoint})"
    views = f"; its {inputs.view_passes} views replayed" if inputs.view_passes else ""
    return f"store {inputs.store_url} ({inputs.store_chosen}{views})"


def _schedule_spec(cfg: TrainConfig, steps_per_epoch: int) -> ScheduleSpec:
    return ScheduleSpec(cfg.sched, steps_per_epoch * cfg.epochs, warmup_steps=cfg.warmup_epochs * steps_per_epoch,
                        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                        decay_steps=(cfg.decay_epochs or max(1, cfg.epochs // 3)) * steps_per_epoch,
                        decay_rate=cfg.decay_rate)


def _data(cfg: TrainConfig, inputs: Inputs, data_config: dict, decoder: str, workers: int, device, info, *,
          start_step: int, autocast=None):
    """The endless batches of this rank (from the batch of `start_step` on: a resumed run skips
    what it trained on) and the callable that turns one into a step's inputs on the device (with
    the online teacher's logits as the weak labels, under --teacher)."""
    size = tuple(int(v) for v in data_config["input_size"][1:])
    views = TrainViews(cfg.seed, scale=(cfg.crop_scale, 1.0), hflip=cfg.hflip, reprob=cfg.reprob, size=size)
    augment = TrainAugment(data_config, views, decoder, color_jitter=cfg.color_jitter, auto_augment=cfg.aa)
    join = StoreJoin(inputs.store_url, skip_missing=cfg.skip_missing, keep=inputs.kept.masks if inputs.kept else None,
                     views=inputs.view_passes > 0, trust=cfg.weight_by, members=inputs.members,
                     ensemble=inputs.ensemble) if cfg.weak_from == "store" else None
    teacher = OnlineTeacher(inputs.teacher, data_config, device, autocast) if inputs.teacher is not None else None
    need_labels = cfg.loss == "gt" or cfg.gt_weight > 0
    stream = TrainStream(inputs.urls, augment=augment, image_fields=inputs.image_fields,
                         label_field=inputs.label_field, need_labels=need_labels, join=join, seed=cfg.seed,
                         rank=info.rank, world_size=info.world_size, shuffle_buffer=cfg.shuffle_buffer,
                         batch_size=cfg.batch_size, start_step=start_step, view_passes=inputs.view_passes,
                         mix=inputs.mix)
    batches = iter(train_loader(stream, workers, device.type == "cuda"))
    # timm's batch mixing, unless a per-view store's mixes are replayed, sample by sample (views/mixing.py)
    mixer = BatchMix(mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                     smoothing=cfg.smoothing, num_classes=inputs.num_classes,
                     seed=cfg.seed) if cfg.mixes and inputs.mix is None else None
    return batches, StepInputs(data_config, device, decoder=decoder, rank=info.rank,
                               need_labels=need_labels, reprob=cfg.reprob, mixer=mixer, teacher=teacher,
                               num_classes=inputs.num_classes, smoothing=cfg.smoothing)


def _log_window(window, totals, log, step: int, lr: float, info, steps_per_epoch: int) -> float:
    """The logging window's means as a metrics line (added to the epoch's totals); returns the mean
    loss. A non-finite loss stops the run naming its step."""
    try:
        flushed = window.flush(info.world_size)
    except NonFiniteLoss as bad:
        raise W2SError(f"{bad} (epoch {(bad.step - 1) // steps_per_epoch + 1}); lower --lr, set --clip-grad, "
                       "or use --precision fp32") from None
    means = flushed["means"]
    log.write({"kind": "step", "step": step, "epoch": (step - 1) // steps_per_epoch + 1, "lr": lr,
               "img_per_s": flushed["images"] / max(flushed["seconds"], 1e-9), **means})
    totals.add(flushed)
    return means["loss"]


def _validator(val, data_config: dict, **loading):
    """model -> {"top1", "top5", "samples"} on the validation shards `val`, or None without them."""
    if val is None:
        return None
    return lambda module: evaluate(module, list(val.urls), data_config, image_fields=val.image_fields,
                                   label_field=val.label_field, **loading)


def _validation(validate, model, averaged, step: int, epoch: int) -> tuple[dict | None, dict]:
    """The model's validation figures (None without validation) and the epoch record with them and
    the weight average's."""
    watchdog.beat("the epoch's evaluation, then its checkpoints (under torchrun, with every rank)")
    record = {"kind": "epoch", "step": step, "epoch": epoch}
    val = validate(model) if validate is not None else None
    if val:
        if averaged is not None:
            ema_val = validate(averaged)
            record.update(val_top1_ema=ema_val["top1"], val_top5_ema=ema_val["top5"])
        record.update(val_top1=val["top1"], val_top5=val["top5"])
    return val, record


def _rank_states(model, device, totals, averaged) -> list[dict]:
    """Every rank's own state for last.pt (a collective: all ranks call it)."""
    return distributed.all_gather(rank_state(model, device, totals.as_dict(), averaged))


def _equal_weights(model) -> list[str]:
    """Every rank's weights digest, checked equal: DDP that drifted apart is an error, not a result."""
    digests = distributed.all_gather(weights_digest(model))
    if len(set(digests)) != 1:
        raise W2SError(f"DDP ranks ended with different weights: {digests}")
    return digests


def _count(inputs: Inputs) -> int:
    """Training samples: those --select / --keep-frac keep, else the store's records, else the
    shards' manifest or headers."""
    if inputs.kept is not None:
        return inputs.kept.count
    if inputs.store_url:
        return open_store(inputs.store_url).num_samples
    return sum(s.count for s in describe_shards(inputs.urls))


__all__ = ["TrainConfig", "TrainResult", "run_train", "train_step"]
