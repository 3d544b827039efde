"""The dataset registry: built-ins, the user's TOML file, literal patterns and their errors."""

from __future__ import annotations

import pytest

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources.datasets import BUILTIN, resolve_data


def test_imagenet_entry_and_where_it_looked(tmp_path, monkeypatch):
    entry = BUILTIN["imagenet"]
    assert entry.num_classes == 1000 and entry.label_split == "train" and entry.image_field == "jpg"
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(W2SError) as err:
        resolve_data("imagenet")
    msg = str(err.value)
    assert "1282 of 1282 shards not found" in msg
    assert str(tmp_path / "nowhere" / "imagenet" / "imagenet-train-{000000..001281}.tar") in msg
    assert "W2S_DATA" in msg
    with pytest.raises(W2SError, match=r"50 of 50 .*imagenet-val-\{000000..000049\}"):
        resolve_data("imagenet", "val")


def test_imagenet_resolves_when_shards_exist(tmp_path, monkeypatch):
    root = tmp_path / "imagenet"
    root.mkdir()
    for i in range(50):
        (root / f"imagenet-val-{i:06d}.tar").write_bytes(b"")
    monkeypatch.setenv("W2S_DATA", str(tmp_path))
    source = resolve_data("imagenet", "val")
    assert len(source.urls) == 50 and source.urls[-1].endswith("imagenet-val-000049.tar")


def test_digits_default_split_and_hint(digits_data):
    source = resolve_data("digits")
    assert source.split == "transfer" and len(source.urls) == 4 and source.num_classes == 10
    with pytest.raises(W2SError, match="has no split 'novel'; its splits are weak, transfer, val, select, test"):
        resolve_data("digits", "novel")


def test_digits_missing_suggests_prepare():
    with pytest.raises(W2SError, match="w2s-pipe prepare digits"):
        resolve_data("digits")


def test_unknown_name_suggests_close_match():
    with pytest.raises(W2SError, match="unknown dataset 'imagenett'; did you mean 'imagenet'"):
        resolve_data("imagenett")


def test_user_toml_entry(tmp_path, monkeypatch, digits_dir):
    toml = tmp_path / "datasets.toml"
    toml.write_text(
        "[datasets.mine]\nnum_classes = 10\nlabel_split = 'train'\nimage_field = 'png'\n"
        f"splits = {{ train = '{digits_dir}/digits-weak-{{000000..000002}}.tar' }}\n"
    )
    monkeypatch.setenv("W2S_DATASETS", str(toml))
    source = resolve_data("mine")
    assert source.split == "train" and len(source.urls) == 3 and source.image_fields == ("png",)
    toml.write_text("[datasets.bad]\nnum_classes = 1\nsplits = { train = 'x' }\n")
    with pytest.raises(W2SError, match=r"datasets.toml: datasets.bad.num_classes must be an integer >= 2"):
        resolve_data("bad")
    # a novel split (eval --episodes' default) is one of the entry's splits, or one line
    from w2s_pipe.pipeline.sources.datasets import novel_data

    toml.write_text("[datasets.fs]\nnum_classes = 10\nnovel_split = 'test'\n"
                    f"splits = {{ train = '{digits_dir}/digits-weak-*.tar', test = '{digits_dir}/digits-val-*.tar' }}\n")
    assert novel_data("fs") == ("fs", "test") and novel_data("digits") is None
    toml.write_text("[datasets.fs]\nnum_classes = 10\nnovel_split = 'novel'\nsplits = { train = 'x' }\n")
    with pytest.raises(W2SError, match=r"datasets.fs.novel_split 'novel' is not one of its splits"):
        resolve_data("fs")


def test_literal_pattern_takes_classes_from_manifest(digits_dir):
    source = resolve_data(str(digits_dir / "digits-val-*.tar"))
    assert source.num_classes == 10 and len(source.urls) == 2
    with pytest.raises(W2SError, match="--num-classes 7 contradicts"):
        resolve_data(str(digits_dir / "digits-val-*.tar"), num_classes=7)


def test_a_directory_as_data_is_one_line_naming_a_pattern(digits_dir):
    with pytest.raises(W2SError, match=r"--data .*digits is a directory: give a pattern of its shards \(such as "
                                       r".*digits/digits-[a-z]+-\*\.tar\)") as caught:
        resolve_data(str(digits_dir))
    assert caught.value.option == "--data"
