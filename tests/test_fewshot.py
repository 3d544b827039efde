"""Few-shot evaluation (`eval --episodes`): episodes reproducible from their seed, the cosine
nearest-centroid accuracy against a hand computation, and the command on a real checkpoint.

Device: the CPU, fp32."""

from __future__ import annotations

import numpy as np
import pytest

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.evaluation.fewshot import Episode, draw_episodes, episode_accuracy, few_shot


def test_episodes_come_from_their_seed_and_keep_support_and_queries_apart():
    labels = np.repeat(np.arange(8), 30)
    a = draw_episodes(labels, ways=5, shots=5, queries=15, count=20, seed=3)
    b = draw_episodes(labels, ways=5, shots=5, queries=15, count=20, seed=3)
    c = draw_episodes(labels, ways=5, shots=5, queries=15, count=20, seed=4)
    assert all(np.array_equal(x.support, y.support) and np.array_equal(x.query, y.query) for x, y in zip(a, b))
    assert not all(np.array_equal(x.support, y.support) for x, y in zip(a, c))
    for e in a:
        assert len(set(e.classes.tolist())) == 5 and e.support.shape == (5, 5) and e.query.shape == (5, 15)
        for w, cls in enumerate(e.classes):
            assert set(labels[e.support[w]]) == {cls} and set(labels[e.query[w]]) == {cls}
            assert not set(e.support[w]) & set(e.query[w])
    with pytest.raises(W2SError, match="--ways 9: only 8 classes have --shots 5 \\+ --queries 15 samples"):
        draw_episodes(labels, ways=9, shots=5, queries=15, count=1, seed=0)


def test_nearest_centroid_accuracy_matches_a_hand_computation():
    # 2 ways, 2 shots, 2 queries; 2-d features
    features = np.array([[1.0, 0.0], [3.0, 0.2],      # class A supports: centroid (2, 0.1)
                         [0.0, 1.0], [0.2, 2.0],      # class B supports: centroid (0.1, 1.5)
                         [5.0, 1.0], [1.0, 1.2],      # class A queries: the first nearer A, the second nearer B
                         [0.1, 4.0], [2.0, 0.1]])     # class B queries: the first nearer B, the second nearer A
    e = Episode(np.array([0, 1]), np.array([[0, 1], [2, 3]]), np.array([[4, 5], [6, 7]]))
    # by hand: cos(q, cA) vs cos(q, cB) for each query
    ca, cb = np.array([2.0, 0.1]), np.array([0.1, 1.5])

    def cos(u, v):
        return u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    right = [cos(features[4], ca) > cos(features[4], cb), cos(features[5], ca) > cos(features[5], cb),
             cos(features[6], cb) > cos(features[6], ca), cos(features[7], cb) > cos(features[7], ca)]
    assert right == [True, False, True, False]
    assert episode_accuracy(features, e, shots=2) == pytest.approx(0.5)
    # 1-shot: the first support alone: cA (1, 0), cB (0, 1)
    assert episode_accuracy(features, e, shots=1) == pytest.approx(np.mean(
        [features[4] @ [1, 0] > features[4] @ [0, 1] * 1, features[5][0] > features[5][1],
         features[6][1] > features[6][0], features[7][1] > features[7][0]]))


def test_few_shot_summary_is_the_mean_and_95_interval_over_episodes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 25)
    features = rng.normal(size=(150, 16)) + 3 * np.eye(16)[labels]  # separable-ish classes
    out = few_shot(features, labels, ways=5, shots=(1, 5), queries=10, episodes=40, seed=1)
    drawn = draw_episodes(labels, ways=5, shots=5, queries=10, count=40, seed=1)
    for k in (1, 5):
        accs = np.array([episode_accuracy(features, e, k) for e in drawn])
        assert out[k]["accuracy"] == pytest.approx(accs.mean())
        assert out[k]["ci95"] == pytest.approx(1.96 * accs.std(ddof=1) / np.sqrt(40))
    assert out[5]["accuracy"] > out[1]["accuracy"] > 0.2  # more shots, better centroids; above chance


