"""`label`'s options as one frozen, validated config: every value is checked where the config is
built, with an error naming the option, the bad value and what would be valid."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import W2SError
from ..pipeline.config.choices import BAD_SAMPLE_POLICIES, DECODE_OPTIONS, PRECISION_OPTIONS, check_choice


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
    views: int = 0  # label --views K: also the weak model's output on the K views train draws in passes 0..K-1
    seed: int = 0  # the views' seed: train's --seed
    crop_scale: float = 0.08  # the views' smallest crop area fraction: train's --crop-scale
    hflip: float = 0.5  # the views' flip chance: train's --hflip
    aa: str | None = None  # the views' auto-augment policy: train's --aa
    color_jitter: float = 0.0  # the views' colour jitter: train's --color-jitter
    reprob: float = 0.0  # the views' random erasing: train's --reprob
    mixup: float = 0.0  # the views' mixing (views/mixing.py): train's --mixup, --cutmix, --mixup-prob, --mixup-switch-prob
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    stall_timeout: float = 600.0  # a rank waiting longer for a batch, a step or the other ranks ends the run; 0: never
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
        if not self.stall_timeout >= 0:
            bad("--stall-timeout", self.stall_timeout, "must be 0 (never) or a number of seconds")
        check_choice("--precision", self.precision, PRECISION_OPTIONS)
        if self.topk is not None and self.topk < 1:
            bad("--topk", self.topk, "must be at least 1")
        if self.img_size is not None and self.img_size < 8:
            bad("--img-size", self.img_size, "must be at least 8 pixels")
        if self.num_classes is not None and self.num_classes < 2:
            bad("--num-classes", self.num_classes, "must be at least 2")
        if self.max_shards is not None and self.max_shards < 1:
            bad("--max-shards", self.max_shards, "must be at least 1")
        check_choice("--on-bad-sample", self.on_bad_sample, BAD_SAMPLE_POLICIES)
        if self.views < 0:
            bad("--views", self.views, "must be 0 (the centre view only) or more")
        if not 0 < self.crop_scale <= 1:
            bad("--crop-scale", self.crop_scale, "must be above 0 and at most 1")
        if not 0 <= self.hflip <= 1:
            bad("--hflip", self.hflip, "must be between 0 and 1")
        if self.color_jitter < 0:
            bad("--color-jitter", self.color_jitter, "must not be negative")
        if not 0 <= self.reprob <= 1:
            bad("--reprob", self.reprob, "must be between 0 and 1")
        if (self.aa or self.color_jitter or self.reprob) and not self.views:
            raise W2SError("--aa, --color-jitter and --reprob shape the training views: give --views K with them")
        for option, value in (("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if value < 0:
                bad(option, value, "must not be negative")
        for option, value in (("--mixup-prob", self.mixup_prob), ("--mixup-switch-prob", self.mixup_switch_prob)):
            if not 0 <= value <= 1:
                bad(option, value, "must be between 0 and 1")
        if self.mix_recipe.on and not self.views:
            raise W2SError("--mixup and --cutmix mix the training views: give --views K with them")
        if self.mix_recipe.on and self.skip_bad:
            raise W2SError("mixed views pair each sample with another of its shard by position: label them with "
                           "--on-bad-sample fail (a skipped sample would move every position after it)")
        if self.aa and self.color_jitter:
            raise W2SError("give --aa or --color-jitter, not both (timm turns colour jitter off under auto-augment)")
        check_choice("--decode", self.decode, DECODE_OPTIONS)

    @property
    def mix_recipe(self):
        from ..pipeline.views.mixing import MixRecipe  # lazy: views import torch, and a config stays light

        return MixRecipe(self.mixup, self.cutmix, self.mixup_prob, self.mixup_switch_prob)

    @property
    def view_recipe(self) -> dict:
        """What the views are drawn with (storage.schema.VIEW_RECIPE), as train's options name it."""
        from ..pipeline.views.params import TrainViews  # lazy: views import torch, and a config stays light

        return {"crop_scale": self.crop_scale, "ratio": list(TrainViews(0).ratio), "hflip": self.hflip, "aa": self.aa,
                "color_jitter": self.color_jitter, "reprob": self.reprob, **self.mix_recipe.as_dict()}

    @property
    def skip_bad(self) -> bool:
        return self.on_bad_sample == "skip"

    @classmethod
    def tiny(cls, **overrides) -> "LabelConfig":
        """A seconds-long preset for tests and smoke runs: digits, in the main process, fp32, quiet."""
        base = dict(weak=None, data="digits", workers=0, precision="fp32", progress=False)
        return cls(**{**base, **overrides})
