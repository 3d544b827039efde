"""prepare: digits and ImageFolder trees become real shards with manifests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources.shards import count_samples, iter_samples, read_manifest
from w2s_pipe.stages.prepare import prepare_digits, prepare_folder


def test_digits_split_is_fixed_disjoint_and_faithful(digits_dir, tmp_path):
    from sklearn.datasets import load_digits

    manifest = read_manifest(str(digits_dir))
    sizes = {split: sum(s["count"] for s in shards) for split, shards in manifest["splits"].items()}
    assert sizes == {"weak": 600, "transfer": 897, "val": 300, "select": 150, "test": 150}
    digits = load_digits()
    seen, held_out = {}, {}
    for split in ("select", "test"):  # val's two fixed halves, together val itself
        held_out[split] = [s["__key__"] for entry in manifest["splits"][split] for s in iter_samples(str(digits_dir / entry["name"]))]
    val = [s["__key__"] for entry in manifest["splits"]["val"] for s in iter_samples(str(digits_dir / entry["name"]))]
    assert held_out["select"] + held_out["test"] == val
    for split in ("weak", "transfer", "val"):
        for entry in manifest["splits"][split]:
            url = str(digits_dir / entry["name"])
            assert count_samples(url) == entry["count"]
            for sample in iter_samples(url):
                i = int(sample["__key__"].split("_")[1])
                assert sample["__key__"] not in seen
                seen[sample["__key__"]] = split
                pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
                np.testing.assert_array_equal(np.round(pixels.astype(np.float64) * 16 / 255), digits.images[i])
                assert int(sample["cls"]) == digits.target[i]
    assert len(seen) == 1797
    # Same split and byte-identical shards on a second run.
    again = prepare_digits(str(tmp_path / "again"))
    for shards in again.splits.values():
        for s in shards:
            assert (tmp_path / "again" / s.name).read_bytes() == (digits_dir / s.name).read_bytes()


def test_folder(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    expected = {}
    for cls in ("cat", "dog", "emu"):
        (src / cls).mkdir(parents=True)
        for j in range(4):
            path = src / cls / f"{j}.png"
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(path)
            expected[f"{cls}/{j}.png"] = path.read_bytes()
    (src / "dog" / "notes.txt").write_text("not an image")
    result = prepare_folder(str(src), str(tmp_path / "out"), shard_size=5)
    shards = result.splits["train"]
    assert [s.count for s in shards] == [5, 5, 2]
    got = {}
    for s in shards:
        for sample in iter_samples(str(tmp_path / "out" / s.name)):
            got[sample["txt"].decode()] = (sample["png"], int(sample["cls"]))
    assert {k: v[0] for k, v in got.items()} == expected
    assert all(cls == ["cat", "dog", "emu"].index(path.split("/")[0]) for path, (_, cls) in got.items())
    assert read_manifest(str(tmp_path / "out"))["class_names"] == ["cat", "dog", "emu"]
    with pytest.raises(W2SError, match="at least two class sub-folders"):
        prepare_folder(str(src / "cat"), str(tmp_path / "x"))


def test_folder_in_the_imagenet_layout(tmp_path):
    """train/ and val/ with one folder per class, in one call: both splits, one class numbering (val
    lacks a class here and keeps the numbers train gives), usable as training and validation data."""
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    src = tmp_path / "imagenet"
    rng = np.random.default_rng(1)
    layout = {"train": {"n01": 5, "n02": 4, "n03": 3}, "val": {"n01": 2, "n03": 2}}
    for split, classes in layout.items():
        for cls, count in classes.items():
            (src / split / cls).mkdir(parents=True)
            for j in range(count):
                Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(src / split / cls / f"{j}.jpeg")
    result = CliRunner().invoke(cli, ["prepare", "folder", str(src), "--out", str(tmp_path / "out"), "--shard-size", "4"])
    assert result.exit_code == 0, result.output
    assert "train: 12 samples in 3 shards" in result.output and "val: 4 samples in 1 shards" in result.output
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["class_names"] == ["n01", "n02", "n03"] and set(manifest["splits"]) == {"train", "val"}
    val = [s for s in sorted((tmp_path / "out").glob("imagenet-val-*.tar"))]
    labels = {sample["txt"].decode(): int(sample["cls"]) for s in val for sample in iter_samples(str(s))}
    assert labels == {"val/n01/0.jpeg": 0, "val/n01/1.jpeg": 0, "val/n03/0.jpeg": 2, "val/n03/1.jpeg": 2}