def test_eval_episodes_on_a_checkpoint(digits_data, weak_ckpt):
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    result = CliRunner().invoke(cli, ["eval", "--checkpoint", weak_ckpt, "--data", "digits", "--episodes", "20",
                                      "--ways", "5", "--shots", "1,5", "--queries", "5", "--device", "cpu",
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "-way" in line]
    assert len(lines) == 2 and lines[0].startswith("digits val: 5-way 1-shot") and "20 episodes" in lines[0]
    again = CliRunner().invoke(cli, ["eval", "--checkpoint", weak_ckpt, "--data", "digits", "--episodes", "20",
                                     "--queries", "5", "--device", "cpu", "--workers", "0"])
    assert [line for line in again.output.splitlines() if "-way" in line] == lines  # the same episodes
    bad = CliRunner().invoke(cli, ["eval", "--checkpoint", weak_ckpt, "--data", "digits", "--episodes", "5",
                                   "--shots", "one"])
    assert bad.exit_code != 0 and "--shots" in bad.output


def test_digits_fewshot_holds_the_novel_classes_out_of_training(tmp_path, monkeypatch):
    from w2s_pipe.pipeline.sources.datasets import resolve_data
    from w2s_pipe.pipeline.sources.shards import iter_samples, read_manifest
    from w2s_pipe.stages.evaluate import EvalConfig, run_eval
    from w2s_pipe.stages.prepare import prepare_digits
    from w2s_pipe.stages.train import TrainConfig, run_train

    prepare_digits(str(tmp_path / "data" / "digits-fewshot"), few_shot=True)
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "data"))
    seen, labels = {}, {}
    for split in ("weak", "transfer", "val", "novel"):
        source = resolve_data("digits-fewshot", split)
        assert source.num_classes == 5
        for url in source.urls:
            for s in iter_samples(url):
                assert s["__key__"] not in seen
                seen[s["__key__"]] = split
                labels.setdefault(split, []).append(int(s["cls"]))
    assert len(seen) == 1797 and all(set(v) == set(range(5)) for v in labels.values())
    from sklearn.datasets import load_digits

    target = load_digits().target
    for key, split in seen.items():  # base splits: digits 0-4 as they are; novel: digits 5-9 as 0-4
        assert (target[int(key.split("_")[1])] >= 5) == (split == "novel")
    assert read_manifest(str(tmp_path / "data" / "digits-fewshot"))["novel"]["class_names"] == ["5", "6", "7", "8", "9"]
    run = run_train(TrainConfig.tiny(strong="test_resnet", loss="gt", data="digits-fewshot", split="weak", epochs=1,
                                     steps_per_epoch=2, device="cpu", run="base", workspace=str(tmp_path)))
    r = run_eval(EvalConfig(run=run.run_dir, episodes=10, queries=5, device="cpu", workers=0,
                            workspace=str(tmp_path)))  # no --split: the data set's novel split, said
    assert r["split"] == "novel" and set(r["few_shot"]) == {1, 5} and r["samples"] == 896
    assert "split novel: the data set's novel split (classes never trained on" in "\n".join(r.summary())
    val = run_eval(EvalConfig(run=run.run_dir, split="val", episodes=10, queries=5, device="cpu", workers=0,
                              workspace=str(tmp_path)))
    assert val["split"] == "val" and val["samples"] < 896


def test_a_folder_of_disjoint_class_splits_keeps_each_splits_classes_and_few_shot_scores_the_novel_one(tmp_path):
    """train/ val/ test/ of disjoint classes (miniImageNet's, CIFAR-FS's layout): each split numbered by
    its own classes, val and test marked novel in the manifest; eval --episodes without --split scores
    test and says so."""
    import numpy as np
    from conftest import make_checkpoint
    from PIL import Image

    from w2s_pipe.pipeline.sources.shards import iter_samples, read_manifest
    from w2s_pipe.stages.evaluate import EvalConfig, run_eval
    from w2s_pipe.stages.prepare import prepare_folder

    rng = np.random.default_rng(0)
    layout = {"train": ("n01", "n02", "n03"), "val": ("n04", "n05"), "test": ("n06", "n07", "n08")}
    for split, classes in layout.items():
        for cls in classes:
            (tmp_path / "mini" / split / cls).mkdir(parents=True)
            for j in range(8):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "mini" / split / cls / f"{j}.png")
    prepare_folder(str(tmp_path / "mini"), str(tmp_path / "out"), shard_size=10)
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["class_names"] == ["n01", "n02", "n03"] and manifest["num_classes"] == 3
    assert {k: v["class_names"] for k, v in manifest["novel_splits"].items()} == {"val": ["n04", "n05"],
                                                                                  "test": ["n06", "n07", "n08"]}
    labels = {}
    for split in layout:
        for url in sorted((tmp_path / "out").glob(f"mini-{split}-*.tar")):
            for sample in iter_samples(str(url)):
                labels.setdefault(split, set()).add((sample["txt"].decode().split("/")[1], int(sample["cls"])))
    assert labels["test"] == {("n06", 0), ("n07", 1), ("n08", 2)} and labels["val"] == {("n04", 0), ("n05", 1)}
    assert labels["train"] == {("n01", 0), ("n02", 1), ("n03", 2)}
    r = run_eval(EvalConfig(checkpoint=make_checkpoint(tmp_path / "m.pt", num_classes=3),
                            data=str(tmp_path / "out" / "mini-train-*.tar"), episodes=5, ways=3, shots=(1,), queries=3,
                            device="cpu", workers=0, workspace=str(tmp_path)))
    assert r["split"] == "test" and r["pattern"].endswith("mini-test-*.tar") and r["samples"] == 24
    assert "split test: the data set's novel split" in "\n".join(r.summary())


