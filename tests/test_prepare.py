"""prepare: digits and ImageFolder trees become real shards with manifests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.data.shards import count_samples, iter_samples, read_manifest
from w2s_pipe.stages.prepare import prepare_digits, prepare_folder


def test_digits_split_is_fixed_disjoint_and_faithful(digits_dir, tmp_path):
    from sklearn.datasets import load_digits

    manifest = read_manifest(str(digits_dir))
    sizes = {split: sum(s["count"] for s in shards) for split, shards in manifest["splits"].items()}
    assert sizes == {"weak": 600, "transfer": 897, "val": 300}
    digits = load_digits()
    seen = {}
    for split in sizes:
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
