"""Noisy ground truth (`prepare ... --label-noise`): the rules against hand counts on a fixed seed,
CIFAR-10's map and CIFAR-100's superclass shift, and the clean label kept beside the noisy one.

Pure numpy and real shards; no device."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.data.noise import (CIFAR10_MAP, CLEAN_FIELD, DIGITS_MAP, LabelNoise, flip_rates,
                                          superclass_map)
from w2s_pipe.pipeline.data.shards import iter_samples, read_manifest
from w2s_pipe.stages.prepare import prepare_cifar, prepare_digits

sys.path.insert(0, os.path.dirname(__file__))
from test_cifar_archive import batch, make_archive  # noqa: E402


def test_symmetric_noise_redraws_exactly_int_rn_labels_uniformly():
    clean = np.repeat(np.arange(10), 300)  # 3000 labels, 300 per class
    noise = LabelNoise.parse("symmetric:0.4", seed=42)
    noisy = noise.apply(clean, 10)
    # by hand: the same generator, the same two draws
    rng = np.random.default_rng(42)
    chosen = rng.permutation(3000)[:1200]
    drawn = rng.integers(0, 10, size=1200)
    expected = clean.copy()
    expected[chosen] = drawn
    assert np.array_equal(noisy, expected)
    untouched = np.setdiff1d(np.arange(3000), chosen)
    assert np.array_equal(noisy[untouched], clean[untouched])
    flipped = (noisy != clean).mean()
    assert flipped == pytest.approx(0.4 * 9 / 10, abs=0.02)  # the true class is among the draws
    assert np.array_equal(noise.apply(clean, 10), noisy)  # the seed fixes it
    assert not np.array_equal(LabelNoise("symmetric", 0.4, 7).apply(clean, 10), noisy)


def test_asymmetric_noise_moves_only_mapped_classes_to_their_targets():
    clean = np.repeat(np.arange(10), 1000)
    noisy = LabelNoise.parse("asymmetric:0.4", seed=42).apply(clean, 10, CIFAR10_MAP)
    rates = flip_rates(clean, noisy, 10)
    for c in range(10):
        moved = noisy[(clean == c) & (noisy != c)]
        if c in CIFAR10_MAP:
            assert set(moved.tolist()) == {CIFAR10_MAP[c]}  # truck→automobile, bird→airplane, cat↔dog, deer→horse
            assert rates[c] == pytest.approx(0.4, abs=0.05)
        else:
            assert len(moved) == 0 and rates[c] == 0.0
    # by hand: one uniform draw per sample, moved where it is below the rate
    draws = np.random.default_rng(42).random(len(clean))
    expected = clean.copy()
    for source, target in CIFAR10_MAP.items():
        expected[(clean == source) & (draws < 0.4)] = target
    assert np.array_equal(noisy, expected)
    assert DIGITS_MAP == {1: 7, 7: 1, 3: 8, 8: 3, 4: 9, 9: 4}


def test_cifar100_noise_shifts_to_the_next_class_of_the_superclass():
    fine = np.arange(100)
    coarse = np.random.default_rng(3).permutation(np.repeat(np.arange(20), 5))  # 20 superclasses of 5 classes
    mapping = superclass_map(fine, coarse)
    for group in range(20):
        members = sorted(fine[coarse == group].tolist())
        for i, c in enumerate(members):
            assert mapping[c] == members[(i + 1) % 5]
    moved = LabelNoise("asymmetric", 1.0).apply(fine, 100, mapping)
    assert all(coarse[moved[c]] == coarse[c] and moved[c] != c for c in fine)


@pytest.mark.parametrize("spec", ["symmetric", "symmetric:1.5", "pairwise:0.2", "asymmetric:x"])
def test_a_bad_noise_spec_is_one_line(spec):
    with pytest.raises(W2SError, match="--label-noise .* is invalid: give symmetric:R or asymmetric:R"):
        LabelNoise.parse(spec)


def test_noisy_digits_keep_the_clean_label_beside_and_val_clean(tmp_path):
    clean_out, noisy_out = tmp_path / "clean", tmp_path / "noisy"
    prepare_digits(str(clean_out))
    prepare_digits(str(noisy_out), noise=LabelNoise.parse("asymmetric:0.5", seed=1))
    manifest = read_manifest(str(noisy_out))
    record = manifest["label_noise"]
    assert record["kind"] == "asymmetric" and record["seed"] == 1 and record["splits"] == ["weak", "transfer"]
    clean_all, noisy_all = [], []
    for split in ("weak", "transfer", "val"):
        names = sorted(p for p in os.listdir(noisy_out) if p.startswith(f"digits-{split}-"))
        for name in names:
            truth = {s["__key__"]: int(s["cls"]) for s in iter_samples(str(clean_out / name))}
            for s in iter_samples(str(noisy_out / name)):
                if split == "val":
                    assert CLEAN_FIELD not in s and int(s["cls"]) == truth[s["__key__"]]
                    continue
                assert int(s[CLEAN_FIELD]) == truth[s["__key__"]]
                clean_all.append(truth[s["__key__"]])
                noisy_all.append(int(s["cls"]))
    clean_all, noisy_all = np.array(clean_all), np.array(noisy_all)
    assert record["flipped"] == int((clean_all != noisy_all).sum()) > 0
    assert record["flip_rate_per_class"] == flip_rates(clean_all, noisy_all, 10)
    assert record["flip_rate_per_class"][0] == 0.0 and record["flip_rate_per_class"][1] > 0.3  # 0 unmapped, 1→7


def test_noisy_cifar10_noises_the_whole_training_set_once(tmp_path):
    rng = np.random.default_rng(0)
    members = {f"data_batch_{i}": batch(rng, 40, b"labels", 10) for i in range(1, 6)}
    members.update(test_batch=batch(rng, 20, b"labels", 10),
                   **{"batches.meta": {b"label_names": [f"c{i}".encode() for i in range(10)]}})
    archive = make_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", members)
    result = prepare_cifar("cifar10", archive, str(tmp_path / "out"), shard_size=64, weak_split=50,
                           noise=LabelNoise.parse("asymmetric:1.0"))
    record = json.load(open(tmp_path / "out" / "manifest.json"))["label_noise"]
    assert record["splits"] == ["weak", "train"] and record["samples"] == 200
    for split, shards in result.splits.items():
        for shard in shards:
            for s in iter_samples(shard.url):
                if split == "test":
                    assert CLEAN_FIELD not in s
                else:  # rate 1: every mapped class moved, the rest kept
                    c = int(s[CLEAN_FIELD])
                    assert int(s["cls"]) == CIFAR10_MAP.get(c, c)


def test_inspect_gives_the_weak_labels_accuracy_against_both(tmp_path, monkeypatch, weak_ckpt):
    from w2s_pipe.stages.inspect import InspectConfig, format_text, run_inspect
    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.storage import open_store

    prepare_digits(str(tmp_path / "data" / "digits"), noise=LabelNoise.parse("symmetric:0.6", seed=0))
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "data"))
    store = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "s"),
                                  workers=0, precision="fp32", progress=False)).store
    stats = run_inspect(InspectConfig(store=store, plots=False))
    index = open_store(store).index()
    pred = index["pred"].to_numpy()
    clean = {s["__key__"]: int(s[CLEAN_FIELD]) for shard in open_store(store).shards for s in iter_samples(shard["url"])}
    assert stats["accuracy"] == pytest.approx((pred == index["label"].to_numpy()).mean())  # the noisy labels
    assert stats["accuracy_clean"] == pytest.approx(np.mean([p == clean[k] for p, k in zip(pred, index["key"].to_pylist())]))
    assert stats["accuracy_clean"] != stats["accuracy"]
    assert "against the clean labels (the shards' labels are symmetric noise at 0.6, seed 0" in format_text(stats)


def test_the_noisy_demo_learns_from_noisy_labels_and_evaluates_on_clean_ones(tmp_path):
    from w2s_pipe.stages.demo import DemoConfig, run_demo

    lines = []
    run_demo(DemoConfig.quick(str(tmp_path / "demo"), seeds=1, label_noise="symmetric:0.2", losses=("hard",),
                              keep_frac=None), echo=lines.append)
    record = read_manifest(str(tmp_path / "demo" / "data" / "digits"))["label_noise"]
    assert record["rate"] == 0.2 and record["seed"] == 42 and record["splits"] == ["weak", "transfer"]
    assert lines[0].startswith(f"noisy labels: symmetric 0.2 (seed 42) on the weak and transfer splits, "
                               f"{record['flip_rate']:.1%} flipped; val stays clean")
