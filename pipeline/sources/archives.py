"""The CIFAR archives users download (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`): pickled
batches of 32x32 RGB images, read without trusting the pickles.

Each batch is a dict with `data` (N, 3072) uint8, the red, green and blue planes in turn, the labels
(`labels`, or `fine_labels` for CIFAR-100) and `filenames`; the meta file holds the class names.
The unpickler builds numpy arrays and plain containers only: an archive that asks for anything
else is refused, so a tampered download cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass

import numpy as np

from ...errors import W2SError

LAYOUTS = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta",
                "labels": b"labels", "names": b"label_names", "folder": "cifar-10-batches-py"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta", "labels": b"fine_labels",
                 "names": b"fine_label_names", "folder": "cifar-100-python"},
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("builtins", "bytearray")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


@dataclass
class CifarSplit:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64
    filenames: list[str]
    coarse: np.ndarray | None = None  # CIFAR-100's superclass of each image (N,), where the batches carry it


def read_cifar(archive: str, name: str) -> tuple[dict[str, CifarSplit], list[str]]:
    """({"train": ..., "test": ...}, class names) from a CIFAR python archive; errors name the file."""
    layout = LAYOUTS[name]
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}

            def load(member: str) -> dict:
                if member not in members:
                    raise W2SError(f"{archive}: no {layout['folder']}/{member} in it; is it the {name} python archive "
                                   f"({layout['folder']}.tar.gz)?")
                try:
                    obj = _ArraysOnly(io.BytesIO(tar.extractfile(members[member]).read()), encoding="bytes").load()
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
                    raise W2SError(f"{archive}: {member} is not a CIFAR batch ({exc})") from None
                if not isinstance(obj, dict):
                    raise W2SError(f"{archive}: {member} is not a CIFAR batch (a {type(obj).__name__}, not a dict)")
                return obj

            splits = {split: _split([load(m) for m in layout[split]], layout["labels"], archive)
                      for split in ("train", "test")}
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in load(layout["meta"]).get(layout["names"], [])]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise W2SError(f"{archive}: cannot read it as a tar archive ({exc})") from None
    classes = int(max(int(s.labels.max()) for s in splits.values() if len(s.labels)) + 1)
    if len(names) < classes:
        raise W2SError(f"{archive}: {len(names)} class names in {layout['meta']} for labels up to {classes - 1}")
    return splits, names


def _split(batches: list[dict], label_key: bytes, archive: str) -> CifarSplit:
    images, labels, filenames, coarse = [], [], [], []
    for batch in batches:
        data, lab = batch.get(b"data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or lab is None \
                or len(lab) != len(data):
            raise W2SError(f"{archive}: a batch without (N, 3072) data and N {label_key.decode()}")
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(lab, dtype=np.int64))
        if batch.get(b"coarse_labels") is not None:
            coarse.append(np.asarray(batch[b"coarse_labels"], dtype=np.int64))
        names = batch.get(b"filenames") or [b""] * len(data)
        filenames += [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return CifarSplit(np.concatenate(images), np.concatenate(labels), filenames,
                      np.concatenate(coarse) if len(coarse) == len(batches) else None)