def test_the_few_shot_demo_evaluates_every_model_on_the_novel_classes_and_report_shows_them(tmp_path):
    import json
    import os

    from w2s_pipe.pipeline.evaluation.fewshot import RECORDS
    from w2s_pipe.stages.demo import DemoConfig, run_demo

    report = run_demo(DemoConfig.quick_demo(str(tmp_path / "demo"), seeds=1, scenario="few-shot", overrides=dict(
        grid=[{"loss": "hard", "gt_weight": [0.0, 1.0]}], few_shot={"episodes": 20, "split": "novel"})),
        echo=lambda *_: None)
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"s0-weak", "s0-ceiling", "s0-hard", "s0-hard-gt1.0"}
    for r in runs.values():  # each run's record is the one eval --run --episodes wrote there
        lines = [json.loads(line) for line in open(os.path.join(r["dir"], RECORDS))]
        assert len(lines) == 1 and lines[0]["episodes"] == 20 and lines[0]["split"] == "novel"
        assert [x["few_shot"] for x in r["few_shot"]] == [{int(k): v for k, v in lines[0]["few_shot"].items()}]
    (table,) = report["few_shot"]
    assert table["setting"] == {"data": "digits-fewshot", "split": "novel", "ways": 5, "queries": 15, "episodes": 20,
                                "episode_seed": 0, "labels": "cls"}
    assert [r["label"] for r in table["rows"]] == [r["label"] for r in report["rows"]]
    for row, method in zip(table["rows"], report["rows"]):  # one seed: the run's own figure, no spread
        (name,) = method["runs"]
        for k in (1, 5):
            assert row["shots"][k] == (runs[name]["few_shot"][0]["few_shot"][k]["accuracy"], None)
    md = open(report["markdown"]).read()
    assert "Few-shot on digits-fewshot novel: 5-way, 15 queries per class, 20 episodes (seed 0" in md
    assert "| method | runs | 5-way 1-shot (%) | 5-way 5-shot (%) |" in md


def test_report_reads_the_latest_few_shot_record_of_the_final_weights(tmp_path):
    import json

    from w2s_pipe.pipeline.evaluation.fewshot import RECORDS, recorded

    base = {"data": "d", "split": "novel", "ways": 5, "queries": 15, "episodes": 10, "episode_seed": 0, "labels": "cls"}
    lines = [{**base, "pick": "last", "step": 4, "few_shot": {"1": {"accuracy": 0.1}}},   # earlier weights
             {**base, "pick": "last", "step": 8, "few_shot": {"1": {"accuracy": 0.2}}},
             {**base, "pick": "best", "step": 8, "few_shot": {"1": {"accuracy": 0.9}}},   # another checkpoint
             {**base, "pick": "last", "step": 8, "few_shot": {"1": {"accuracy": 0.3}}},   # the same, evaluated again
             {**base, "episodes": 50, "pick": "last", "step": 8, "few_shot": {"1": {"accuracy": 0.4}}}]
    with open(tmp_path / RECORDS, "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    got = recorded(str(tmp_path), step=8)
    assert sorted((r["episodes"], r["few_shot"][1]["accuracy"]) for r in got) == [(10, 0.3), (50, 0.4)]
    assert recorded(str(tmp_path / "none"), step=8) == []
    from w2s_pipe.pipeline.evaluation.fewshot import record

    (tmp_path / "blocked" / RECORDS).mkdir(parents=True)  # cannot be appended to: one line, with the figures
    with pytest.raises(W2SError, match=r"cannot record the few-shot figures in .*few-shot.jsonl \(.*\); they were: "
                                       r"1-shot 0.5000"):
        record(str(tmp_path / "blocked"), {**base, "few_shot": {1: {"accuracy": 0.5}}}, "last")
