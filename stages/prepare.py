"""Turn data into WebDataset shards with a manifest: scikit-learn's digits, the CIFAR archives, an
ImageFolder tree, or a Hugging Face data set saved to disk.

    w2s-pipe prepare digits
    w2s-pipe prepare cifar100 ~/Downloads/cifar-100-python.tar.gz --weak-split 10000
    w2s-pipe prepare folder ~/photos --out ~/shards/photos
    w2s-pipe prepare hf ~/hf/beans --out ~/shards/beans      # a Hugging Face data set saved to disk
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from tqdm import tqdm

from ..errors import W2SError
from ..pipeline.runtime.workspace import data_root
from ..pipeline.sources import fashion_mnist
from ..pipeline.sources import huggingface as hf
from ..pipeline.sources.archives import read_cifar
from ..pipeline.sources.noise import (
    CIFAR10_MAP,
    CLEAN_FIELD,
    DIGITS_MAP,
    EVALUATION_SPLITS,
    LabelNoise,
    read_noise_map,
    superclass_map,
)
from ..pipeline.sources.planned_shards import PlannedShard, check_plan, described, finished, stamps, write_planned
from ..pipeline.sources.shards import Shard, read_manifest, write_manifest, write_shard
from ..storage.fsutil import check_writable
from .prepare_config import PrepareCifarConfig, PrepareDigitsConfig, PrepareFashionConfig, PrepareHfConfig

# Fixed, seeded split of the 1797 digits: the weak model's ground truth, what it labels, validation
# (whose two fixed halves are also written as `select` and `test`).
DIGITS_SPLITS = (("weak", 600), ("transfer", 897), ("val", 300))
DIGITS_SEED = 0
IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


@dataclass
class PrepareResult:
    out: str
    splits: dict[str, list[Shard]]
    data: str | None = None  # how `--data` names it, said in the summary: a registry name, "patterns" (each
    # split's shard pattern), or None (nothing said: digits' own default place)
    parts: dict = field(default_factory=dict)  # split -> the split it is a part of (digits' select and test: val)
    written: int | None = None  # shards written by this call (prepare folder, resumable); None: all of them

    @property
    def samples(self) -> int:
        """Distinct samples: a split that is a part of another is not counted twice."""
        return sum(s.count for split, shards in self.splits.items() if split not in self.parts for s in shards)

    def summary(self) -> list[str]:
        lines = []
        for split, shards in self.splits.items():
            use = f"; use --data '{self.out}/{shards[0].name.rsplit('-', 1)[0]}-*.tar'" if self.data == "patterns" else ""
            part = f" (a part of {self.parts[split]})" if split in self.parts else ""
            lines.append(f"{split}: {sum(s.count for s in shards)} samples in {len(shards)} shards{part}{use}")
        named = self.data and self.data != "patterns"
        shards = sum(len(v) for v in self.splits.values())
        if self.written == 0:
            return [*lines, f"already complete: {self.samples} samples in {shards} shards in {self.out}; nothing written"]
        resumed = f" ({shards - self.written} of {shards} shards were already there)" if self.written else ""
        return [*lines, f"wrote {self.samples} samples to {self.out}{resumed}" + (f"; use --data {self.data}" if named
                                                                                   else "")]


def run_prepare(cfg) -> PrepareResult:
    """`prepare digits|fashion-mnist|cifar10|cifar100|folder|hf` from its config (stages/prepare_config.py);
    an output on a read-only place is one line before any work."""
    default = {PrepareFashionConfig: "fashion-mnist", PrepareCifarConfig: getattr(cfg, "name", None),
               PrepareDigitsConfig: "digits-fewshot" if getattr(cfg, "few_shot", False) else "digits"}.get(type(cfg))
    check_writable(cfg.out or default_data_dir(default, cfg.workspace), "prepare: the output")
    if isinstance(cfg, PrepareHfConfig):
        return prepare_hf(cfg.src, cfg.out, split=cfg.split, shard_size=cfg.shard_size, prefix=cfg.prefix,
                          image_column=cfg.image_column, label_column=cfg.label_column, progress=cfg.progress)
    if isinstance(cfg, PrepareFashionConfig):
        return prepare_fashion_mnist(cfg.src, cfg.out or default_data_dir("fashion-mnist", cfg.workspace),
                                     shard_size=cfg.shard_size)
    noise = LabelNoise.parse(cfg.label_noise, cfg.noise_seed) if cfg.label_noise else None
    if isinstance(cfg, PrepareDigitsConfig):
        name = "digits-fewshot" if cfg.few_shot else "digits"
        return prepare_digits(cfg.out or default_data_dir(name, cfg.workspace), shard_size=cfg.shard_size,
                              noise=noise, few_shot=cfg.few_shot)
    if isinstance(cfg, PrepareCifarConfig):
        return prepare_cifar(cfg.name, cfg.archive, cfg.out or default_data_dir(cfg.name, cfg.workspace),
                             shard_size=cfg.shard_size, weak_split=cfg.weak_split, noise=noise)
    return prepare_folder(cfg.src, cfg.out, split=cfg.split, shard_size=cfg.shard_size, seed=cfg.seed,
                          prefix=cfg.prefix, noise=noise, noise_map=cfg.noise_map, noise_splits=cfg.noise_splits,
                          workers=cfg.workers, progress=cfg.progress)


def prepare_fashion_mnist(src: str, out: str, shard_size: int = 1000) -> PrepareResult:
    """Fashion-MNIST's four IDX files in `src` (checked: sources/fashion_mnist.py) as grey PNG shards:
    weak, transfer and select, fixed parts of the training images, test, the official 10,000, and
    rotation, transfer's images turned and labelled by the turn (a self-supervised pretext task);
    keys `fashion_train_NNNNN`, `fashion_test_NNNNN` and `fashion_rotated_NNNNN` (the image's index in
    its file). The manifest records each file's sha256."""
    data = fashion_mnist.load(src)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("fashion-mnist-*.tar"):
        stale.unlink()
    images, labels = data["train"]
    chosen = {split: ("train", index) for split, index in fashion_mnist.split_indices(len(images)).items()}
    chosen["test"] = ("test", np.arange(len(data["test"][0])))
    splits = {}
    for split, (part, index) in chosen.items():
        pixels, classes = data[part]
        samples = ({"__key__": f"fashion_{part}_{i:05d}", "png": _png(pixels[i]), "cls": int(classes[i])}
                   for i in index)
        splits[split] = _write_split(out_dir, f"fashion-mnist-{split}", samples, shard_size)
    index = chosen["transfer"][1]
    turned, turns = fashion_mnist.rotations(images[index])
    samples = ({"__key__": f"fashion_rotated_{i:05d}", "png": _png(img), "cls": int(k)}
               for i, img, k in zip(index, turned, turns))
    splits["rotation"] = _write_split(out_dir, "fashion-mnist-rotation", samples, shard_size)
    write_manifest(str(out_dir), splits, dataset="fashion-mnist", num_classes=10,
                   class_names=list(fashion_mnist.CLASS_NAMES),
                   source={"dir": os.path.abspath(src), "sha256": data["files"], "seed": fashion_mnist.SEED})
    return PrepareResult(str(out_dir), splits, data="fashion-mnist")


