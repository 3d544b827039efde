"""Noisy ground truth (`prepare ... --label-noise`): the rules against hand counts on a fixed seed,
CIFAR-10's map and CIFAR-100's superclass shift, and the clean label kept beside the noisy one.

Pure numpy and real shards; where a model runs (evaluation, a tiny run), the CPU in fp32."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources.noise import CIFAR10_MAP, CLEAN_FIELD, DIGITS_MAP, LabelNoise, flip_rates, superclass_map
from w2s_pipe.pipeline.sources.shards import iter_samples, read_manifest
from w2s_pipe.stages.prepare import prepare_cifar, prepare_digits, prepare_folder

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


def test_noisy_cifar100_needs_superclasses_for_asymmetric_noise_alone(tmp_path):
    rng = np.random.default_rng(0)
    fine = [int(x) for x in rng.integers(0, 100, size=60)]
    train = {**batch(rng, 60, b"fine_labels", 100), b"fine_labels": fine}
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)]}
    plain = make_archive(tmp_path / "plain.tar.gz", "cifar100", {"train": train, "test": batch(rng, 10, b"fine_labels",
                                                                                              100), "meta": meta})
    # symmetric noise needs no map: an archive without coarse labels is noised
    prepare_cifar("cifar100", plain, str(tmp_path / "sym"), noise=LabelNoise.parse("symmetric:0.5"))
    assert read_manifest(str(tmp_path / "sym"))["label_noise"]["flipped"] > 0
    with pytest.raises(W2SError, match="no coarse_labels in its training batch"):
        prepare_cifar("cifar100", plain, str(tmp_path / "asym"), noise=LabelNoise.parse("asymmetric:1.0"))
    coarse = [c // 5 for c in fine]  # superclass g holds classes 5g..5g+4
    full = make_archive(tmp_path / "full.tar.gz", "cifar100", {"train": {**train, b"coarse_labels": coarse},
                                                               "test": batch(rng, 10, b"fine_labels", 100), "meta": meta})
    result = prepare_cifar("cifar100", full, str(tmp_path / "asym"), noise=LabelNoise.parse("asymmetric:1.0"))
    moved = {}
    for shard in result.splits["train"]:
        for s in iter_samples(shard.url):
            moved[int(s[CLEAN_FIELD])] = int(s["cls"])
    present = sorted(set(fine))
    for c, noisy in moved.items():  # rate 1: each class to the next present class of its superclass
        group = [x for x in present if x // 5 == c // 5]
        assert noisy == group[(group.index(c) + 1) % len(group)]


def test_few_shot_digits_refuse_label_noise(tmp_path):
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    result = CliRunner().invoke(cli, ["prepare", "digits", "--few-shot", "--label-noise", "asymmetric:0.4", "--out",
                                      str(tmp_path / "d")])
    assert result.exit_code != 0 and "--label-noise and --few-shot are separate scenarios" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def test_inspect_gives_the_weak_labels_accuracy_against_both(tmp_path, monkeypatch, weak_ckpt):
    from w2s_pipe.stages.inspect import InspectConfig, format_text, run_inspect
    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.storage import open_store

    prepare_digits(str(tmp_path / "data" / "digits"), noise=LabelNoise.parse("symmetric:0.6", seed=0))
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "data"))
    store = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "s"),
                                  workers=0, precision="fp32", device="cpu", progress=False)).store
    stats = run_inspect(InspectConfig(stores=(store,), plots=False))
    index = open_store(store).index()
    pred = index["pred"].to_numpy()
    clean = {s["__key__"]: int(s[CLEAN_FIELD]) for shard in open_store(store).shards for s in iter_samples(shard["url"])}
    assert stats["accuracy"] == pytest.approx((pred == index["label"].to_numpy()).mean())  # the noisy labels
    assert stats["accuracy_clean"] == pytest.approx(np.mean([p == clean[k] for p, k in zip(pred, index["key"].to_pylist())]))
    assert stats["accuracy_clean"] != stats["accuracy"]
    assert "against the clean labels (the shards' labels carry symmetric noise at 0.6 (seed 0, " in format_text(stats)
    # Evaluating the noised split scores the same predictions against the clean labels, and says so.
    from w2s_pipe.pipeline.evaluation.accuracy import evaluate_checkpoint

    scored = evaluate_checkpoint(weak_ckpt, data="digits", split="transfer", workers=0, device="cpu", precision="fp32")
    assert scored["labels"] == CLEAN_FIELD and scored["label_noise"].startswith("symmetric noise at 0.6 (seed 0, ")
    assert scored["top1"] == pytest.approx(stats["accuracy_clean"], abs=1 / len(pred))
    val = evaluate_checkpoint(weak_ckpt, data="digits", split="val", workers=0, device="cpu", precision="fp32")
    assert val["labels"] == "cls" and "label_noise" not in val


def test_noise_is_scored_per_shard_and_a_mix_is_refused(tmp_path):
    from w2s_pipe.pipeline.sources.datasets import resolve_data
    from w2s_pipe.pipeline.sources.noise import noise_of, scored_on_clean

    prepare_digits(str(tmp_path / "digits"), noise=LabelNoise.parse("symmetric:0.3"))
    weak, val = (resolve_data(str(tmp_path / "digits" / f"digits-{s}-*.tar")) for s in ("weak", "val"))
    assert noise_of(weak.urls)["rate"] == 0.3 and noise_of(val.urls) is None
    assert scored_on_clean(weak).label_field == CLEAN_FIELD and scored_on_clean(val) is val
    mixed = weak.urls + val.urls
    with pytest.raises(W2SError, match="the shards mix noised splits \\(weak, transfer\\) with clean ones "
                                       "\\(digits-val-000000.tar\\)"):
        noise_of(mixed)
    assert noise_of(mixed, mixed=True)["noised_shards"] == len(weak.urls)
    prepare_digits(str(tmp_path / "clean"))
    assert noise_of(resolve_data(str(tmp_path / "clean" / "digits-weak-*.tar")).urls) is None


def test_a_run_on_noisy_labels_records_them_and_validates_on_clean_ones(tmp_path, monkeypatch):
    from w2s_pipe.stages.report import build_report, notes
    from w2s_pipe.stages.train import TrainConfig, run_train

    prepare_digits(str(tmp_path / "data" / "digits"), noise=LabelNoise.parse("symmetric:0.5", seed=1))
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "data"))
    run = run_train(TrainConfig.tiny(strong="test_resnet", loss="gt", data="digits", split="weak", val_split="transfer",
                                     epochs=1, steps_per_epoch=2, device="cpu", run="noisy", workspace=str(tmp_path)))
    source = json.load(open(os.path.join(run.run_dir, "config.json")))["data_source"]
    assert source["label_noise"]["rate"] == 0.5 and source["val_labels"] == CLEAN_FIELD
    said = [line for line in notes(build_report(str(tmp_path))) if line.startswith("- noisy labels")]
    assert said == [f"- noisy labels: 1 runs trained on digits shards whose ground-truth labels carry symmetric noise "
                    f"at 0.5 (seed 1, {source['label_noise']['flip_rate']:.1%} flipped); every top-1 is against clean "
                    f"labels (validation scored against the clean labels its shards keep (clean.cls))"]


def test_the_noisy_demo_learns_from_noisy_labels_and_evaluates_on_clean_ones(tmp_path):
    from w2s_pipe.stages.demo import DemoConfig, run_demo

    lines = []
    report = run_demo(DemoConfig.quick_demo(str(tmp_path / "demo"), seeds=1, scenario="noisy", label_noise="symmetric:0.2",
                                            overrides={"grid": [{"loss": "hard", "gt_weight": [0.0, 1.0]}]}),
                      echo=lines.append)
    record = read_manifest(str(tmp_path / "demo" / "data" / "digits"))["label_noise"]
    assert record["rate"] == 0.2 and record["seed"] == 42 and record["splits"] == ["weak", "transfer"]
    assert lines[0].startswith("[1/") and lines[0].split(": ", 1)[1].startswith(
        f"prepared; noisy labels: symmetric 0.2 (seed 42) on the weak and transfer splits, {record['flip_rate']:.1%} "
        "flipped; the other splits stay clean")
    from w2s_pipe.stages.report import notes

    assert [line for line in notes(report) if "noisy labels" in line][0].endswith(
        "every top-1 is against clean labels (the validation split is not noised)")
    from w2s_pipe.stages.inspect import InspectConfig, run_inspect

    (store,) = report["stores"]  # the weak labels against the clean labels too, as inspect counts them
    stats = run_inspect(InspectConfig(stores=(store["url"],), plots=False))
    assert store["weak_label_accuracy_clean"] == stats["accuracy_clean"] and store["label_noise"].startswith(
        "symmetric noise at 0.2 (seed 42")
    assert store["weak_label_accuracy"] == pytest.approx(stats["accuracy"])


def _class_tree(root, layout, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True)
            for j in range(count):
                Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(root / split / cls / f"{j:02d}.png")


def test_a_folder_is_noised_with_the_users_map_and_its_val_kept_clean(tmp_path):
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    _class_tree(tmp_path / "src", {"train": {"cat": 20, "dog": 20, "emu": 20}, "val": {"cat": 2, "dog": 2, "emu": 2}})
    (tmp_path / "map.json").write_text(json.dumps({"cat": "dog"}))
    result = CliRunner().invoke(cli, ["prepare", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                                      "--label-noise", "asymmetric:0.5", "--noise-seed", "7", "--noise-map",
                                      str(tmp_path / "map.json")])
    assert result.exit_code == 0, result.output
    got = {}
    for split in ("train", "val"):
        for shard in sorted((tmp_path / "out").glob(f"src-{split}-*.tar")):
            for s in iter_samples(str(shard)):
                got[s["txt"].decode()] = (int(s["cls"]), int(s[CLEAN_FIELD]) if CLEAN_FIELD in s else None)
    # By hand: the train labels in sorted file order (cat 0-19, dog, emu) meet one draw each from the
    # seed's generator; a cat whose draw is under 0.5 becomes a dog, nothing else moves.
    draws = np.random.default_rng(7).random(60)
    for j in range(20):
        assert got[f"train/cat/{j:02d}.png"] == ((1 if draws[j] < 0.5 else 0), 0)
        assert got[f"train/dog/{j:02d}.png"] == (1, 1) and got[f"train/emu/{j:02d}.png"] == (2, 2)
    assert all(v[1] is None and v[0] == ["cat", "dog", "emu"].index(k.split("/")[1])
               for k, v in got.items() if k.startswith("val/"))
    record = read_manifest(str(tmp_path / "out"))["label_noise"]
    moved = int((draws[:20] < 0.5).sum())
    assert 0 < moved < 20 and record["flipped"] == moved and record["splits"] == ["train"]
    assert record["map"] == {"0": 1} and record["flip_rate_per_class"] == [round(moved / 20, 6), 0.0, 0.0]
    symmetric = prepare_folder(str(tmp_path / "src"), str(tmp_path / "sym"), noise=LabelNoise.parse("symmetric:0.5"),
                               noise_splits=("train", "val"))
    record = read_manifest(symmetric.out)["label_noise"]
    assert record["splits"] == ["train", "val"] and record["samples"] == 66


@pytest.mark.parametrize("args, said", [
    (["--label-noise", "asymmetric:0.4"], "--label-noise asymmetric on a folder needs --noise-map FILE"),
    (["--label-noise", "symmetric:0.4", "--noise-map", "{map}"], "--noise-map is the asymmetric noise's map"),
    (["--label-noise", "asymmetric:0.4", "--noise-map", "{bad}"], "--noise-map {bad}: 'cow' (in 'cat': 'cow') is not a class"),
    (["--label-noise", "symmetric:0.4", "--noise-splits", "tran"], "--noise-splits: split 'tran' is not one to noise"),
    (["--noise-splits", "train"], "--noise-splits is only for --label-noise"),
])
def test_bad_folder_noise_options_are_one_line(tmp_path, args, said):
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    _class_tree(tmp_path / "src", {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    paths = {"map": str(tmp_path / "map.json"), "bad": str(tmp_path / "bad.json")}
    (tmp_path / "map.json").write_text(json.dumps({"cat": "dog"}))
    (tmp_path / "bad.json").write_text(json.dumps({"cat": "cow"}))
    result = CliRunner().invoke(cli, ["prepare", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "out")]
                                + [a.format(**paths) for a in args])
    assert result.exit_code != 0 and said.format(**paths) in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_demos_noise_is_checked_before_anything_is_replaced(tmp_path):
    from click.testing import CliRunner

    from w2s_pipe.cli import cli
    from w2s_pipe.stages.demo import DEMO_MARKER

    out = tmp_path / "demo"
    out.mkdir()
    (out / DEMO_MARKER).write_text("{}")  # an earlier demo, which a valid run would replace
    (out / "kept").write_text("earlier results")
    bad = CliRunner().invoke(cli, ["demo", "--scenario", "noisy", "--label-noise", "asym:0.4", "--out", str(out)])
    assert bad.exit_code != 0 and "--label-noise 'asym:0.4' is invalid" in bad.output
    alone = CliRunner().invoke(cli, ["demo", "--label-noise", "asymmetric:0.4", "--out", str(out)])
    assert alone.exit_code != 0 and "add --scenario noisy" in alone.output
    assert (out / "kept").read_text() == "earlier results"
