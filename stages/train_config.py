"""`train`'s options as one frozen, validated config: every value is checked where the config is
built, with an error naming the option, the bad value and what would be valid. The cheap checks
come first, so a typo is answered before timm is imported (for the optimizer's name).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from ..errors import W2SError
from ..pipeline.config.choices import (
    DECODE_OPTIONS,
    ENSEMBLES,
    LOSS_NAMES,
    LOSSES,
    PRECISION_OPTIONS,
    RAMPS,
    RANK_BY,
    SCHEDULES,
    STORE_VIEWS,
    WEIGHT_BY,
    check_choice,
)


@dataclass(frozen=True)
class TrainConfig:
    strong: str
    loss: str = "adaptconf"
    config: str | None = None  # the recipe (--config) the other values came from, for the record
    labels: str | None = None  # store (or stores A,B,... of one ensemble); default: the workspace's most recent
    ensemble: str | None = None  # how several --labels stores combine (ensemble.py); default mean-prob
    teacher: str | None = None  # online teacher: a weak checkpoint run on every batch, instead of a store
    teacher_model: str | None = None  # the teacher's timm name, for a plain state dict
    store_view: str = "auto"  # a per-view store: replay its views (auto, replay) or read its centre view
    data: str | None = None  # only to override the store's, or with --loss gt
    split: str | None = None
    val_data: str | None = None  # default: the data set's validation split
    val_split: str | None = None
    no_eval: bool = False
    img_size: int | None = None
    crop_pct: float | None = None  # evaluation's centre crop; default: the model's data config
    pretrained: bool = False
    strong_checkpoint: str | None = None
    linear_probe: bool = False
    drop_path: float | None = None  # timm's stochastic depth rate
    head_init_std: float | None = None  # re-initialise the classifier (MAE fine-tuning: 2e-5)
    threshold: float = 0.5  # adaptconf's tau; augconf's final alpha
    kd_temperature: float = 1.0
    warmup_frac: float = 0.3  # augconf's alpha ramp (the official superalignment_rate)
    ramp: str = "epoch"  # augconf's ramp steps per epoch (official) or per step
    beta_warmup_frac: float = 0.0
    kd_weight: float = 1.0  # the official kd_loss_weight: scales the weak-label loss
    gt_weight: float = 0.0  # the official gt_loss_weight (1.0 there)
    smoothing: float = 0.0  # label smoothing of the ground-truth term
    skip_missing: bool = False
    skip_shard_check: bool = False
    select: str | None = None  # a filter over the store's index columns (selection.py)
    keep_frac: float | None = None  # keep this most trusted fraction (after --select)
    rank_by: str = "margin"  # what --keep-frac ranks by
    per_class: bool = False  # --keep-frac within each predicted class
    weight_by: str | None = None  # weigh each sample's weak-label loss by its stored confidence or margin
    opt: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    layer_decay: float | None = None
    sched: str = "cosine"
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    decay_epochs: int | None = None  # step schedule; default: a third of the epochs
    decay_rate: float = 0.1
    epochs: int = 10
    steps_per_epoch: int | None = None  # default: samples // (world size * batch size)
    batch_size: int = 128
    workers: int | None = None
    precision: str = "auto"
    device: str = "auto"
    deterministic: bool = False
    clip_grad: float | None = None
    grad_accum: int = 1  # batches per optimizer step
    compile: bool = False
    channels_last: bool | None = None  # default: on CUDA
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    seed: int = 0
    decode: str = "auto"  # gpu where CUDA is (and no --aa/--color-jitter), else cpu (views/pixels.py)
    hflip: float = 0.5
    color_jitter: float = 0.0
    crop_scale: float = 0.08
    aa: str | None = None  # timm's auto-augment string
    reprob: float = 0.0  # random erasing probability
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    shuffle_buffer: int = 1000
    run: str | None = None  # run name (a directory under <workspace>/runs) or path
    resume: bool = False
    max_steps: int | None = None  # stop after this many steps in this invocation; --resume continues
    log_every: int = 20
    stall_timeout: float = 600.0  # a rank waiting longer for a batch, a step or the other ranks ends the run; 0: never
    workspace: str | None = None
    progress: bool = True

    def __post_init__(self):
        def bad(option, value, valid):
            raise W2SError(f"{option} {value!r} is invalid: {valid}")

        check_choice("--loss", self.loss, LOSS_NAMES)
        if self.img_size is not None and self.img_size < 8:
            bad("--img-size", self.img_size, "must be at least 8 pixels")
        check_choice("--ramp", self.ramp, RAMPS)
        check_choice("--sched", self.sched, SCHEDULES)
        check_choice("--precision", self.precision, PRECISION_OPTIONS)
        check_choice("--decode", self.decode, DECODE_OPTIONS)
        check_choice("--store-view", self.store_view, STORE_VIEWS)
        check_choice("--rank-by", self.rank_by, RANK_BY)
        if self.weight_by is not None:
            check_choice("--weight-by", self.weight_by, WEIGHT_BY)
        if self.ensemble is not None:
            check_choice("--ensemble", self.ensemble, ENSEMBLES)
            if len(self.label_stores) < 2:
                raise W2SError(f"--ensemble {self.ensemble} combines several stores: give --labels A,B,...")
        if len(self.label_stores) > 1 and len(set(self.label_stores)) < len(self.label_stores):
            raise W2SError(f"--labels {self.labels}: a store is named twice")
        if self.keep_frac is not None and not 0 < self.keep_frac <= 1:
            bad("--keep-frac", self.keep_frac, "must be above 0 and at most 1")
        if (self.per_class or self.rank_by != "margin") and self.keep_frac is None:
            raise W2SError("--rank-by and --per-class say how --keep-frac ranks: give --keep-frac F with them")
        if (self.select or self.keep_frac is not None or self.weight_by) and (
                self.teacher or not LOSSES[self.loss].needs_weak):
            raise W2SError("--select, --keep-frac and --weight-by read a store's statistics of its weak labels: "
                           f"{'--teacher' if self.teacher else f'--loss {self.loss}'} reads no store")
        if self.color_jitter and self.aa:
            raise W2SError("give --aa or --color-jitter, not both (timm turns colour jitter off under auto-augment)")
        for option, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                   ("--log-every", self.log_every, 1), ("--shuffle-buffer", self.shuffle_buffer, 1),
                                   ("--grad-accum", self.grad_accum, 1)):
            if value < low:
                bad(option, value, f"must be at least {low}")
        for option, value in (("--lr", self.lr), ("--threshold", self.threshold), ("--kd-temperature", self.kd_temperature)):
            if not value > 0:
                bad(option, value, "must be positive")
        for option, value in (("--warmup-frac", self.warmup_frac), ("--beta-warmup-frac", self.beta_warmup_frac),
                              ("--hflip", self.hflip), ("--crop-scale", self.crop_scale), ("--decay-rate", self.decay_rate),
                              ("--reprob", self.reprob), ("--mixup-prob", self.mixup_prob),
                              ("--mixup-switch-prob", self.mixup_switch_prob), ("--momentum", self.momentum),
                              ("--layer-decay", self.layer_decay or 1.0)):
            if not 0 <= value <= 1:
                bad(option, value, "must be between 0 and 1")
        for option, value in (("--smoothing", self.smoothing), ("--drop-path", self.drop_path or 0.0),
                              ("--model-ema-decay", self.model_ema_decay)):
            if not 0 <= value < 1:
                bad(option, value, "must be at least 0 and below 1")
        for option, value in (("--gt-weight", self.gt_weight), ("--weight-decay", self.weight_decay),
                              ("--warmup-epochs", self.warmup_epochs), ("--min-lr", self.min_lr),
                              ("--warmup-lr", self.warmup_lr), ("--kd-weight", self.kd_weight),
                              ("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if value < 0:
                bad(option, value, "must not be negative")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            bad("--crop-pct", self.crop_pct, "must be above 0 and at most 1")
        if self.head_init_std is not None and not self.head_init_std > 0:
            bad("--head-init-std", self.head_init_std, "must be positive")
        if self.mixes and self.batch_size % 2:
            bad("--batch-size", self.batch_size, "must be even with --mixup or --cutmix (each image is mixed with "
                "another of its batch)")
        if self.min_lr > self.lr:
            bad("--min-lr", self.min_lr, f"must not exceed --lr {self.lr}")
        if self.warmup_epochs >= self.epochs:
            bad("--warmup-epochs", self.warmup_epochs, f"must be less than --epochs {self.epochs} (warm-up counts inside them)")
        for option, value in (("--steps-per-epoch", self.steps_per_epoch), ("--max-steps", self.max_steps),
                              ("--decay-epochs", self.decay_epochs)):
            if value is not None and value < 1:
                bad(option, value, "must be at least 1")
        if self.teacher and self.labels:
            raise W2SError("give --labels STORE or --teacher CHECKPOINT, not both: the weak labels come from one")
        if self.teacher and not LOSSES[self.loss].needs_weak:
            raise W2SError(f"--teacher gives weak labels, which --loss {self.loss} does not read; drop --teacher")
        if self.teacher and not self.data:
            raise W2SError("--teacher needs --data: the data to train on (a store would have named it)")
        if self.teacher and self.skip_missing:
            raise W2SError("--skip-missing is about a store's rows; with --teacher every sample has its teacher's output")
        if self.teacher and self.store_view != "auto":
            raise W2SError(f"--store-view {self.store_view} chooses among a store's outputs; with --teacher there is no store")
        if self.teacher_model and not self.teacher:
            raise W2SError("--teacher-model names the model of a --teacher checkpoint: give --teacher too")
        if self.pretrained and self.strong_checkpoint:
            raise W2SError("give --pretrained or --strong-checkpoint, not both")
        if self.resume and not self.run:
            raise W2SError("--resume needs --run-name NAME: the run to continue")
        if self.workers is not None and self.workers < 0:
            bad("--workers", self.workers, "must be 0 or more")
        if not self.stall_timeout >= 0:
            bad("--stall-timeout", self.stall_timeout, "must be 0 (never) or a number of seconds")

        # Lazy, and last: it imports timm (seconds), and a config is built (and --help read) without it.
        from ..pipeline.train.optim import check_optimizer

        check_optimizer(self.opt)

    @property
    def label_stores(self) -> list[str]:
        """The --labels stores: one, or the members of an ensemble (comma-separated)."""
        return [s.strip() for s in (self.labels or "").split(",") if s.strip()]

    @property
    def weak_from(self) -> str | None:
        """Where the weak labels come from: "online" (--teacher), "store", or None (--loss gt)."""
        if not LOSSES[self.loss].needs_weak:
            return None
        return "online" if self.teacher else "store"

    @property
    def loading_only(self) -> tuple[str, ...]:
        """The options set that only the loading processes apply (so --decode gpu cannot)."""
        return tuple(o for o, v in (("--aa", self.aa), ("--color-jitter", self.color_jitter)) if v)

    @property
    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix) and self.mixup_prob > 0

    @classmethod
    def tiny(cls, **overrides) -> "TrainConfig":
        """A seconds-long preset for tests and smoke runs: 32 px, small batches, two epochs."""
        base = dict(strong="test_resnet", img_size=32, batch_size=32, epochs=2, workers=0, log_every=2,
                    precision="fp32", shuffle_buffer=64, hflip=0.0, progress=False)
        return cls(**{**base, **overrides})


def recipe_options() -> dict[str, str]:
    """The options a recipe (`train --config`) may set, each with its field's type annotation."""
    return {f.name: str(f.type) for f in fields(TrainConfig) if f.name not in ("config", "workspace", "progress")}


def option_defaults() -> dict:
    """Each train option's default: what a run did about an option its config.json predates."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