def _png(pixels: np.ndarray) -> bytes:
    """(H, W) grey or (H, W, 3) RGB uint8 as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write_split(out: Path, prefix: str, samples, shard_size: int) -> list[Shard]:
    """Samples (any iterable) in shards of shard_size, one shard's samples in memory at a time."""
    shards, batch = [], []
    for sample in samples:
        batch.append(sample)
        if len(batch) == shard_size:
            shards.append(write_shard(str(out / f"{prefix}-{len(shards):06d}.tar"), batch))
            batch = []
    if batch:
        shards.append(write_shard(str(out / f"{prefix}-{len(shards):06d}.tar"), batch))
    return shards


FEW_SHOT_BASE = 5  # prepare digits --few-shot: digits 0-4 are the base classes, 5-9 the novel ones


def prepare_digits(out: str, shard_size: int = 256, noise=None, few_shot: bool = False) -> PrepareResult:
    """scikit-learn's 8x8 digits (a real data set shipped with the package) as PNG shards.

    Keys are `digits_<index in load_digits()>`; the split is fixed by DIGITS_SEED. With `noise` (a
    noise.LabelNoise) the training splits (weak and transfer) carry noisy labels, val stays clean.
    With `few_shot` (the data set `digits-fewshot`) the three splits keep digits 0-4 only (the base
    classes) and a fourth, `novel`, holds every image of digits 5-9, labelled 0-4 in that order.
    """
    if shard_size < 1:
        raise W2SError(f"--shard-size {shard_size} is invalid: must be at least 1", option="--shard-size")
    if noise is not None and few_shot:  # the noise would move base digits to novel ones (4→9), outside 0-4
        raise W2SError("--label-noise and --few-shot are separate scenarios of the paper: prepare one of them",
                       option="--label-noise")
    digits = load_digits()
    # 0..16 gray levels -> 0..255, exactly invertible.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(pixels))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "digits-fewshot" if few_shot else "digits"
    for stale in out_dir.glob(f"{prefix}-*.tar"):
        stale.unlink()
    clean = np.asarray(digits.target, dtype=np.int64)
    labels, extra, noised = clean, {}, ("weak", "transfer")
    if noise is not None:
        training = order[:DIGITS_SPLITS[0][1] + DIGITS_SPLITS[1][1]]  # the weak and transfer splits, in split order
        labels = clean.copy()
        labels[training], extra["label_noise"] = noise.corrupt(clean[training], 10, list(noised), DIGITS_MAP)
    splits, first, chosen_in = {}, 0, {}
    for split, size in DIGITS_SPLITS:
        chosen = order[first : first + size]
        first += size
        if few_shot:
            chosen = chosen[clean[chosen] < FEW_SHOT_BASE]
        chosen_in[split] = chosen
    # select and test: the two fixed halves of val, for a study that chooses a hyperparameter on one
    # and reports on the other (val itself stays whole: what every run validates on).
    half = len(chosen_in["val"]) // 2
    chosen_in.update(select=chosen_in["val"][:half], test=chosen_in["val"][half:])
    for split, chosen in chosen_in.items():
        samples = [{"__key__": f"digits_{i:04d}", "png": _png(pixels[i]), "cls": int(labels[i]),
                    **({CLEAN_FIELD: int(clean[i])} if noise is not None and split in noised else {})} for i in chosen]
        splits[split] = _write_split(out_dir, f"{prefix}-{split}", samples, shard_size)
    names = [str(d) for d in range(10)]
    if few_shot:
        novel = order[clean[order] >= FEW_SHOT_BASE]
        samples = [{"__key__": f"digits_{i:04d}", "png": _png(pixels[i]), "cls": int(clean[i]) - FEW_SHOT_BASE}
                   for i in novel]
        splits["novel"] = _write_split(out_dir, f"{prefix}-novel", samples, shard_size)
        extra["novel"] = {"split": "novel", "class_names": names[FEW_SHOT_BASE:],
                          "note": "classes never trained on, labelled 0.. in this order: eval --episodes"}
        names = names[:FEW_SHOT_BASE]
    write_manifest(str(out_dir), splits, dataset=prefix, num_classes=len(names), class_names=names, **extra)
    return PrepareResult(str(out_dir), splits, parts={"select": "val", "test": "val"})


