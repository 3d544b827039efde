"""`prepare`'s options as frozen, validated configs, one per kind of data, sharing the shard and
noise options (pipeline/config/groups.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.config import options
from ..pipeline.config.groups import Noise, Shards
from ..pipeline.config.options import field_of, like, option
from ..pipeline.sources.fashion_mnist import DEBIAN_DIR


@dataclass(frozen=True, kw_only=True)
class PrepareDigitsConfig(Shards, Noise):
    shard_size: int = like(field_of(Shards, "shard_size"), 256)
    few_shot: bool = option(False, "The few-shot scenario's data set, digits-fewshot [default --out: "
                                   "$W2S_DATA/digits-fewshot]: weak, transfer and val keep digits 0-4 (the base "
                                   "classes), and the split novel holds every image of digits 5-9 (labelled 0-4), never "
                                   "trained on, for eval --episodes. Not with --label-noise.")
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)


@dataclass(frozen=True, kw_only=True)
class PrepareFashionConfig(Shards):
    src: str = option(DEBIAN_DIR, "The folder of the four IDX files, gzipped or not "
                      "[default: where Debian's dataset-fashion-mnist installs them].", argument=True)
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)


@dataclass(frozen=True, kw_only=True)
class PrepareCifarConfig(Shards, Noise):
    archive: str = option(help="The python archive, as downloaded.", argument=True, path="file!")
    weak_split: int = option(0, "Carve this many training images (a fixed seeded choice) into a `weak` split for the "
                                "weak model's ground truth; the rest stay in `train`, which `label` labels. 0: no "
                                "`weak` split.", at_least=0)
    name: str = "cifar10"  # cifar10 or cifar100: the command, not an option
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)


@dataclass(frozen=True, kw_only=True)
class PrepareFolderConfig(Shards, Noise):
    src: str = option(help="The folder of class folders.", argument=True, path="dir!")
    out: str = like(field_of(Shards, "out"), options.NO_DEFAULT, help="Output directory for the shards.")
    split: str = option("train", "Split name used in the shard names and manifest (for a single class tree).")
    seed: int = option(0, "Seed of the sample shuffle across shards.")
    prefix: str | None = option(None, "Shard name prefix [default: the folder's name].")
    noise_map: str | None = option(None, '--label-noise asymmetric:R: a JSON file mapping class folder names to the '
                                         'class each is mistaken for, e.g. {"cat": "dog", "dog": "cat"}; classes it '
                                         'does not name keep their labels.', path="file!")
    noise_splits: tuple[str, ...] | None = option(None, "--label-noise: the splits to noise, comma-separated [default: "
                                                        "every split but val, valid, validation and test].")
    workers: int = option(1, "Processes writing shards side by side, each reading its shard's files. A killed prepare "
                             "run again writes only the shards it lacks (the plan of every shard is fixed first and "
                             "kept in OUT/.prepare.json); a finished one says so and writes nothing.", at_least=1)
    progress: bool = option(True, "No progress bar (files per second).", flag="--quiet", negate=True)
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)


@dataclass(frozen=True, kw_only=True)
class PrepareHfConfig(Shards):
    src: str = option(help="The data set's directory: save_to_disk's, or Parquet files as the Hub holds them.",
                      argument=True, path="dir!")
    out: str = like(field_of(Shards, "out"), options.NO_DEFAULT, help="Output directory for the shards.")
    split: str = option("train", "The split's name where DIR is a single Dataset (save_to_disk of one split).")
    prefix: str | None = option(None, "Shard name prefix [default: the directory's name].")
    image_column: str | None = option(None, "The image column [default: the one of type Image in the features].")
    label_column: str | None = option(None, "The label column [default: the one of type ClassLabel, whose names are "
                                            "the classes].")
    progress: bool = option(True, "No progress bar.", flag="--quiet", negate=True)
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)
