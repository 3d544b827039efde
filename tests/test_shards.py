"""pipeline/shards.py on real tar shards, checked against webdataset itself."""

from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources import shards as sh


def tar_with(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def wds_count(url):
    return sum(1 for _ in wds.WebDataset(url, shardshuffle=False, empty_check=False))


def test_count_matches_webdataset(tmp_path):
    # Several files per sample, a metadata file, a directory-qualified key.
    url = tar_with(tmp_path / "a.tar", [
        ("__meta__", b"m"), ("k1.jpg", b"1"), ("k1.cls", b"0"), ("k2.jpg", b"2"), ("d/k3.jpg", b"3"),
        ("d/k3.cls", b"1"), ("k4.seg.png", b"4"),
    ])
    assert sh.count_samples(url) == wds_count(url) == 4
    assert [s["__key__"] for s in sh.iter_samples(url)] == ["k1", "k2", "d/k3", "k4"]


def test_expand_brace_glob_and_missing(tmp_path):
    for i in range(3):
        tar_with(tmp_path / f"s-{i:03d}.tar", [(f"k{i}.jpg", b"x")])
    assert sh.expand_pattern(str(tmp_path / "s-{000..002}.tar")) == [str(tmp_path / f"s-{i:03d}.tar") for i in range(3)]
    assert len(sh.expand_pattern(str(tmp_path / "s-*.tar"))) == 3
    with pytest.raises(W2SError, match=r"1 of 4 shards not found, first .*s-003.tar"):
        sh.expand_pattern(str(tmp_path / "s-{000..003}.tar"))
    with pytest.raises(W2SError, match="no shards match"):
        sh.expand_pattern(str(tmp_path / "none-*.tar"))


def test_manifest_counts_used_only_while_sizes_match(tmp_path):
    url = tar_with(tmp_path / "a.tar", [("k1.jpg", b"1"), ("k2.jpg", b"2")])
    shard = sh.describe_shards([url])[0]
    assert shard.count == 2
    # A manifest claiming another count is believed while the file is unchanged ...
    sh.write_manifest(str(tmp_path), {"s": [sh.Shard(url, "a.tar", 7, shard.bytes, shard.digest)]})
    assert sh.describe_shards([url])[0].count == 7
    # ... and ignored (recounted) once the file changed, even at the same size (tar pads to 10 KiB).
    tar_with(tmp_path / "a.tar", [("k1.jpg", b"1"), ("k2.jpg", b"2"), ("k3.jpg", b"3" * 2000)])
    changed = sh.describe_shards([url])[0]
    assert changed.bytes == shard.bytes
    assert changed.count == 3 and sh.fingerprint([changed]) != sh.fingerprint([shard])


def test_broken_tar_is_named(tmp_path):
    good = tar_with(tmp_path / "g.tar", [(f"k{i}.jpg", b"x" * 1000) for i in range(5)])
    data = open(good, "rb").read()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:2000])
    # Cut inside the second member's header: tarfile alone would report one valid sample.
    with pytest.raises(W2SError, match=r"bad.tar: .*truncated"):
        sh.count_samples(str(bad))
    # Cut inside a member's data.
    bad.write_bytes(data[:1100])
    with pytest.raises(W2SError, match="bad.tar"):
        sh.count_samples(str(bad))
    with pytest.raises(W2SError, match="bad.tar"):
        list(sh.iter_samples(str(bad)))
