"""Fashion-MNIST (Zalando; Xiao et al. 2017) from its four IDX files, checked, and split for weak-to-strong.

    train-images-idx3-ubyte(.gz)   60,000 x 28 x 28 uint8     train-labels-idx1-ubyte(.gz)   60,000 labels 0-9
    t10k-images-idx3-ubyte(.gz)    10,000 x 28 x 28 uint8     t10k-labels-idx1-ubyte(.gz)    10,000 labels 0-9

Debian's package `dataset-fashion-mnist` installs them (gzipped) under /usr/share/datasets/fashion-mnist;
torchvision's FashionMNIST/raw folder and Zalando's repository hold the same files. The splits (sizes in
SPLITS) are a fixed seeded permutation of the 60,000 training images, and the official 10,000 as `test`:

    weak      10,000  the weak models' ground truth (a small model on them sits near 80%, well below the ceiling)
    transfer  45,000  what the weak model labels and the students learn from (the bulk, as in the paper)
    select     5,000  held out from training, where hyperparameters are chosen (one image is 0.02 points)
    test      10,000  Zalando's test set: only ever scored, never trained or chosen on (one image is 0.01 points)
    rotation  45,000  transfer's images, each turned by a seeded multiple of 90 degrees and labelled by the turn
                      (0-3), not by its class: the self-supervised pretext task of Gidaris et al. (ICLR 2018),
                      a backbone for the probe study that never sees a label of the task (see `rotations`)
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from ...errors import W2SError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
         ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
SPLITS = (("weak", 10_000), ("transfer", 45_000), ("select", 5_000))  # of the training images; test: the official
SEED = 20170825  # Fashion-MNIST's release date: the fixed permutation of the training images
MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # unsigned bytes, 3 dimensions / 1
HOW = ("install Debian's package (apt-get install dataset-fashion-mnist, which puts them in "
       f"{DEBIAN_DIR}), or give a folder holding the four files (torchvision's FashionMNIST/raw, or Zalando's "
       "repository's data/fashion)")


def find_files(directory: str) -> dict[tuple[str, str], str]:
    """The four files' paths in `directory` (each gzipped or not); a missing one is one line saying how
    to get them."""
    if not os.path.isdir(directory):
        raise W2SError(f"prepare fashion-mnist: no folder {directory}; {HOW}")
    found, missing = {}, []
    for key, name in FILES.items():
        path = next((p for p in (os.path.join(directory, name + ".gz"), os.path.join(directory, name))
                     if os.path.isfile(p)), None)
        if path is None:
            missing.append(name)
        else:
            found[key] = path
    if missing:
        raise W2SError(f"prepare fashion-mnist: {directory} lacks {', '.join(missing)} (gzipped or not); {HOW}")
    return found


def read_idx(path: str, kind: str) -> np.ndarray:
    """An IDX file's array: images (N, 28, 28) or labels (N,), uint8; a foreign, truncated or misshapen
    file is one line naming it."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a cut gzip stream, a file that is not gzip
        raise W2SError(f"{path}: cannot be read as {'gzipped ' if path.endswith('.gz') else ''}IDX ({exc})") from None
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != MAGIC[kind]:
        got = f"0x{struct.unpack('>I', data[:4])[0]:08x}" if len(data) >= 4 else "none"
        raise W2SError(f"{path}: not an IDX file of {kind} (magic number {got}; expected 0x{MAGIC[kind]:08x})")
    dims = (3 if kind == "images" else 1)
    header = 4 + 4 * dims
    if len(data) < header:
        raise W2SError(f"{path}: truncated in its header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    if kind == "images" and shape[1:] != (28, 28):
        raise W2SError(f"{path}: images of {shape[1]}x{shape[2]} pixels; Fashion-MNIST's are 28x28")
    need = int(np.prod(shape))
    if len(data) - header != need:
        raise W2SError(f"{path}: truncated or padded: its header says {shape[0]} {kind} ({need} bytes), the file "
                       f"holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load(directory: str) -> dict:
    """{"train": (images, labels), "test": (images, labels), "files": {name: sha256}} from `directory`,
    each file checked: its magic number, its size against its header, images and labels of equal
    counts, labels in 0-9."""
    from ...storage.fsutil import file_sha256  # here: the storage package imports zarr, and --help must not

    paths = find_files(directory)
    out = {"files": {}}
    for part in ("train", "test"):
        images = read_idx(paths[(part, "images")], "images")
        labels = read_idx(paths[(part, "labels")], "labels")
        if len(images) != len(labels):
            raise W2SError(f"{paths[(part, 'images')]} holds {len(images)} images but {paths[(part, 'labels')]} "
                           f"holds {len(labels)} labels")
        bad = np.flatnonzero(labels > 9)
        if len(bad):
            raise W2SError(f"{paths[(part, 'labels')]}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
                           "0-9")
        out[part] = (images, labels.astype(np.int64))
        for kind in ("images", "labels"):
            out["files"][os.path.basename(paths[(part, kind)])] = file_sha256(paths[(part, kind)])
    return out


def rotations(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`images` (N, H, W), each turned counter-clockwise by k x 90 degrees, k drawn per image from a fixed
    seed, and the k: a pretext task whose labels come from the images alone."""
    turns = np.random.default_rng(SEED + 1).integers(0, 4, len(images))
    return np.stack([np.rot90(img, k) for img, k in zip(images, turns)]), turns.astype(np.int64)


def split_indices(n_train: int) -> dict[str, np.ndarray]:
    """Each training split's indices into the training images: consecutive parts of a fixed
    permutation (SPLITS' sizes, scaled down for a smaller file, as the tests' own)."""
    order = np.random.default_rng(SEED).permutation(n_train)
    total = sum(size for _, size in SPLITS)
    sizes = [size if n_train >= total else size * n_train // total for _, size in SPLITS]
    out, first = {}, 0
    for (name, _), size in zip(SPLITS, sizes):
        out[name] = np.sort(order[first: first + size])
        first += size
    return out