def prepare_folder(src: str, out: str, split: str = "train", shard_size: int = 1000, seed: int = 0,
                   prefix: str | None = None, noise=None, noise_map: str | None = None,
                   noise_splits: tuple[str, ...] | None = None, workers: int = 1,
                   progress: bool = False) -> PrepareResult:
    """An ImageFolder tree (one sub-folder per class, sorted names -> class index) as shuffled shards
    `<prefix>-<split>-NNNNNN.tar`; or, when SRC holds a `train/` folder of class folders (the
    ImageNet layout: `train/` and `val/`, one folder per class in each), every such split folder
    of SRC in one call, with one class numbering (the sorted names of all of them).

    Samples are shuffled with `seed` so that every shard mixes classes; each sample keeps its
    original relative path in a `txt` field. With `noise` (a noise.LabelNoise; asymmetric needs
    `noise_map`, a JSON file read by noise.read_noise_map) the labels of `noise_splits` (default:
    every split but val, valid, validation and test) are noised once, in sorted file order, the
    clean label kept beside.

    Splits whose classes the train split never has (train/val/test of disjoint classes, as
    miniImageNet and CIFAR-FS ship) keep their own classes, numbered 0.. in sorted order, and are
    marked novel in the manifest (`novel_splits`), which `eval --episodes` scores by default.

    `workers` processes write shards side by side (pipeline/sources/planned_shards.py); a killed
    prepare run again writes only the shards it lacks, and a finished one writes nothing.
    """
    root = Path(src)
    if not root.is_dir():
        raise W2SError(f"prepare folder: {src} is not a directory")
    if shard_size < 1:
        raise W2SError(f"--shard-size {shard_size} is invalid: must be at least 1", option="--shard-size")
    if (root / "train").is_dir() and _subdirs(root / "train"):
        split_dirs = {d: root / d for d in _subdirs(root)}
        prefix = prefix or root.resolve().name
    else:
        split_dirs = {split: root}
        prefix = prefix or root.resolve().name
    for name in split_dirs:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise W2SError(f"prepare folder: split {name!r} is invalid: use letters, digits, '-' and '_'")
    per_split = {name: _subdirs(d) for name, d in split_dirs.items()}
    # A split whose classes the train split never has (miniImageNet's, CIFAR-FS's val and test) is a
    # novel split: its classes numbered on their own, never trained on, what few-shot evaluation scores.
    novel = {n: c for n, c in per_split.items() if "train" in per_split and n != "train" and c
             and not set(c) & set(per_split["train"])}
    classes = sorted({c for n, names in per_split.items() if n not in novel for c in names})
    if len(classes) < 2:
        raise W2SError(f"prepare folder: {src} needs at least two class sub-folders, found {len(classes)}")
    listed = {}
    for name, directory in split_dirs.items():
        index = {c: i for i, c in enumerate(novel.get(name, classes))}
        listed[name] = [(path, index[c]) for c in _subdirs(directory) for path in sorted((directory / c).rglob("*"))
                        if path.is_file() and path.suffix.lower() in IMAGE_EXTS]
        if not listed[name]:
            raise W2SError(f"prepare folder: no images ({', '.join(sorted(IMAGE_EXTS))}) under {directory}")
    noisy, extra = _folder_noise({n: f for n, f in listed.items() if n not in novel}, classes, noise, noise_map,
                                 noise_splits)  # a novel split's labels are its own classes': never noised
    if novel:
        extra["novel_splits"] = {n: {"class_names": c, "note": "classes the train split never has, numbered 0.. in "
                                                                "this order: eval --episodes scores them"}
                                 for n, c in novel.items()}
    plan = _folder_plan(listed, noisy, root, prefix, shard_size, seed)
    split_stamps = stamps(plan, {"classes": classes, "seed": seed, **extra})
    check_plan(out, plan, split_stamps)
    manifest = read_manifest(out) or {}
    if finished(out, plan) == {s.name for s in plan} and set(listed) <= set(manifest.get("splits", {})):
        return PrepareResult(out, described(out, plan), data="patterns", written=0)  # finished: nothing written
    splits, written = write_planned(plan, out, str(root), workers=workers, progress=progress,
                                    split_stamps=split_stamps)
    write_manifest(out, splits, dataset=prefix, num_classes=len(classes), class_names=classes, **extra)
    return PrepareResult(out, splits, data="patterns", written=written)


