"""The dataset registry: built-in entries plus a user TOML file; a literal shard pattern works too.

User file (`$W2S_DATASETS`, else `<workspace>/datasets.toml`):

    [datasets.mydata]
    num_classes = 100
    label_split = "train"          # the split `label` uses by default
    val_split = "val"
    image_field = "jpg;png"        # tried in order
    label_field = "cls"            # or "" when the shards carry no ground truth
    splits = { train = "/data/my-train-{0000..0099}.tar", val = "s3://bucket/my-val-{0000..0009}.tar" }
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import W2SError
from ..runtime.workspace import data_root, workspace_dir
from . import fashion_mnist
from .shards import expand_pattern, read_manifest

IMAGE_FIELDS = "jpg;jpeg;png;webp"


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    splits: dict[str, str]  # split -> shard pattern; ${W2S_DATA}, ${W2S_HOME} and ${ENV} are expanded
    label_split: str
    num_classes: int
    val_split: str | None = None
    image_field: str = IMAGE_FIELDS
    label_field: str | None = "cls"
    class_names: tuple[str, ...] | None = None
    hint: str = ""  # appended to the error when the shards are missing
    novel_split: str | None = None  # classes never trained on: what `eval --episodes` scores by default
    parts: tuple[tuple[str, str], ...] = ()  # (split, the split it is a fixed part of): digits' select and test


def _digits(name: str, splits: tuple[str, ...], classes: int, hint: str) -> DatasetEntry:
    """A digits data set made by `prepare digits`: PNG shards `<name>-<split>-*.tar` under
    ${W2S_DATA}/<name>, labelled by transfer, validated on val, classes named by their digit."""
    return DatasetEntry(name=name, splits={s: "${W2S_DATA}/" + name + "/" + name + "-" + s + "-*.tar" for s in splits},
                        label_split="transfer", val_split="val", num_classes=classes, image_field="png",
                        label_field="cls", class_names=tuple(str(d) for d in range(classes)), hint=hint,
                        novel_split="novel" if "novel" in splits else None,
                        parts=(("select", "val"), ("test", "val")))


BUILTIN = {
    "imagenet": DatasetEntry(
        name="imagenet",
        splits={
            "train": "${W2S_DATA}/imagenet/imagenet-train-{000000..001281}.tar",
            "val": "${W2S_DATA}/imagenet/imagenet-val-{000000..000049}.tar",
        },
        label_split="train",
        val_split="val",
        num_classes=1000,
        image_field="jpg",
        label_field="cls",
        hint="set W2S_DATA to the directory holding imagenet/",
    ),
    # select and test are the two fixed halves of val: a study chooses on one and reports on the other.
    "digits": _digits("digits", ("weak", "transfer", "val", "select", "test"), 10,
                      "run `w2s-pipe prepare digits` first"),
    # Zalando's Fashion-MNIST (prepare fashion-mnist): weak, transfer and select are fixed parts of its 60,000 training
    # images, test its official 10,000, only ever scored; training validates on select, where choices are made.
    # rotation: transfer's images labelled by a turn of 0-3 quarters, a self-supervised backbone's pretext task.
    "fashion-mnist": DatasetEntry(
        name="fashion-mnist",
        splits={s: "${W2S_DATA}/fashion-mnist/fashion-mnist-" + s + "-*.tar" for s in ("weak", "transfer", "select",
                                                                                       "test", "rotation")},
        label_split="transfer", val_split="select", num_classes=10, image_field="png", label_field="cls",
        class_names=fashion_mnist.CLASS_NAMES,
        hint="run `w2s-pipe prepare fashion-mnist` first (with Debian's dataset-fashion-mnist installed)"),
    # The few-shot scenario: digits 0-4 are the base classes (weak, transfer, val), digits 5-9 the novel
    # classes (split `novel`, labelled 0-4 in that order), never trained on (prepare digits --few-shot).
    "digits-fewshot": _digits("digits-fewshot", ("weak", "transfer", "val", "select", "test", "novel"), 5,
                              "run `w2s-pipe prepare digits --few-shot` first"),
    **{name: DatasetEntry(
        name=name,
        splits={s: "${W2S_DATA}/" + name + "/" + name + "-" + s + "-*.tar" for s in ("weak", "train", "test")},
        label_split="train",
        val_split="test",
        num_classes=classes,
        image_field="png",
        label_field="cls",
        hint=f"run `w2s-pipe prepare {name} {archive}` first (with --weak-split N for the weak split)",
    ) for name, classes, archive in (("cifar10", 10, "cifar-10-python.tar.gz"),
                                      ("cifar100", 100, "cifar-100-python.tar.gz"))},
}


@dataclass(frozen=True)
class DataSource:
    """A resolved (dataset, split): the shard URLs and how to read a sample."""

    name: str
    split: str
    pattern: str
    urls: tuple[str, ...]
    image_fields: tuple[str, ...]
    label_field: str | None
    num_classes: int | None
    class_names: tuple[str, ...] | None = None
    label_required: bool = False  # registry entries promise a label on every sample
    val_split: str | None = None
    entry: DatasetEntry | None = field(default=None, repr=False)
    dataset: str | None = None  # a literal pattern's manifest's data set name (`prepare` writes it)
    label_noise: dict | None = None  # set by noise.scored_on_clean: label_field is then the clean labels


def describe_registry(workspace=None) -> list[str]:
    """`w2s-pipe datasets`: each data set the registry knows, with its classes and splits."""
    lines = []
    for name, entry in sorted(load_registry(workspace).items()):
        parts = dict(entry.parts)
        splits = ", ".join(f"{s}{'*' if s == entry.label_split else ''}" for s in entry.splits if s not in parts)
        halves = sorted({of for of in parts.values()})
        for of in halves:
            splits += f" ({' and '.join(s for s, o in entry.parts if o == of)}: fixed parts of {of})"
        lines.append(f"{name}: {entry.num_classes} classes; splits {splits}")
    return [*lines, f"(* the split `label` uses by default; user entries: {user_registry_path(workspace)})"]


def user_registry_path(workspace=None) -> Path:
    return Path(os.environ.get("W2S_DATASETS") or workspace_dir(workspace) / "datasets.toml")


def load_registry(workspace=None) -> dict[str, DatasetEntry]:
    registry = dict(BUILTIN)
    path = user_registry_path(workspace)
    if path.is_file():
        registry.update(_read_toml(path))
    elif os.environ.get("W2S_DATASETS"):
        raise W2SError(f"W2S_DATASETS points to {path}, which does not exist")
    return registry


def _read_toml(path: Path) -> dict[str, DatasetEntry]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise W2SError(f"{path}: cannot read dataset registry ({exc})") from None
    entries = {}
    for name, spec in (doc.get("datasets") or {}).items():
        where = f"{path}: datasets.{name}"
        if not isinstance(spec, dict):
            raise W2SError(f"{where} must be a table")
        unknown = set(spec) - {"splits", "label_split", "val_split", "num_classes", "image_field", "label_field",
                               "class_names", "novel_split"}
        if unknown:
            raise W2SError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        splits = spec.get("splits")
        if not isinstance(splits, dict) or not splits or not all(isinstance(v, str) for v in splits.values()):
            raise W2SError(f"{where}.splits must be a table of split = \"shard pattern\"")
        label_split = spec.get("label_split", next(iter(splits)))
        if label_split not in splits:
            raise W2SError(f"{where}.label_split {label_split!r} is not one of its splits {sorted(splits)}")
        num_classes = spec.get("num_classes")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise W2SError(f"{where}.num_classes must be an integer >= 2, got {num_classes!r}")
        names = spec.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != num_classes):
            raise W2SError(f"{where}.class_names must list {num_classes} names")
        entries[name] = DatasetEntry(
            name=name,
            splits=dict(splits),
            label_split=label_split,
            val_split=spec.get("val_split"),
            num_classes=num_classes,
            image_field=spec.get("image_field", IMAGE_FIELDS),
            label_field=spec.get("label_field", "cls") or None,
            class_names=tuple(names) if names else None,
            novel_split=_novel_of(spec, splits, where),
        )
    return entries


def _novel_of(spec: dict, splits: dict, where: str) -> str | None:
    novel = spec.get("novel_split")
    if novel is not None and novel not in splits:
        raise W2SError(f"{where}.novel_split {novel!r} is not one of its splits {sorted(splits)}")
    return novel


def novel_data(data: str, workspace=None) -> tuple[str, str] | None:
    """(data, split) of `data`'s novel split (classes never trained on: the few-shot protocol's), or
    None: a registry entry's `novel_split`, or for a shard pattern made by `prepare folder` from
    train/val/test folders of disjoint classes, its manifest's first novel split (test before val)."""
    registry = load_registry(workspace)
    if data in registry:
        novel = registry[data].novel_split
        return (data, novel) if novel else None
    if not looks_like_pattern(data):
        return None
    urls = expand_pattern(expand_vars(data, workspace), where="--data")
    directory = urls[0].rsplit("/", 1)[0] if "/" in urls[0] else "."
    manifest = read_manifest(directory) or {}
    novel = manifest.get("novel_splits") or {}
    if not novel or not isinstance(manifest.get("dataset"), str):
        return None
    split = "test" if "test" in novel else next(iter(novel))
    return os.path.join(directory, f"{manifest['dataset']}-{split}-*.tar"), split


