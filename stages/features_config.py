"""`features`' options: a model's pooled features over a split's shards, into a feature store.
Its options are `label`'s (options.like: one definition), named for a model whose features are
kept rather than a weak model whose outputs are."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import W2SError
from ..pipeline.config import options
from ..pipeline.config.groups import Loading, Watched
from ..pipeline.config.options import field_of, like
from .label_config import LabelConfig


def _label(name: str, **changes):
    return like(field_of(LabelConfig, name), **changes)


@dataclass(frozen=True, kw_only=True)
class FeaturesConfig(Loading, Watched):
    model: str | None = _label("weak", help="timm model name or alias whose frozen pooled features (the classifier's "
                                            "input: timm's pre-logits) are stored; optional with a checkpoint this "
                                            "tool wrote.")
    checkpoint: str | None = _label("weak_checkpoint", help="Weights: a checkpoint from `w2s-pipe train` or a plain "
                                                            "timm state dict [default: timm pretrained].")
    data: str = _label("data")
    split: str | None = _label("split", help="Split to embed [default: the dataset's labelling split, e.g. train, or "
                                             "transfer for digits]; a probe run's validation reads the val split's "
                                             "feature store: embed that split too.")
    out: str | None = _label("labels", help="Feature store path or URL [default: <workspace>/features/<data>-<split>-"
                                            "<model>].")
    num_classes: int | None = _label("num_classes")
    img_size: int | None = _label("img_size")
    compile: bool = _label("compile", help="torch.compile the model.")
    overwrite: bool = _label("overwrite", help="Replace an existing feature store made by a different job (model, "
                                               "checkpoint, data, ...).")
    max_shards: int | None = _label("max_shards")
    on_bad_sample: str = _label("on_bad_sample")
    workspace: str | None = None

    def __post_init__(self):
        if not self.model and not self.checkpoint:
            raise W2SError("give --model MODEL (a timm name or alias) or --checkpoint PATH", option="--model")
        options.check(self)

    def label_config(self) -> LabelConfig:
        """The same job as `label`'s machinery runs it: a store of features, not of weak outputs."""
        own = {"model", "checkpoint", "out"}
        shared = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in own}
        return LabelConfig(**shared, weak=self.model, weak_checkpoint=self.checkpoint, labels=self.out, features=True)

    @classmethod
    def tiny(cls, **overrides) -> "FeaturesConfig":
        """Seconds-long: digits, in the main process, fp32, quiet."""
        return cls(**{**dict(data="digits", workers=0, precision="fp32", progress=False), **overrides})