def _folder_plan(listed: dict[str, list], noisy: dict, root: Path, prefix: str, shard_size: int,
                 seed: int) -> list[PlannedShard]:
    """Every shard of every split, fixed before anything is written: each split's files shuffled with
    `seed` (so that every shard mixes classes), cut into shards of `shard_size`; a sample keeps its
    path relative to the root in `txt`, and under --label-noise its clean label beside the noisy one."""
    plan = []
    for name, files in listed.items():
        order = np.random.default_rng(seed).permutation(len(files))
        labels = noisy.get(name)
        samples = []
        for n, i in enumerate(order):
            path, label = files[i]
            rel = str(path.relative_to(root))
            noised = {} if labels is None else {"cls": int(labels[i]), CLEAN_FIELD: label}
            samples.append((rel, IMAGE_EXTS[path.suffix.lower()],
                            {"__key__": f"{n:08d}", "cls": label, "txt": rel, **noised}))
        for k in range(0, len(samples), shard_size):
            plan.append(PlannedShard(name, f"{prefix}-{name}-{k // shard_size:06d}.tar",
                                     tuple(samples[k: k + shard_size])))
    return plan


def _folder_noise(listed: dict[str, list], classes: list[str], noise, noise_map: str | None,
                  noise_splits: tuple[str, ...] | None) -> tuple[dict, dict]:
    """({split: its noisy labels in file order}, the manifest's extra fields) of `prepare folder
    --label-noise`: the chosen splits' labels, concatenated in split order, noised once."""
    if noise is None:
        if noise_map or noise_splits:
            raise W2SError(f"--{'noise-map' if noise_map else 'noise-splits'} is only for --label-noise")
        return {}, {}
    if noise_map and noise.kind != "asymmetric":
        raise W2SError("--noise-map is the asymmetric noise's map: use it with --label-noise asymmetric:R",
                       option="--noise-map")
    if noise.kind == "asymmetric" and not noise_map:
        raise W2SError("--label-noise asymmetric on a folder needs --noise-map FILE: a JSON object of class folder name "
                       'to the class it is mistaken for, e.g. {"cat": "dog", "dog": "cat"}', option="--label-noise")
    chosen = list(noise_splits) if noise_splits else [n for n in listed if n not in EVALUATION_SPLITS]
    unknown = [n for n in chosen if n not in listed]
    if unknown or not chosen:
        raise W2SError(f"--noise-splits: {'split ' + repr(unknown[0]) + ' is not' if unknown else 'no split is'} one "
                       f"to noise; the splits are {', '.join(listed)}" + ("" if unknown else
                                                                          " (val, valid, validation and test are "
                                                                          "noised only when named)"),
                                                                          option="--noise-splits")
    mapping = read_noise_map(noise_map, classes) if noise_map else None
    clean = np.concatenate([np.array([label for _, label in listed[n]], dtype=np.int64) for n in chosen])
    noisy, record = noise.corrupt(clean, len(classes), chosen, mapping)
    bounds = np.cumsum([0] + [len(listed[n]) for n in chosen])
    return {n: noisy[bounds[i]:bounds[i + 1]] for i, n in enumerate(chosen)}, {"label_noise": record}


