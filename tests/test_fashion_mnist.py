"""prepare fashion-mnist: IDX files this test writes (gzipped and plain; truncated, foreign, miscounted,
mislabelled), the splits and manifest they give, and, where Debian's dataset-fashion-mnist is installed,
the real files."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from w2s_pipe.cli import cli
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources import fashion_mnist
from w2s_pipe.pipeline.sources.datasets import resolve_data
from w2s_pipe.pipeline.sources.shards import iter_samples, read_manifest
from w2s_pipe.stages.prepare import prepare_fashion_mnist


def idx(path, array: np.ndarray, magic: int, gz: bool) -> str:
    """An IDX file as Zalando's: big-endian magic and dimensions, then the bytes."""
    body = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path = str(path) + (".gz" if gz else "")
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(body)
    return path


def fake(folder, n_train=120, n_test=20, gz=True, **broken) -> dict:
    """The four files, images whose every pixel is its label x 20 (so a sample's label can be read back)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for part, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        images = np.repeat(labels[:, None, None] * 20, 28 * 28).reshape(n, 28, 28)
        out[part] = labels
        idx(os.path.join(folder, fashion_mnist.FILES[(part, "images")]), images, 0x803, gz)
        idx(os.path.join(folder, fashion_mnist.FILES[(part, "labels")]), broken.get(f"{part}_labels", labels), 0x801, gz)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_prepare_fashion_mnist_writes_its_splits_and_records_the_files(tmp_path, gz):
    src = tmp_path / "raw"
    labels = fake(src, gz=gz)
    result = prepare_fashion_mnist(str(src), str(tmp_path / "out"), shard_size=16)
    counts = {split: sum(s.count for s in shards) for split, shards in result.splits.items()}
    # 10k/45k/5k of 60k, scaled to 120; rotation: transfer's images again
    assert counts == {"weak": 20, "transfer": 90, "select": 10, "test": 20, "rotation": 90}
    seen = {}
    for split, shards in result.splits.items():
        for shard in shards:
            for sample in iter_samples(str(tmp_path / "out" / shard.name)):
                part, index = sample["__key__"].split("_")[1:]
                seen.setdefault(split, set()).add(sample["__key__"])
                if split == "rotation":  # labelled by the turn, not the class (the turns: the test below)
                    assert part == "rotated" and f"fashion_train_{index}" in seen["transfer"]
                    assert 0 <= int(sample["cls"]) <= 3
                    continue
                label = int(sample["cls"])
                assert label == labels[part][int(index)]
                pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
                assert pixels.shape == (28, 28) and (pixels == label * 20).all()
    train = set().union(*(seen[s] for s in ("weak", "transfer", "select")))
    assert len(train) == 120 and len(seen["test"]) == 20  # the training splits are disjoint and cover it
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["dataset"] == "fashion-mnist" and manifest["class_names"][0] == "T-shirt/top"
    for name, digest in manifest["source"]["sha256"].items():
        assert hashlib.sha256(open(src / name, "rb").read()).hexdigest() == digest
    assert len(manifest["source"]["sha256"]) == 4
    # the same seed, the same splits: a second prepare writes the same shards
    again = prepare_fashion_mnist(str(src), str(tmp_path / "again"), shard_size=16)
    assert [s.digest for v in again.splits.values() for s in v] == [s.digest for v in result.splits.values() for s in v]


def test_rotations_turn_each_image_by_its_label():
    images = np.zeros((200, 28, 28), np.uint8)
    images[:, 0, 0] = 255  # a mark in the top-left corner: a turn of k quarters counter-clockwise moves it
    turned, turns = fashion_mnist.rotations(images)
    corners = {0: (0, 0), 1: (27, 0), 2: (27, 27), 3: (0, 27)}
    for img, k in zip(turned, turns):
        assert np.argwhere(img == 255).tolist() == [list(corners[int(k)])]
    assert sorted(set(turns.tolist())) == [0, 1, 2, 3]  # every turn drawn, ...
    assert (fashion_mnist.rotations(images)[1] == turns).all()  # ... from a fixed seed


def test_bad_fashion_mnist_files_are_one_line(tmp_path):
    with pytest.raises(W2SError, match=r"lacks train-images-idx3-ubyte, .*apt-get install dataset-fashion-mnist"):
        fashion_mnist.find_files(str(tmp_path))
    fake(tmp_path / "counts", train_labels=np.zeros(119, np.uint8))
    with pytest.raises(W2SError, match=r"holds 120 images but .*train-labels-idx1-ubyte.gz holds 119 labels"):
        fashion_mnist.load(str(tmp_path / "counts"))
    wrong = np.full(120, 3, np.uint8)
    wrong[5] = 12
    fake(tmp_path / "range", train_labels=wrong)
    with pytest.raises(W2SError, match=r"train-labels-idx1-ubyte.gz: label 12 at index 5 is outside 0-9"):
        fashion_mnist.load(str(tmp_path / "range"))
    fake(tmp_path / "cut", gz=False)
    path = tmp_path / "cut" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(W2SError, match=r"t10k-images-idx3-ubyte: truncated or padded: its header says 20 images "
                                       r"\(15680 bytes\), the file holds 15580"):
        fashion_mnist.load(str(tmp_path / "cut"))
    fake(tmp_path / "foreign", gz=False)
    (tmp_path / "foreign" / "train-images-idx3-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(W2SError, match=r"not an IDX file of images \(magic number 0x89504e47; expected 0x00000803\)"):
        fashion_mnist.load(str(tmp_path / "foreign"))
    fake(tmp_path / "gzcut")
    gz = tmp_path / "gzcut" / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(W2SError, match=r"train-labels-idx1-ubyte.gz: cannot be read as gzipped IDX"):
        fashion_mnist.load(str(tmp_path / "gzcut"))
    out = CliRunner().invoke(cli, ["prepare", "fashion-mnist", str(tmp_path / "nowhere")])
    assert out.exit_code != 0 and "no folder" in out.output and "Traceback" not in out.output


def test_the_registry_knows_fashion_mnist(tmp_path, monkeypatch):
    fake(tmp_path / "raw")
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["prepare", "fashion-mnist", str(tmp_path / "raw"), "--shard-size", "50"])
    assert result.exit_code == 0, result.output
    assert "use --data fashion-mnist" in result.output
    source = resolve_data("fashion-mnist", None)
    assert (source.split, source.val_split, source.num_classes) == ("transfer", "select", 10)
    assert resolve_data("fashion-mnist", "test").urls
    with pytest.raises(W2SError, match=r"dataset 'fashion-mnist' has no split 'val'; its splits are weak, transfer, "
                                       r"select, test, rotation"):
        resolve_data("fashion-mnist", "val")


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_the_real_files_read_as_zalandos_counts():
    data = fashion_mnist.load(fashion_mnist.DEBIAN_DIR)
    assert data["train"][0].shape == (60000, 28, 28) and data["test"][0].shape == (10000, 28, 28)
    assert (np.bincount(data["train"][1]) == 6000).all() and (np.bincount(data["test"][1]) == 1000).all()
    sizes = {k: len(v) for k, v in fashion_mnist.split_indices(60000).items()}
    assert sizes == {"weak": 10000, "transfer": 45000, "select": 5000}
