"""`label`'s options as one frozen, validated config: its own options, and the groups it shares
with `train` (pipeline/config/groups.py: the loading, the watchdog, the view recipe of `--views`).
Every value is checked where the config is built, with an error naming the option, the bad value
and what would be valid."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import W2SError
from ..pipeline.config import options
from ..pipeline.config.choices import BAD_SAMPLE_POLICIES
from ..pipeline.config.groups import Loading, ViewRecipe, Watched
from ..pipeline.config.options import option


@dataclass(frozen=True, kw_only=True)
class LabelConfig(Loading, Watched, ViewRecipe):
    weak: str | None = option(None, "Weak timm model name or alias (vit_b16, r50, ...); optional with a checkpoint this "
                                    "tool wrote.")
    weak_checkpoint: str | None = option(None, "Weights: a checkpoint from `w2s-pipe train` or a plain timm state dict "
                                               "[default: timm pretrained].")
    data: str = option("digits", "Dataset name from the registry (`w2s-pipe datasets`) or a shard pattern "
                                 "(/d/train-{000000..000127}.tar, s3://...).")
    split: str | None = option(None, "Split to label [default: the dataset's labelling split, e.g. train, or transfer "
                                     "for digits].")
    labels: str | None = option(None, "Store path or URL [default: <workspace>/stores/<data>-<split>-<weak>].")
    num_classes: int | None = option(None, "Classes, for a shard pattern without a manifest [default: the "
                                           "checkpoint's head].", at_least=2)
    img_size: int | None = option(None, "Input size in pixels [default: the checkpoint's, else the model's data "
                                        "config].", at_least=8, unit="pixels")
    topk: int | None = option(None, "Store only the top K logits per sample (values and indices) instead of all.",
                              at_least=1)
    views: int = option(0, "Also store the weak model's output on the K training views that `train` draws in passes "
                           "0..K-1 with the same --seed, --crop-scale, --hflip, --aa, --color-jitter, --reprob and "
                           "mixing options (each view's crop box and flip, a mixed view's partner and λ, its logits or "
                           "top-k and statistics, under views/), at the weak model's input size; `train` then replays "
                           "them. 0: the centre view only. With --decode cpu or pil.", at_least=0)
    compile: bool = option(False, "torch.compile the weak model.")
    overwrite: bool = option(False, "Replace an existing store made by a different job (model, checkpoint, data, ...).")
    max_shards: int | None = option(None, "Label at most this many shards (per rank) and stop; re-run to continue.",
                                    at_least=1)
    on_bad_sample: str = option("fail", "fail: stop at a bad sample (undecodable image, no image field, non-integer "
                                        "label, repeated key) naming shard, key and reason; skip: record it in "
                                        "skipped.parquet and go on (an unreadable or empty shard is recorded whole).",
                                choices=BAD_SAMPLE_POLICIES)
    workspace: str | None = None
    features: bool = False  # store the model's pooled features, not its outputs (`w2s-pipe features`)

    def __post_init__(self):
        if not self.weak and not self.weak_checkpoint:
            raise W2SError("give --weak MODEL (a timm name or alias) or --weak-checkpoint PATH", option="--weak")
        options.check(self)
        self.check_recipe()
        if self.features and (self.topk or self.views):
            raise W2SError("a feature store holds the centre view's features: no --topk or --views with it",
                           option="--topk" if self.topk else "--views")
        if (self.aa or self.color_jitter or self.reprob) and not self.views:
            raise W2SError("--aa, --color-jitter and --reprob shape the training views: give --views K with them",
                           option="--views")
        if self.mixes and not self.views:
            raise W2SError("--mixup and --cutmix mix the training views: give --views K with them", option="--views")
        if self.mixes and self.skip_bad:
            raise W2SError("mixed views pair each sample with another of its shard by position: label them with "
                           "--on-bad-sample fail (a skipped sample would move every position after it)",
                           option="--on-bad-sample")

    @property
    def skip_bad(self) -> bool:
        return self.on_bad_sample == "skip"

    @classmethod
    def tiny(cls, **overrides) -> "LabelConfig":
        """A seconds-long preset for tests and smoke runs: digits, in the main process, fp32, quiet."""
        base = dict(weak=None, data="digits", workers=0, precision="fp32", progress=False)
        return cls(**{**base, **overrides})