def prepare_hf(src: str, out: str, *, split: str = "train", shard_size: int = 1000, prefix: str | None = None,
               image_column: str | None = None, label_column: str | None = None, progress: bool = False) -> PrepareResult:
    """A Hugging Face data set saved to disk (save_to_disk's Arrow files, or Parquet as the Hub holds
    them) as shards `<prefix>-<split>-NNNNNN.tar`, streamed a record batch at a time
    (pipeline/sources/huggingface.py); the ClassLabel's names are the manifest's classes."""
    root = Path(src)
    if shard_size < 1:
        raise W2SError(f"--shard-size {shard_size} is invalid: must be at least 1", option="--shard-size")
    found = hf.find_splits(root, split)
    prefix = prefix or root.resolve().name
    chosen, names = {}, None
    for part in found:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", part.name) or not part.files:
            raise W2SError(f"prepare hf: split {part.name!r} of {src} is invalid (use letters, digits, '-' and '_') or "
                           "holds no file")
        image, label, classes = hf.columns(part.files[0], image_column, label_column)
        if names is not None and classes and classes != names:
            raise W2SError(f"prepare hf: split {part.name!r} has other classes than {found[0].name!r}")
        names = names or classes
        chosen[part.name] = (image, label)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    with tqdm(unit="image", disable=not progress, desc=f"prepare {prefix}", dynamic_ncols=True) as bar:
        for part in found:
            image, label = chosen[part.name]
            samples = (bar.update(1) or sample for sample in hf.rows(part, root, image, label))
            splits[part.name] = _write_split(out_dir, f"{prefix}-{part.name}", samples, shard_size)
    extra = {"num_classes": len(names), "class_names": names} if names else {}
    write_manifest(str(out_dir), splits, dataset=prefix, **extra)
    return PrepareResult(str(out_dir), splits, data="patterns")


