"""prepare: digits and ImageFolder trees become real shards with manifests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources.shards import count_samples, iter_samples, read_manifest
from w2s_pipe.stages.prepare import prepare_digits, prepare_folder, prepare_hf


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


def _tree(src, classes=("a", "b", "c"), per_class=10, seed=2):
    rng = np.random.default_rng(seed)
    for cls in classes:
        (src / cls).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(src / cls / f"{j}.png")
    return src


def test_folder_with_workers_writes_the_same_shards_and_a_crashed_prepare_finishes_what_is_missing(tmp_path, monkeypatch):
    """--workers 2 writes byte-identical shards; a prepare that crashed after 3 shards, run again,
    writes only the missing ones (the finished ones untouched); a finished one writes nothing; another
    plan in the same directory is one line."""
    from w2s_pipe.pipeline.sources import planned_shards

    src = _tree(tmp_path / "src")
    one = prepare_folder(str(src), str(tmp_path / "one"), shard_size=4)
    two = prepare_folder(str(src), str(tmp_path / "two"), shard_size=4, workers=2)
    names = [s.name for s in one.splits["train"]]
    assert len(names) == 8 and names == [s.name for s in two.splits["train"]]
    assert all((tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes() for n in names)
    assert read_manifest(str(tmp_path / "one"))["splits"] == read_manifest(str(tmp_path / "two"))["splits"]

    real, calls = planned_shards._write_one, []

    def crash_after_three(shard, out, root):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill: the three finished shards stay, the rest never started
        calls.append(shard.name)
        return real(shard, out, root)

    monkeypatch.setattr(planned_shards, "_write_one", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_folder(str(src), str(tmp_path / "three"), shard_size=4)
    monkeypatch.setattr(planned_shards, "_write_one", real)
    assert sorted(p.name for p in (tmp_path / "three").glob("*.tar")) == sorted(calls)
    assert read_manifest(str(tmp_path / "three")) is None
    (tmp_path / "three" / f"{names[5]}.tmp-123-abcd").write_bytes(b"half a shard")  # a killed writer's file
    before = {n: (tmp_path / "three" / n).stat().st_mtime_ns for n in calls}
    resumed = prepare_folder(str(src), str(tmp_path / "three"), shard_size=4, workers=2)
    assert resumed.written == 5 and "(3 of 8 shards were already there)" in resumed.summary()[-1]
    assert {n: (tmp_path / "three" / n).stat().st_mtime_ns for n in calls} == before  # never rewritten
    assert all((tmp_path / "one" / n).read_bytes() == (tmp_path / "three" / n).read_bytes() for n in names)
    assert not list((tmp_path / "three").glob("*.tmp-*"))
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "three").iterdir()}
    again = prepare_folder(str(src), str(tmp_path / "three"), shard_size=4)
    assert again.written == 0 and again.summary()[-1].startswith("already complete: 30 samples in 8 shards")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "three").iterdir()} == files  # nothing written at all
    assert [s.digest for s in again.splits["train"]] == [s.digest for s in one.splits["train"]]
    with pytest.raises(W2SError, match="holds split 'train' of another prepare"):
        prepare_folder(str(src), str(tmp_path / "three"), shard_size=5)
    with pytest.raises(W2SError, match="that no resumable prepare wrote"):
        (tmp_path / "four").mkdir()
        (tmp_path / "four" / names[0]).write_bytes((tmp_path / "one" / names[0]).read_bytes())
        prepare_folder(str(src), str(tmp_path / "four"), shard_size=4)


def _hf_dataset(n: int = 250):
    """A real Hugging Face DatasetDict (the `datasets` library's own writer): Image and ClassLabel
    features, PNG and JPEG images mixed; returns it and each row's (image bytes, label)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as HfImage

    rng = np.random.default_rng(3)
    images, labels = [], []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG" if i % 2 else "JPEG")
        images.append({"bytes": buf.getvalue(), "path": None})
        labels.append(int(rng.integers(3)))
    features = Features({"image": HfImage(), "label": ClassLabel(names=["cat", "dog", "emu"])})
    train = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return DatasetDict({"train": train, "validation": train.select(range(min(n, 20)))}), list(zip(
        [im["bytes"] for im in images], labels))


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_prepare_hf_streams_a_hugging_face_data_set_into_shards(tmp_path, monkeypatch, layout):
    from w2s_pipe.pipeline.sources import huggingface as hf

    data, expected = _hf_dataset()
    src = tmp_path / "beans"
    if layout == "save_to_disk":
        data.save_to_disk(str(src))
    else:  # as the Hub holds it: data/<split>-NNNNN-of-NNNNN.parquet
        for split, part in data.items():
            part.to_parquet(str(src / "data" / f"{split}-00000-of-00001.parquet"))
    monkeypatch.setattr(hf, "BATCH_ROWS", 16)
    read = []
    real = hf._batches

    def counted(path):
        for batch in real(path):
            read.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(hf, "_batches", counted)
    result = prepare_hf(str(src), str(tmp_path / "out"), shard_size=100)
    assert max(read) <= 100 and len(read) > 3  # a record batch at a time, never the whole split
    assert [s.count for s in result.splits["train"]] == [100, 100, 50] and set(result.splits) == {"train", "validation"}
    got = [(s["png"] if "png" in s else s["jpg"], int(s["cls"]), s["__key__"]) for shard in result.splits["train"]
           for s in iter_samples(shard.url)]
    assert [(b, c) for b, c, _ in got] == expected and got[0][2] == "00000000"
    assert sum("jpg" in s for shard in result.splits["train"] for s in iter_samples(shard.url)) == 125
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["class_names"] == ["cat", "dog", "emu"] and manifest["num_classes"] == 3
    assert result.summary()[0].startswith("train: 250 samples in 3 shards")


def test_prepare_hf_says_what_is_wrong_in_one_line(tmp_path):
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    data, _ = _hf_dataset(8)
    data.save_to_disk(str(tmp_path / "set"))
    (tmp_path / "empty").mkdir()
    cases = [(["hf", str(tmp_path / "empty")], "holds no data set"),
             (["hf", str(tmp_path / "set"), "--label-column", "labels"], "has no label column 'labels'"),
             (["hf", str(tmp_path / "set"), "--image-column", "img"], "has no image column 'img'")]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["prepare", *args, "--out", str(tmp_path / "o"), "--quiet"])
        assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1, \
            result.output
