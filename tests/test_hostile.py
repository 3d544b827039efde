"""Hostile files a scraped data set or a shared study file can hold: tar members that are links or
whose names leave the shard (refused in one line naming shard and member, on every path that reads
a shard: samples, keys, labels, and `label` from the command line), and YAML with Python object tags
(refused by safe loading)."""

from __future__ import annotations

import io
import tarfile

import pytest
from click.testing import CliRunner

from w2s_pipe.cli import cli
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources.shards import iter_samples, list_keys, shard_labels, write_shard
from w2s_pipe.stages.study_config import load_study


def shard_with(path, member: tarfile.TarInfo, data: bytes = b"") -> str:
    """A shard of two good samples, then `member`, then a third good sample."""
    from test_bad_data import good  # the same PNG samples as the bad-data tests

    write_shard(str(path) + ".good", good(3, "a"))
    good_tar = tarfile.open(str(path) + ".good")
    with tarfile.open(str(path), "w") as out:
        members = good_tar.getmembers()
        for info in members[:4]:
            out.addfile(info, good_tar.extractfile(info))
        out.addfile(member, io.BytesIO(data) if member.isreg() else None)
        for info in members[4:]:
            out.addfile(info, good_tar.extractfile(info))
    return str(path)


def member(name: str, kind=tarfile.REGTYPE, link: str = "", size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size if kind == tarfile.REGTYPE else 0
    return info


HOSTILE = {
    "climbs out": (member("../../evil.png"), r"member '../../evil.png' names a path outside the shard"),
    "absolute": (member("/etc/evil.png"), r"member '/etc/evil.png' names a path outside the shard"),
    "inner climb": (member("x/../../evil.cls"), r"member 'x/../../evil.cls' names a path outside the shard"),
    "symlink": (member("a003.png", tarfile.SYMTYPE, "/etc/passwd"), r"member 'a003.png' is a link \(to '/etc/passwd'\)"),
    "hard link": (member("a004.png", tarfile.LNKTYPE, "a000.png"), r"member 'a004.png' is a link \(to 'a000.png'\)"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_member_is_refused_naming_shard_and_member(tmp_path, kind):
    info, message = HOSTILE[kind]
    path = shard_with(tmp_path / "x-000000.tar", info, b"evil")
    for read in (lambda: list(iter_samples(path)), lambda: list_keys(path), lambda: shard_labels(path, "cls")):
        with pytest.raises(W2SError, match=rf"shard {path}: {message}"):
            read()


def test_a_plain_shard_with_folders_still_reads(tmp_path):
    """Keys with folders (webdataset's `dir/key.ext`) and directory members are a shard's own."""
    path = shard_with(tmp_path / "y-000000.tar", member("sub/b000.cls", size=1), b"3")
    keys = list_keys(path)
    assert keys == ["a000", "a001", "sub/b000", "a002"]
    assert [s["__key__"] for s in iter_samples(path)] == keys


def test_label_refuses_a_hostile_shard_in_one_line(tmp_path, weak_ckpt):
    shard_with(tmp_path / "x-000000.tar", member("../../evil.png"), b"evil")
    result = CliRunner().invoke(cli, ["label", "--weak-checkpoint", weak_ckpt, "--data", str(tmp_path / "x-*.tar"),
                                      "--num-classes", "10", "--labels", str(tmp_path / "store"), "--workers", "0",
                                      "--precision", "fp32", "--quiet"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "member '../../evil.png' names a path outside the shard" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['echo owned']", "!!python/name:os.system"])
def test_a_study_file_with_python_tags_is_refused(tmp_path, tag):
    path = tmp_path / "evil.yaml"
    path.write_text(f"data: digits\nseeds: {tag}\n")
    with pytest.raises(W2SError, match=rf"{path}: not a YAML study \(could not determine a constructor for the tag"):
        load_study(str(path))  # refused while parsed: an unsafe loader would have run the tag before any check


def test_a_recipe_with_python_tags_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text('lr: !!python/object/apply:os.system ["echo owned"]\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--max-steps", "1"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{path}: not a YAML recipe (could not determine a constructor for the tag" in result.output