def _subdirs(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def default_digits_dir(workspace=None) -> str:
    return default_data_dir("digits", workspace)


def default_data_dir(name: str, workspace=None) -> str:
    return os.path.join(data_root(workspace), name)


CIFAR_SEED = 0


def prepare_cifar(name: str, archive: str, out: str, shard_size: int = 1000, weak_split: int = 0,
                  noise=None) -> PrepareResult:
    """A CIFAR python archive as PNG shards `<name>-<split>-NNNNNN.tar`: train (what the weak model
    labels) and test (validation), and with `weak_split` N > 0 a `weak` split of N training images
    (a fixed seeded choice) for the weak model's ground truth, taken out of train. Keys are
    `<name>_<split>_<index in the archive's split>`; the manifest carries the class names. With
    `noise` (a noise.LabelNoise) the archive's whole training set is noised once, as the official
    code does (CIFAR-10's map, CIFAR-100's superclass shift), before the weak split is carved out;
    test stays clean."""
    if shard_size < 1:
        raise W2SError(f"--shard-size {shard_size} is invalid: must be at least 1", option="--shard-size")
    splits_in, class_names = read_cifar(archive, name)
    train = splits_in["train"]
    if not 0 <= weak_split < len(train.labels):
        raise W2SError(f"--weak-split {weak_split} is invalid: between 0 and {len(train.labels) - 1} of the "
                       f"{len(train.labels)} training images", option="--weak-split")
    chosen = np.sort(np.random.default_rng(CIFAR_SEED).permutation(len(train.labels))[:weak_split])
    rest = np.setdiff1d(np.arange(len(train.labels)), chosen)
    plan = {"train": ("train", rest), "test": ("test", np.arange(len(splits_in["test"].labels)))}
    if weak_split:
        plan = {"weak": ("train", chosen), **plan}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{name}-*.tar"):
        stale.unlink()
    noisy, extra = train.labels, {}
    if noise is not None:
        mapping = None
        if noise.kind == "asymmetric" and name == "cifar100":
            if train.coarse is None:
                raise W2SError(f"{archive}: no coarse_labels in its training batch, which CIFAR-100's asymmetric "
                               "noise moves within")
            mapping = superclass_map(train.labels, train.coarse)
        elif noise.kind == "asymmetric":
            mapping = CIFAR10_MAP
        noisy, extra["label_noise"] = noise.corrupt(train.labels, len(class_names),
                                                    [s for s in plan if plan[s][0] == "train"], mapping)
    splits = {}
    for split, (source, indices) in plan.items():
        data = splits_in[source]
        labels = noisy if source == "train" else data.labels
        samples = ({"__key__": f"{name}_{source}_{i:05d}", "png": _png(data.images[i]), "cls": int(labels[i]),
                    **({CLEAN_FIELD: int(data.labels[i])} if noise is not None and source == "train" else {})}
                   for i in indices)
        splits[split] = _write_split(out_dir, f"{name}-{split}", samples, shard_size)
    write_manifest(str(out_dir), splits, dataset=name, num_classes=len(class_names), class_names=class_names, **extra)
    return PrepareResult(str(out_dir), splits, data=name)
