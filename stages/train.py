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
from ..pipeline.evaluation.accuracy import evaluate
from ..pipeline.evaluation.predictions import predictions_file, write_predictions
from ..pipeline.image.decode import pixel_limited, resolve_decoder
from ..pipeline.loaders.join import StoreJoin, sample_ids
from ..pipeline.loaders.train_stream import TrainStream, train_loader
from ..pipeline.loaders.workers import loading_processes
from ..pipeline.losses.registry import loss_class
from ..pipeline.models.build import build_strong, head_parameters, resolve_model_name, seen_labels
from ..pipeline.models.checkpoint import Checkpoints
from ..pipeline.runtime import distributed, watchdog
from ..pipeline.runtime.workspace import slug
from ..pipeline.sources.shards import describe_shards, shard_labels
from ..pipeline.train.batch import StepInputs
from ..pipeline.train.ema import build_ema
from ..pipeline.train.inputs import Inputs, resolve_inputs
from ..pipeline.train.losses import objective as make_objective
from ..pipeline.train.optim import Schedule, ScheduleSpec, build_optimizer
from ..pipeline.train.probe import (
    ProbeBatches,
    ProbeInputs,
    default_val_features,
    embedded_input,
    feature_store,
    probe_steps,
    probe_validator,
    run_weights,
    training_rows,
    validation_rows,
)
from ..pipeline.train.resume import rank_state, resume, run_settings, seed_everything
from ..pipeline.train.runs import (
    EpochTotals,
    MetricsLog,
    MetricWindow,
    NonFiniteLoss,
    RunClaim,
    open_run,
    weights_digest,
    write_config,
)
from ..pipeline.views.mixing import BatchMix
from ..pipeline.views.params import TrainViews, view_seed
from ..pipeline.views.pixels import TrainAugment
from ..pipeline.weak.members import Members
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

    def summary(self) -> list[str]:
        val = f", val top-1 {self.val_top1:.4f} top-5 {self.val_top5:.4f}" if self.val_top1 is not None else ""
        best = f" (best {self.best_top1:.4f})" if self.best_top1 is not None else ""
        state = "finished" if self.finished else "stopped (continue with --resume)"
        return [f"{state} at step {self.step}, epoch {self.epoch}{val}{best} in {self.seconds:.0f} s",
                f"run {self.run_dir}"]


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
            loss, parts = objective(logits, batch.get("weak"), batch.get("target"), progress, epoch, batch.get("trust"),
                                    batch.get("ids"))
            loss = loss / len(batches) if len(batches) > 1 else loss
            if batch.get("share", 1.0) != 1.0:  # a probe's last partial batch, split over ranks (train/probe.py)
                loss = loss * batch["share"]
            (scaler.scale(loss) if scaler is not None else loss).backward()
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
@pixel_limited
def run_train(cfg: TrainConfig) -> TrainResult:
    with distributed.session(cfg.device, deterministic=cfg.deterministic,
                             stall_timeout=cfg.stall_timeout) as (info, device), RunClaim() as claim:
        # -- the inputs and the run --------------------------------------------------------------
        inputs = resolve_inputs(cfg)
        _say_weak_labels(inputs, info)
        strong, precision = resolve_model_name(cfg.strong), distributed.resolve_precision(cfg.precision, device)
        decoder = _decoder(cfg, inputs, device)
        workers = loading_processes(cfg.workers)
        run_dir = distributed.on_main(lambda: open_run(_run_name(cfg, strong), cfg.workspace, resume=cfg.resume,
                                                       claim=claim))
        log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"), info.is_main)  # and TensorBoard events

        # -- model, optimizer, schedule -------------------------------------------------------------
        seed_everything(cfg.seed)  # the same initial weights on every rank
        model, data_config = _student(cfg, strong, inputs, device)
        probe = _probe(cfg, inputs, strong, model, device) if cfg.features else None  # rows of the feature stores
        optimizer = build_optimizer(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, layer_decay=cfg.layer_decay)
        accum = cfg.grad_accum  # batches per optimizer step; a step is one optimizer step
        steps_per_epoch = cfg.steps_per_epoch or _epoch_steps(cfg, inputs, probe, info.world_size)
        total_steps = steps_per_epoch * cfg.epochs
        schedule = Schedule(optimizer, _schedule_spec(cfg, steps_per_epoch))
        settings = run_settings(cfg, strong=strong, data_source=inputs.record, precision_resolved=precision,
                                device_type=device.type, decode_resolved=decoder, workers_resolved=workers,
                                world_size=info.world_size, steps_per_epoch=steps_per_epoch)
        state = RunState(model, build_ema(model, cfg.model_ema_decay) if cfg.model_ema else None, optimizer,
                         torch.amp.GradScaler(device.type) if precision == "fp16" else None, log, device, info,
                         Checkpoints(run_dir, info.is_main, ema_decay=cfg.model_ema_decay, common=dict(
                             model_name=strong, data_config={**data_config}, precision=precision, settings=settings,
                             **_described(cfg, inputs))), members=_members(cfg, inputs, info))
        # From here each rank draws from its own generators (dropout masks, say); the data's
        # augmentation draws from none of them (views/params.py).
        seed_everything(view_seed(cfg.seed, "train", str(info.rank), 0))

        # -- start, or resume exactly where last.pt left off ----------------------------------------
        step = state.start(cfg, run_dir, settings, {"num_classes": inputs.num_classes, "data_config": data_config})
        net, no_sync = distributed.wrap_model(model.get_classifier() if probe else model, device, info,
                                              compile=cfg.compile)  # a probe's step: features -> its head

        # -- data, objective, validation ------------------------------------------------------------
        autocast = distributed.autocast(precision, device)
        batches, step_inputs, validate = _feed(cfg, inputs, probe, data_config, decoder, workers, device, info,
                                               (steps_per_epoch * accum, step * accum), autocast, precision)
        objective = _objective(cfg, state.members)

        # -- the loop ------------------------------------------------------------------------------
        net.train(not cfg.head_only)  # a linear probe's frozen backbone keeps its normalisation statistics
        bar = _progress_bar(cfg, info, strong, total_steps, step)
        stop_at = min(total_steps, step + cfg.max_steps) if cfg.max_steps else total_steps
        window, started = MetricWindow(), time.perf_counter()
        while step < stop_at:
            watchdog.beat("the next batch from the loading processes", f"step {step + 1}, epoch {step // steps_per_epoch + 1}")
            micro = [step_inputs(next(batches), step=step, micro=i) for i in range(accum)]
            lr = schedule.apply(step)  # the rate this step trains with, and the one logged for it
            parts = train_step(net, micro, optimizer, objective, progress=step / total_steps,
                               epoch=step // steps_per_epoch, scaler=state.scaler, clip_grad=cfg.clip_grad,
                               autocast=autocast, no_sync=no_sync)
            step += 1
            state.stepped(step)
            window.add(step, parts, sum(len(b["image"]) for b in micro) * info.world_size,
                       sum(b["dropped"] for b in micro))
            bar.update(1)
            epoch, epoch_end = step // steps_per_epoch, step % steps_per_epoch == 0
            if step % cfg.log_every == 0 or step == stop_at or epoch_end:
                bar.set_postfix(loss=f"{_log_window(window, state.totals, log, step, lr, info, steps_per_epoch):.3f}")
            if epoch_end:  # the epoch's evaluation, its record and its checkpoints (the last: its predictions)
                state.end_epoch(step, epoch, validate, weak=loss_class(cfg.loss).reads_weak, skip_missing=cfg.skip_missing,
                                final=step >= total_steps)
        bar.close()

        # -- finish ----------------------------------------------------------------------------------
        if step % steps_per_epoch:  # stopped mid-epoch by --max-steps: the state resumes from here
            state.save_last(step, step // steps_per_epoch)
        if finished := step >= total_steps:
            state.end_record(step, cfg, seconds=time.perf_counter() - started)
        log.close()
        distributed.barrier()
        return state.result(run_dir, step, step // steps_per_epoch, finished, time.perf_counter() - started)


@dataclass
class RunState:
    """What a run carries from step to step besides the batches: the model and its weight average,
    the optimizer and loss scaler, the epoch's running figures, the best validation top-1, and where
    they are written (metrics.jsonl, last.pt, best.pt, ema.pt)."""

    model: torch.nn.Module
    ema: object | None  # the weight average (--model-ema): timm's ModelEmaV3
    optimizer: object
    scaler: object | None  # fp16's loss scaler
    log: MetricsLog
    device: object
    info: object  # distributed.DistInfo
    checkpoints: Checkpoints
    members: object | None = None  # weak/members.Members: an ensemble combined at each step (learned weights)
    totals: EpochTotals | None = None
    best_top1: float | None = None
    val: dict | None = None  # the last evaluation's figures
    run_dir: str = ""

    @property
    def averaged(self) -> torch.nn.Module | None:
        """The weight average's module (--model-ema), or None."""
        return self.ema.module if self.ema is not None else None

    def stepped(self, step: int) -> None:
        """After optimizer step `step`: the weight average follows the weights."""
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def start(self, cfg: TrainConfig, run_dir: str, settings: dict, described: dict) -> int:
        """The step the run starts at: 0 (config.json written), or where last.pt left off (--resume:
        the weights, optimizer, generators and the epoch's figures restored)."""
        step, sums = 0, {}
        self.run_dir = run_dir
        if cfg.resume:
            step, self.best_top1, sums = resume(os.path.join(run_dir, "last.pt"), settings, run_dir, model=self.model,
                                                optimizer=self.optimizer, scaler=self.scaler, ema=self.averaged,
                                                rank=self.info.rank, device=self.device, members=self.members)
            self.log.truncate_after(step)
        elif self.info.is_main:
            write_config(run_dir, {**asdict(cfg), **settings, **described, "tool_version": __version__})
        self.totals = EpochTotals(sums)
        self.log.open_board(step)
        return step

    def end_epoch(self, step: int, epoch: int, validate, *, weak: bool, skip_missing: bool, final: bool = False) -> None:
        """The epoch's evaluation (every rank's normalisation statistics averaged first), its record,
        best.pt where it is the best so far, and last.pt; the last epoch's per-sample predictions
        (evaluation/predictions.py), for report's per-class tables, paired tests and misfit."""
        distributed.sync_norm_stats((self.model, self.averaged), self.info.world_size)
        self.val, record = _validation(validate, self.model, self.averaged, step, epoch, keep=final)
        kept = (self.val or {}).pop("predictions", None)
        if kept is not None and self.info.is_main:
            write_predictions(predictions_file(self.run_dir, self.val["split"]), kept)
        if self.val and (self.best_top1 is None or self.val["top1"] > self.best_top1):
            self.best_top1 = self.val["top1"]
            self.checkpoints.save_best(self.model, step=step, epoch=epoch, best_top1=self.best_top1)
        self.log.write({**record, **(self.totals.epoch_figures(skip_missing) if weak else {})})
        self.totals.next_epoch()
        self.save_last(step, epoch, averaged_already=True)

    def result(self, run_dir: str, step: int, epoch: int, finished: bool, seconds: float) -> TrainResult:
        val = self.val or {}
        return TrainResult(run_dir, step, epoch, finished, val.get("top1"), val.get("top5"), self.best_top1, seconds)

    def end_record(self, step: int, cfg: TrainConfig, seconds: float) -> None:
        """The run's last metrics record, with every rank's weights digest, checked equal."""
        self.log.write({"kind": "end", "step": step, "epoch": cfg.epochs, "weights_sha256": _equal_weights(self.model),
                        "best_val_top1": self.best_top1, "seconds": seconds, **self._learned(),
                        **({"dropped_missing": self.totals.dropped_total} if cfg.skip_missing else {})})

    def _learned(self) -> dict:
        """The end record's learned ensemble weights (--ensemble learned; learned-sample: their mean)."""
        weights = getattr(self.members, "weights", None)
        return {} if weights is None else {"ensemble_weights": [round(float(w), 6) for w in weights.mean(0)]}

    def save_last(self, step: int, epoch: int, averaged_already: bool = False) -> None:
        """last.pt, with every rank's own state (taken before the ranks' statistics are averaged)."""
        ranks = _rank_states(self.model, self.device, self.totals, self.averaged)
        if not averaged_already:
            distributed.sync_norm_stats((self.model, self.averaged), self.info.world_size)
        self.checkpoints.save_last(self.model, step=step, epoch=epoch, best_top1=self.best_top1, ema=self.averaged,
                                   ranks=ranks, optimizer=self.optimizer, scaler=self.scaler,
                                   members=self.members.state_dict() if self.members is not None else None)


# ---------------------------------------------------------------------------------------------
def _decoder(cfg: TrainConfig, inputs: Inputs, device) -> str:
    """The run's decoder: --decode resolved, cpu where augmentation runs in the loading processes."""
    mixup = ("--mixup (replayed from a per-view store)",) if inputs.mix else ()
    return resolve_decoder(cfg.decode, device, loading_only=cfg.loading_only + mixup)


def _described(cfg: TrainConfig, inputs: Inputs) -> dict:
    """What every checkpoint of the run says of it besides the weights and the model."""
    return dict(num_classes=inputs.num_classes, class_names=inputs.class_names, config=asdict(cfg), data=inputs.record,
                tool_version=__version__)


def _progress_bar(cfg: TrainConfig, info, strong: str, total_steps: int, step: int):
    return tqdm(total=total_steps, initial=step, unit="step", disable=not (cfg.progress and info.is_main),
                desc=f"train {strong} ({cfg.loss})", dynamic_ncols=True)


def _run_name(cfg: TrainConfig, strong: str) -> str:
    """--run-name, or <model>-<loss>-<time> (the main process's, shared with every rank)."""
    return cfg.run or f"{slug(strong)}-{cfg.loss}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _objective(cfg: TrainConfig, members=None):
    """The run's objective (train/losses.py): its loss built with its own knobs (pipeline/losses/),
    with --kd-weight and the --gt-weight term; `members` combines an ensemble at each step."""
    return make_objective(cfg.built_loss(), ramp=cfg.ramp, epochs=cfg.epochs, gt_weight=cfg.gt_weight,
                          kd_weight=cfg.kd_weight, smoothing=cfg.smoothing, members=members)


def _members(cfg: TrainConfig, inputs: Inputs, info) -> Members | None:
    """weak/members.Members where the batches carry every member's logits (cfg.stacked), else None."""
    if not cfg.stacked:
        return None
    rows = sample_ids(open_store(inputs.store_url))[1]  # the join's ids run 0..rows-1
    return Members(inputs.ensemble, len(inputs.members), lr=cfg.ensemble_lr, rows=rows, easy_epochs=cfg.easy_epochs,
                   classes=[list(c) for c in inputs.member_classes], num_classes=inputs.num_classes,
                   topk=cfg.specialist_topk, world_size=info.world_size, assigner=inputs.assigner is not None)


def _epoch_steps(cfg: TrainConfig, inputs: Inputs, probe, world_size: int) -> int:
    """Optimizer steps in an epoch: a probe's every row once, its last partial batch kept (probe_steps);
    a run on the shards, whole steps of the samples (the stream is endless: the remainder of one epoch
    begins the next, so none is dropped between epochs; an epoch is where the evaluation falls)."""
    if probe:
        return probe_steps(len(probe.rows), cfg.batch_size, cfg.grad_accum, world_size)
    return max(1, _count(cfg, inputs) // (cfg.batch_size * cfg.grad_accum * world_size))


def _student(cfg: TrainConfig, strong: str, inputs: Inputs, device):
    """The strong model on `device`, and its evaluation data config (with --crop-pct: evaluation's
    geometry, saved with every checkpoint for `eval` and `label`); a --features probe's is the
    feature store's: the input its backbone saw. Under --linear-probe only the classifier trains."""
    embedded = embedded_input(cfg.features, cfg.img_size) if cfg.features else None
    model, data_config = build_strong(strong, inputs.num_classes, img_size=cfg.img_size or (
        embedded["input_size"][-1] if embedded else None), pretrained=cfg.pretrained,
        checkpoint=cfg.strong_checkpoint, drop_path=cfg.drop_path, head_init_std=cfg.head_init_std,
        head_hidden=cfg.head_hidden, keep_head=cfg.keep_head, head_seed=cfg.seed)
    if embedded:
        data_config = dict(embedded)
    if cfg.crop_pct:
        data_config = {**data_config, "crop_pct": cfg.crop_pct}
    seen = seen_labels(model, inputs.record.get("name")) if cfg.pretrained else None
    if seen and distributed.dist_info().is_main:
        print(f"warning: {seen}", file=sys.stderr)
    model.to(device)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)  # before DDP, which keeps the layout it is given
    if cfg.head_only:
        head = set(head_parameters(model))
        for p in model.parameters():
            p.requires_grad_(p in head)
    return model, data_config


def _say_weak_labels(inputs: Inputs, info) -> None:
    """Where the weak labels come from, said once (by the main process) when a run starts."""
    if not info.is_main or not (inputs.store_url or inputs.teacher is not None):
        return
    if inputs.teacher is not None:
        said = f"online teacher {inputs.teacher.name} ({inputs.teacher.checkpoint})"
    elif inputs.members:
        by = f", specialists assigned by {inputs.assigner}" if inputs.assigner else ""
        said = f"{inputs.ensemble} of {len(inputs.members)} stores: {', '.join(inputs.members)}{by}"
    else:
        views = f"; its {inputs.view_passes} views replayed" if inputs.view_passes else ""
        said = f"store {inputs.store_url} ({inputs.store_chosen}{views})"
    print(f"weak labels: {said}", file=sys.stderr)


def _schedule_spec(cfg: TrainConfig, steps_per_epoch: int) -> ScheduleSpec:
    return ScheduleSpec(cfg.sched, steps_per_epoch * cfg.epochs, warmup_steps=cfg.warmup_epochs * steps_per_epoch,
                        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, floor_after=cfg.cosine_floor == "after",
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
    join = _join(cfg, inputs)
    teacher = OnlineTeacher(inputs.teacher, data_config, device, autocast) if inputs.teacher is not None else None
    need_labels = cfg.needs_labels
    stream = TrainStream(inputs.urls, augment=augment, image_fields=inputs.image_fields,
                         label_field=inputs.label_field, need_labels=need_labels, join=join, seed=cfg.seed,
                         rank=info.rank, world_size=info.world_size, shuffle_buffer=cfg.shuffle_buffer,
                         batch_size=cfg.batch_size, start_step=start_step, view_passes=inputs.view_passes,
                         mix=inputs.mix, classes=cfg.class_subset)
    batches = iter(train_loader(stream, workers, device.type == "cuda"))
    # timm's batch mixing, unless a per-view store's mixes are replayed, sample by sample (views/mixing.py)
    mixer = BatchMix(mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                     smoothing=cfg.smoothing, num_classes=inputs.num_classes,
                     seed=cfg.seed) if cfg.mixes and inputs.mix is None else None
    return batches, StepInputs(data_config, device, decoder=decoder, rank=info.rank,
                               need_labels=need_labels, reprob=cfg.reprob, mixer=mixer, teacher=teacher,
                               num_classes=inputs.num_classes, smoothing=cfg.smoothing)


def _feed(cfg: TrainConfig, inputs: Inputs, probe, data_config: dict, decoder: str, workers: int, device, info,
          batches: tuple[int, int], autocast, precision: str):
    """(this rank's endless batches from the (micro-)batch `batches[1]` on, of `batches[0]` an epoch;
    the callable that makes one a step's inputs; the validation, or None): from the shards, or a
    --features probe's from its stores."""
    per_epoch, start = batches
    if probe:
        return (*probe.batches(cfg, info, per_epoch, start), probe.validate)
    return (*_data(cfg, inputs, data_config, decoder, workers, device, info, start_step=start, autocast=autocast),
            _validator(inputs.val, data_config, batch_size=cfg.batch_size, workers=workers, device=device,
                       precision=precision, decoder=decoder))


def _join(cfg: TrainConfig, inputs: Inputs) -> StoreJoin | None:
    """The samples' weak labels from the store(s): a store's (or its views', replayed), or an
    ensemble's; with --select's masks and --weight-by's statistic. None without a store."""
    if cfg.weak_from != "store":
        return None
    return StoreJoin(inputs.store_url, skip_missing=cfg.skip_missing, keep=inputs.kept.masks if inputs.kept else None,
                     views=inputs.view_passes > 0, trust=cfg.weight_by, members=inputs.members, ensemble=inputs.ensemble,
                     stacked=cfg.stacked, ids=cfg.ensemble == "learned-sample", assigner=inputs.assigner)


@dataclass
class Probe:
    """A --features run's data: its training rows (features joined with weak labels) and its
    validation (the validation split's feature store), in memory."""

    rows: object  # probe.ProbeRows
    validate: object | None
    device: object

    def batches(self, cfg: TrainConfig, info, per_epoch: int, start: int):
        rows = ProbeBatches(self.rows, batch_size=cfg.batch_size, per_epoch=per_epoch, seed=cfg.seed, rank=info.rank,
                            world_size=info.world_size, start=start, partial=cfg.steps_per_epoch is None)
        return iter(rows), ProbeInputs(self.device)


def _probe(cfg: TrainConfig, inputs: Inputs, strong: str, model, device) -> Probe:
    """The feature stores of a --features run, checked against the model and the label store, and
    their rows (recorded in the run's data record)."""
    weights = run_weights(cfg)
    train = feature_store(cfg.features, "--features", strong, model, weights)
    rows = training_rows(train, _join(cfg, inputs), inputs.store_url if cfg.weak_from == "store" else None,
                         cfg.needs_labels, trust=bool(cfg.weight_by))
    inputs.record["features"] = train.url
    validate = None
    if not cfg.no_eval:
        val = feature_store(default_val_features(cfg, inputs.val, strong), "--val-features", strong, model, weights)
        inputs.record["val_features"] = val.url
        validate = probe_validator(validation_rows(val), device, split=val.attrs["data"]["split"])
    return Probe(rows, validate, device)


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
    return lambda module, keep=False: {**evaluate(module, list(val.urls), data_config, image_fields=val.image_fields,
                                                  label_field=val.label_field, keep=keep, **loading), "split": val.split}


def _validation(validate, model, averaged, step: int, epoch: int, keep: bool = False) -> tuple[dict | None, dict]:
    """The model's validation figures (None without validation; with `keep`, its per-sample
    predictions too) and the epoch record with them and the weight average's."""
    watchdog.beat("the epoch's evaluation, then its checkpoints (under torchrun, with every rank)")
    record = {"kind": "epoch", "step": step, "epoch": epoch}
    val = validate(model, keep=keep) if validate is not None else None
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


def _count(cfg: TrainConfig, inputs: Inputs) -> int:
    """Training samples: those --select / --keep-frac keep, else the store's records, else the
    shards' manifest or headers; under --classes, the shards' samples of those classes (their
    labels read once)."""
    if inputs.kept is not None:
        return inputs.kept.count
    if inputs.store_url:
        return open_store(inputs.store_url).num_samples
    if cfg.class_subset is not None:
        return _count_classes(cfg.class_subset, inputs)
    return sum(s.count for s in describe_shards(inputs.urls))


def _count_classes(classes: tuple[int, ...], inputs: Inputs) -> int:
    """How many of the shards' samples --classes keeps; a class outside the data set's, or none
    kept, is one line."""
    outside = [c for c in classes if c >= inputs.num_classes]
    if outside:
        raise W2SError(f"--classes {outside[0]} is outside the data's {inputs.num_classes} classes (0..."
                       f"{inputs.num_classes - 1})", option="--classes")
    wanted = set(classes)
    count = sum(sum(1 for v in shard_labels(url, inputs.label_field).values() if v in wanted) for url in inputs.urls)
    if not count:
        raise W2SError(f"--classes {','.join(map(str, classes))}: no sample of {inputs.record['pattern']} is of these "
                       "classes", option="--classes")
    return count


__all__ = ["TrainConfig", "TrainResult", "run_train", "train_step"]
