"""Turn data into WebDataset shards with a manifest: scikit-learn's digits, or an ImageFolder tree.

    w2s-pipe prepare digits
    w2s-pipe prepare folder ~/photos --out ~/shards/photos
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import W2SError
from ..pipeline.data.shards import Shard, write_manifest, write_shard

# Fixed, seeded split of the 1797 digits: the weak model's ground truth, what it labels, validation.
DIGITS_SPLITS = (("weak", 600), ("transfer", 897), ("val", 300))
DIGITS_SEED = 0
IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


@dataclass
class PrepareResult:
    out: str
    splits: dict[str, list[Shard]]

    @property
    def samples(self) -> int:
        return sum(s.count for shards in self.splits.values() for s in shards)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write_split(out: Path, prefix: str, samples: list[dict], shard_size: int) -> list[Shard]:
    shards = []
    for n, first in enumerate(range(0, len(samples), shard_size)):
        shards.append(write_shard(str(out / f"{prefix}-{n:06d}.tar"), samples[first : first + shard_size]))
    return shards


def prepare_digits(out: str, shard_size: int = 256) -> PrepareResult:
    """scikit-learn's 8x8 digits (a real data set shipped with the package) as PNG shards.

    Keys are `digits_<index in load_digits()>`; the split is fixed by DIGITS_SEED.
    """
    from sklearn.datasets import load_digits

    if shard_size < 1:
        raise W2SError(f"--shard-size {shard_size} is invalid: must be at least 1")
    digits = load_digits()
    # 0..16 gray levels -> 0..255, exactly invertible.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(pixels))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("digits-*.tar"):
        stale.unlink()
    splits, first = {}, 0
    for split, size in DIGITS_SPLITS:
        chosen = order[first : first + size]
        first += size
        samples = [{"__key__": f"digits_{i:04d}", "png": _png(pixels[i]), "cls": int(digits.target[i])} for i in chosen]
        splits[split] = _write_split(out_dir, f"digits-{split}", samples, shard_size)
    write_manifest(str(out_dir), splits, dataset="digits", num_classes=10, class_names=[str(d) for d in range(10)])
    return PrepareResult(str(out_dir), splits)


def prepare_folder(src: str, out: str, split: str = "train", shard_size: int = 1000, seed: int = 0,
                   prefix: str | None = None) -> PrepareResult:
    """An ImageFolder tree (one sub-folder per class, sorted names -> class index) as shuffled shards.

    Samples are shuffled with `seed` so that every shard mixes classes; each sample keeps its
    original relative path in a `txt` field.
    """
    root = Path(src)
    if not root.is_dir():
        raise W2SError(f"prepare folder: {src} is not a directory")
    if shard_size < 1:
        raise W2SError(f"--shard-size {shard_size} is invalid: must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise W2SError(f"--split {split!r} is invalid: use letters, digits, '-' and '_'")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise W2SError(f"prepare folder: {src} needs at least two class sub-folders, found {len(classes)}")
    files = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
                files.append((path, label))
    if not files:
        raise W2SError(f"prepare folder: no images ({', '.join(sorted(IMAGE_EXTS))}) under {src}")
    order = np.random.default_rng(seed).permutation(len(files))
    prefix = prefix or root.resolve().name
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def samples():
        for n, i in enumerate(order):
            path, label = files[i]
            yield {
                "__key__": f"{n:08d}",
                IMAGE_EXTS[path.suffix.lower()]: path.read_bytes(),
                "cls": label,
                "txt": str(path.relative_to(root)),
            }

    shards, batch = [], []
    for sample in samples():
        batch.append(sample)
        if len(batch) == shard_size:
            shards.append(write_shard(str(out_dir / f"{prefix}-{split}-{len(shards):06d}.tar"), batch))
            batch = []
    if batch:
        shards.append(write_shard(str(out_dir / f"{prefix}-{split}-{len(shards):06d}.tar"), batch))
    write_manifest(str(out_dir), {split: shards}, dataset=prefix, num_classes=len(classes), class_names=classes)
    return PrepareResult(str(out_dir), {split: shards})


def default_digits_dir(workspace=None) -> str:
    from ..pipeline.workspace import data_root

    return os.path.join(data_root(workspace), "digits")
