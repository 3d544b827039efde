"""`prepare cifar10|cifar100`: a small archive in the downloaded format, made here, to shards."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources.datasets import resolve_data
from w2s_pipe.pipeline.sources.shards import iter_samples, read_manifest
from w2s_pipe.stages.prepare import prepare_cifar


def batch(rng, n, label_key, classes):
    return {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            label_key: [int(x) for x in rng.integers(0, classes, size=n)],
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def make_archive(path, name, members: dict[str, object]):
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    with tarfile.open(path, "w:gz") as tar:
        for member, obj in members.items():
            data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def cifar100(tmp_path, train=30, test=12):
    rng = np.random.default_rng(0)
    members = {"train": batch(rng, train, b"fine_labels", 100), "test": batch(rng, test, b"fine_labels", 100),
               "meta": {b"fine_label_names": [f"class{i}".encode() for i in range(100)]}}
    return make_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100", members), members


def test_cifar100_shards_hold_the_archives_pixels_and_labels(tmp_path, monkeypatch):
    archive, members = cifar100(tmp_path)
    out = tmp_path / "data" / "cifar100"
    result = prepare_cifar("cifar100", archive, str(out), shard_size=8, weak_split=10)
    counts = {split: sum(s.count for s in shards) for split, shards in result.splits.items()}
    assert counts == {"weak": 10, "train": 20, "test": 12}
    seen = {}
    for split, shards in result.splits.items():
        for shard in shards:
            for s in iter_samples(shard.url):
                source, index = s["__key__"].split("_")[1], int(s["__key__"].split("_")[2])
                expected = members[source][b"data"][index].reshape(3, 32, 32).transpose(1, 2, 0)
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), expected)
                assert int(s["cls"]) == members[source][b"fine_labels"][index]
                seen[s["__key__"]] = split
    assert len(seen) == 42  # weak and train are disjoint and together all of train
    manifest = read_manifest(str(out))
    assert manifest["num_classes"] == 100 and manifest["class_names"][3] == "class3"
    # The registry finds them: train labelled, test for validation, names from the manifest.
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "data"))
    source = resolve_data("cifar100")
    assert source.split == "train" and source.val_split == "test" and source.class_names[99] == "class99"
    assert len(resolve_data("cifar100", "weak").urls) == 2


def test_cifar10_layout_and_a_fixed_weak_choice(tmp_path):
    rng = np.random.default_rng(1)
    members = {f"data_batch_{i}": batch(rng, 6, b"labels", 10) for i in range(1, 6)}
    members["test_batch"] = batch(rng, 5, b"labels", 10)
    members["batches.meta"] = {b"label_names": [n.encode() for n in "abcdefghij"]}
    archive = make_archive(tmp_path / "c10.tar.gz", "cifar10", members)
    a = prepare_cifar("cifar10", archive, str(tmp_path / "a"), weak_split=7)
    b = prepare_cifar("cifar10", archive, str(tmp_path / "b"), weak_split=7)
    keys = [[k["__key__"] for s in r.splits["weak"] for k in iter_samples(s.url)] for r in (a, b)]
    assert keys[0] == keys[1] and len(keys[0]) == 7
    assert sum(s.count for s in a.splits["train"]) == 23


def test_bad_archives_are_named(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    rng = np.random.default_rng(0)
    evil = make_archive(tmp_path / "evil.tar.gz", "cifar100",
                        {"train": Boom(), "test": batch(rng, 2, b"fine_labels", 100), "meta": {}})
    with pytest.raises(W2SError, match=r"evil.tar.gz: train is not a CIFAR batch \(refusing to load posix.system\)"):
        prepare_cifar("cifar100", evil, str(tmp_path / "o"))
    wrong = make_archive(tmp_path / "wrong.tar.gz", "cifar10", {"test_batch": batch(rng, 2, b"labels", 10)})
    with pytest.raises(W2SError, match="wrong.tar.gz: no cifar-100-python/train in it"):
        prepare_cifar("cifar100", wrong, str(tmp_path / "o"))
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(W2SError, match="junk.tar.gz: cannot read it as a tar archive"):
        prepare_cifar("cifar100", str(tmp_path / "junk.tar.gz"), str(tmp_path / "o"))
    archive, _ = cifar100(tmp_path)
    with pytest.raises(W2SError, match="--weak-split 30 is invalid"):
        prepare_cifar("cifar100", archive, str(tmp_path / "o"), weak_split=30)


def test_prepare_cifar_through_the_command_line(tmp_path):
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    archive, _ = cifar100(tmp_path)
    out = CliRunner().invoke(cli, ["prepare", "cifar100", archive, "--out", str(tmp_path / "c"), "--weak-split", "5"])
    assert out.exit_code == 0, out.output
    assert "weak: 5 samples in 1 shards" in out.output and "use --data cifar100" in out.output
