"""A Hugging Face data set on disk, read with pyarrow alone, a record batch at a time
(`prepare hf DIR`): never the whole set in memory, and no `datasets` library needed.

Layouts:
- `save_to_disk` of a DatasetDict: DIR/dataset_dict.json lists the splits, DIR/<split>/data-*.arrow
  (Arrow IPC streams) hold the rows; of a single Dataset: DIR/data-*.arrow (the split is --split);
- Parquet, as the Hub holds it and `to_parquet` writes: DIR/**/<split>-NNNNN-of-NNNNN.parquet, or
  DIR/<split>/*.parquet (the Hub's converted layout), or DIR/<split>.parquet.

The columns come from the files' `huggingface` schema metadata (the data set's features): the
image column is the one of type Image ({bytes, path} per row), the label column the one of type
ClassLabel, whose names are the classes; --image-column and --label-column choose others.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import W2SError

BATCH_ROWS = 256  # rows per record batch read: one batch of images in memory at a time
MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"))


@dataclass(frozen=True)
class HfSplit:
    name: str
    files: tuple[Path, ...]  # in order


def find_splits(root: Path, split: str = "train") -> list[HfSplit]:
    """The data set's splits and their files, in order; one line naming DIR where none is found."""
    if (root / "dataset_dict.json").is_file():
        names = json.loads((root / "dataset_dict.json").read_text()).get("splits") or []
        return [HfSplit(n, tuple(sorted((root / n).glob("data-*.arrow")))) for n in names]
    arrows = sorted(root.glob("data-*.arrow"))
    if arrows:
        return [HfSplit(split, tuple(arrows))]
    by_split: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.parquet")):
        sharded = re.fullmatch(r"(.+?)-\d+-of-\d+\.parquet", path.name)
        name = sharded.group(1) if sharded else (path.parent.name if path.parent != root else path.stem)
        by_split.setdefault(name, []).append(path)
    if not by_split:
        raise W2SError(f"prepare hf: {root} holds no data set: neither save_to_disk's dataset_dict.json or "
                       "data-*.arrow, nor *.parquet files")
    return [HfSplit(n, tuple(f)) for n, f in by_split.items()]


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        if path.suffix == ".parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        else:
            with pa.memory_map(str(path)) as source:
                yield from pa.ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise W2SError(f"prepare hf: {path} cannot be read as {'Parquet' if path.suffix == '.parquet' else 'an Arrow stream'}"
                       f" ({str(exc).splitlines()[0][:160]})") from None


def _schema(path: Path) -> pa.Schema:
    try:
        if path.suffix == ".parquet":
            return pq.read_schema(path)
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise W2SError(f"prepare hf: {path} cannot be read ({str(exc).splitlines()[0][:160]})") from None


def features(schema: pa.Schema) -> dict:
    """The data set's features (name -> {"_type": ...}) from a file's schema metadata ({} if none)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    return (json.loads(meta).get("info") or {}).get("features") or {} if meta else {}


def columns(path: Path, image_column: str | None, label_column: str | None) -> tuple[str, str | None, list | None]:
    """(the image column, the label column or None, the class names or None) of a split's file."""
    schema = _schema(path)
    names, feats = schema.names, features(schema)
    image = image_column or next((n for n, f in feats.items() if isinstance(f, dict) and f.get("_type") == "Image"),
                                 None)
    if image is None or image not in names:
        raise W2SError(f"prepare hf: {path} has no image column{f' {image!r}' if image else ''} (columns: "
                       f"{', '.join(names)}); give --image-column", option="--image-column")
    label = label_column or next((n for n, f in feats.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"),
                                 None)
    if label is not None and label not in names:
        raise W2SError(f"prepare hf: {path} has no label column {label!r} (columns: {', '.join(names)})",
                       option="--label-column")
    classes = (feats.get(label) or {}).get("names") if label else None
    return image, label, classes


def image_field(data: bytes, where: str) -> str:
    """The shard field of an encoded image, by its first bytes."""
    for magic, field in MAGIC:
        if data.startswith(magic):
            return field
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise W2SError(f"prepare hf: {where}: image bytes of an unknown format (not JPEG, PNG, GIF or WebP)")


def rows(split: HfSplit, root: Path, image: str, label: str | None) -> Iterator[dict]:
    """The split's samples in file order, as shard samples: `__key__` (the row's position in the
    split), the image under its format's field, `cls` where there is a label, `txt` the image's path
    where the row has one."""
    n = 0
    for path in split.files:
        for batch in _batches(path):
            data = {c: batch.column(c).to_pylist() for c in (image, label) if c is not None}
            for i, cell in enumerate(data[image]):
                where = f"{path.name} row {n}"
                blob, src = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
                if blob is None and src:
                    blob = _read(root, src, where)
                if not blob:
                    raise W2SError(f"prepare hf: {where}: no image bytes")
                sample = {"__key__": f"{n:08d}", image_field(blob, where): blob}
                if label is not None:
                    value = data[label][i]
                    if value is None or int(value) < 0:
                        raise W2SError(f"prepare hf: {where}: no label in column {label!r} (an unlabelled row)")
                    sample["cls"] = int(value)
                if src:
                    sample["txt"] = str(src)
                yield sample
                n += 1


def _read(root: Path, src: str, where: str) -> bytes:
    for candidate in (Path(src), root / src):
        if candidate.is_file():
            return candidate.read_bytes()
    raise W2SError(f"prepare hf: {where}: its image is a path, {src}, which is not a file here")