def expand_vars(pattern: str, workspace=None) -> str:
    defaults = {"W2S_DATA": data_root(workspace), "W2S_HOME": str(workspace_dir(workspace))}

    def sub(m: re.Match) -> str:
        var = m.group(1)
        value = defaults.get(var) if var in defaults else os.environ.get(var)
        if value is None:
            raise W2SError(f"shard pattern {pattern} uses ${{{var}}}, which is not set")
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, pattern)


def _manifest_names(urls: list[str], storage_options: dict | None) -> tuple[str, ...] | None:
    """Class names from the manifest beside the shards (prepare writes one), if any."""
    directory = urls[0].rsplit("/", 1)[0] if "/" in urls[0] else "."
    names = (read_manifest(directory, storage_options) or {}).get("class_names")
    return tuple(names) if names else None


def looks_like_pattern(data: str) -> bool:
    return any(s in data for s in ("/", "://", ".tar", "{", "*")) or os.path.exists(data)


def resolve_data(
    data: str,
    split: str | None = None,
    *,
    workspace=None,
    num_classes: int | None = None,
    storage_options: dict | None = None,
) -> DataSource:
    """Resolve `--data` (a registry name or a literal shard pattern) and `--split` to shard URLs."""
    registry = load_registry(workspace)
    if data in registry:
        entry = registry[data]
        split = split or entry.label_split
        if split not in entry.splits:
            raise W2SError(f"dataset {data!r} has no split {split!r}; its splits are {', '.join(entry.splits)}")
        pattern = expand_vars(entry.splits[split], workspace)
        try:
            urls = expand_pattern(pattern, storage_options, where=f"dataset {data!r} split {split!r}")
        except W2SError as exc:
            raise W2SError(f"{exc}; {entry.hint}" if entry.hint else str(exc)) from None
        if num_classes is not None and num_classes != entry.num_classes:
            raise W2SError(f"--num-classes {num_classes} contradicts dataset {data!r}, which has {entry.num_classes}",
                           option="--num-classes")
        return DataSource(
            name=data,
            split=split,
            pattern=pattern,
            urls=tuple(urls),
            image_fields=tuple(f for f in entry.image_field.split(";") if f),
            label_field=entry.label_field,
            num_classes=entry.num_classes,
            class_names=entry.class_names or _manifest_names(urls, storage_options),
            val_split=entry.val_split,
            label_required=entry.label_field is not None,
            entry=entry,
        )
    if not looks_like_pattern(data):
        close = difflib.get_close_matches(data, registry, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise W2SError(
            f"unknown dataset {data!r}; {hint}known datasets: {', '.join(sorted(registry))}, "
            "or pass a shard pattern such as /data/train-{000000..000127}.tar"
        )
    if num_classes is not None and num_classes < 2:
        raise W2SError(f"--num-classes must be at least 2, got {num_classes}", option="--num-classes")
    pattern = expand_vars(data, workspace)
    if os.path.isdir(pattern):
        shards = sorted(f for f in os.listdir(pattern) if f.endswith(".tar"))
        example = os.path.join(pattern, shards[0].rsplit("-", 1)[0] + "-*.tar") if shards else pattern + "/*.tar"
        raise W2SError(f"--data {data} is a directory: give a pattern of its shards (such as {example}) or a registry "
                       "name (`w2s-pipe datasets`)", option="--data")
    urls = expand_pattern(pattern, storage_options, where="--data")
    # Shards made by `prepare` carry a manifest with the classes.
    manifest = read_manifest(urls[0].rsplit("/", 1)[0] if "/" in urls[0] else ".", storage_options) or {}
    listed = manifest.get("num_classes")
    if num_classes is not None and listed is not None and num_classes != listed:
        raise W2SError(f"--num-classes {num_classes} contradicts the shards' manifest, which lists {listed} classes",
                       option="--num-classes")
    names = manifest.get("class_names")
    return DataSource(
        name="shards",
        split=split or "train",
        pattern=pattern,
        urls=tuple(urls),
        image_fields=tuple(IMAGE_FIELDS.split(";")),
        label_field="cls",
        num_classes=num_classes if num_classes is not None else listed,
        class_names=tuple(names) if names else None,
        dataset=manifest.get("dataset") if isinstance(manifest.get("dataset"), str) else None,
    )
