"""A probe is OpenAI's protocol (openai/weak-to-strong, vision/run_weak_strong.py, `train_logreg`): a
fresh linear head on frozen features, Adam, the last partial batch kept, cosine per step. Each test
here failed before the probe was fixed (the checkpoint's head carried over; the checkpoint recorded
the model's default input, not the backbone's; the remainder of each epoch was dropped; a ground-
truth probe needed a label store; report split probe seeds and filed their ceiling as a student)."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from test_probe import backbone, stores  # noqa: F401  (the fixture: label store, backbone, its feature stores)

from w2s_pipe.errors import W2SError
from w2s_pipe.stages.features_config import FeaturesConfig
from w2s_pipe.stages.label import run_label
from w2s_pipe.stages.train import TrainConfig, run_train
from w2s_pipe.storage import open_store


def _rows(url: str, array: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """A store's keys, one array and labels, in shard order (as the stores hold them)."""
    store = open_store(url)
    parts = [store.shard_rows(s["name"], arrays=(array,)) for s in store.shards]
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
    return [k for p in parts for k in p.keys], np.concatenate([p.arrays[array] for p in parts]), labels


def _planted(tmp_path, ckpt: str, features: str) -> tuple[str, float]:
    """The backbone of `ckpt` with a classifier fitted to the ground truth of its transfer features (a
    backbone "trained on the task's labels"), and that head's accuracy on the transfer rows."""
    _, x, y = _rows(features, "features")
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    saved = torch.load(ckpt, weights_only=False)
    saved["state_dict"] = {**saved["state_dict"], "fc.weight": head.weight.detach().clone(),
                           "fc.bias": head.bias.detach().clone()}
    path = str(tmp_path / "planted.pt")
    torch.save(saved, path)
    return path, float((head(x).argmax(1) == y).float().mean())


def test_a_probe_from_a_ground_truth_backbone_starts_from_chance(stores, tmp_path):  # noqa: F811
    """A backbone whose head fits the ground truth: a probe (lr 1e-9, so the head barely moves) scores what
    a fresh head scores, and its head is `torch.manual_seed(seed); nn.Linear(D, C)`; --keep-head, the
    explicit way to continue, scores what the planted head scores."""
    labels, ckpt, train, _ = stores
    planted, fitted = _planted(tmp_path, ckpt, train)
    assert fitted > 0.6, fitted  # the planted head knows the labels
    embedded = {split: run_label(FeaturesConfig.tiny(checkpoint=planted, split=split,
                                                     out=str(tmp_path / f"f-{split}")).label_config()).store
                for split in ("transfer", "val")}
    base = dict(strong="test_resnet", strong_checkpoint=planted, labels=labels, features=embedded["transfer"],
                val_features=embedded["val"], loss="kd", lr=1e-9, epochs=1, batch_size=100, seed=3, opt="adam",
                weight_decay=0.0)
    fresh = run_train(TrainConfig.tiny(**base, run="fresh"))
    kept = run_train(TrainConfig.tiny(**base, keep_head=True, run="kept"))
    head = torch.load(os.path.join(fresh.run_dir, "last.pt"), weights_only=True)["state_dict"]
    torch.manual_seed(3)
    expected = torch.nn.Linear(96, 10)
    torch.testing.assert_close(head["fc.weight"], expected.weight.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(head["fc.bias"], expected.bias.detach(), atol=1e-6, rtol=0)
    planted_fc = torch.load(planted, weights_only=True)["state_dict"]["fc.weight"]
    assert (head["fc.weight"] - planted_fc).abs().max() > 0.1  # not the planted head
    assert fresh.val_top1 < 0.35 < 0.6 < kept.val_top1, (fresh.val_top1, kept.val_top1)
    with pytest.raises(W2SError, match="--keep-head keeps a --strong-checkpoint's classifier"):
        TrainConfig.tiny(strong="test_resnet", keep_head=True)


def test_a_probe_equals_a_plain_reference_loop(stores):  # noqa: F811
    """OpenAI's train_logreg written out here (nn.Linear from torch.manual_seed(seed), Adam 1e-3 without weight
    decay, the cross-entropy to the weak model's soft labels, batch 100 with the last partial batch kept,
    CosineAnnealingLR stepped after every step) on the same rows in the run's order: the probe trained by
    the openai_probe recipe from the stores ends with the same head, to float rounding."""
    from w2s_pipe.pipeline.train.recipes import load_recipe
    from w2s_pipe.pipeline.views.params import view_seed
    from w2s_pipe.stages.train_config import recipe_options

    labels, ckpt, train, _ = stores
    epochs, seed = 3, 5
    recipe = {**load_recipe("openai_probe", recipe_options()), "epochs": epochs}  # as `--config openai_probe`
    run = run_train(TrainConfig.tiny(**recipe, config="openai_probe", strong="test_resnet", strong_checkpoint=ckpt,
                                     labels=labels, features=train, seed=seed, no_eval=True, run="openai"))
    keys, weak, _ = _rows(labels, "logits")
    feature_keys, x, _ = _rows(train, "features")
    assert keys == feature_keys
    x, soft = torch.from_numpy(x).float(), torch.softmax(torch.from_numpy(weak).float(), dim=1)
    n = len(x)
    per_epoch = math.ceil(n / 100)
    assert run.step == epochs * per_epoch == 27  # 897 rows: 8 batches of 100 and one of 97, each epoch

    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], 10)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * per_epoch)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(view_seed(seed, "probe", "order", epoch)))
        for first in range(0, n, 100):
            batch = order[first: first + 100]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(x[batch]), soft[batch]).backward()
            optimizer.step()
            schedule.step()
    got = torch.load(os.path.join(run.run_dir, "last.pt"), weights_only=True)["state_dict"]
    torch.manual_seed(seed)
    start = torch.nn.Linear(x.shape[1], 10).weight.detach()
    assert (head.weight.detach() - start).abs().max() > 1e-2  # it trained
    torch.testing.assert_close(got["fc.weight"], head.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["fc.bias"], head.bias.detach(), rtol=1e-4, atol=1e-5)


def test_the_openai_probe_recipe_is_train_logreg():
    from w2s_pipe.pipeline.train.recipes import load_recipe
    from w2s_pipe.stages.train_config import recipe_options

    recipe = load_recipe("openai_probe", recipe_options())
    assert {k: recipe[k] for k in ("loss", "kd_temperature", "opt", "lr", "weight_decay", "sched", "cosine_floor",
                                   "min_lr", "epochs", "batch_size")} == {
        "loss": "kd", "kd_temperature": 1.0, "opt": "adam", "lr": 1e-3, "weight_decay": 0.0, "sched": "cosine",
        "cosine_floor": "after", "min_lr": 0.0, "epochs": 10, "batch_size": 100}


def test_the_cosine_floor_after_is_torchs_cosine_annealing():
    from w2s_pipe.pipeline.train.optim import Schedule, ScheduleSpec

    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = Schedule(torch.optim.SGD(params, lr=0.1), ScheduleSpec("cosine", 30, floor_after=True))
    reference_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(reference_opt, T_max=30)
    for step in range(30):
        assert ours.apply(step) == pytest.approx(reference_opt.param_groups[0]["lr"], abs=1e-12)
        reference_opt.step()
        reference.step()
    last = Schedule(torch.optim.SGD(params, lr=0.1), ScheduleSpec("cosine", 30))
    assert last.apply(29) == 0.0 and ours.apply(29) > 0  # the default: --min-lr at the last step


def test_eval_of_a_probe_agrees_with_its_own_validation(stores, tmp_path):  # noqa: F811
    """A probe built without --img-size takes its feature store's input (32 px here, not test_resnet's
    default): its checkpoints record it, so `eval --run` on the images scores what the probe validated."""
    from w2s_pipe.stages.evaluate import EvalConfig, run_eval

    labels, ckpt, train, _ = stores
    probe = run_train(TrainConfig.tiny(strong="test_resnet", strong_checkpoint=ckpt, loss="gt", features=train,
                                       img_size=None, epochs=6, opt="adam", lr=0.1, weight_decay=0.0,
                                       run="probe"))  # gt: the weak model is random; this backbone's best is ~30%
    saved = torch.load(os.path.join(probe.run_dir, "last.pt"), weights_only=False)
    assert saved["data_config"]["input_size"] == [3, 32, 32]
    assert saved["data_config"]["crop_pct"] == 1.0  # the backbone's (tests/test_probe.py: backbone), as embedded
    evaluated = run_eval(EvalConfig(run=probe.run_dir, device="cpu", workers=0))
    assert probe.val_top1 > 0.2 and abs(evaluated["top1"] - probe.val_top1) <= 0.01, (evaluated, probe.val_top1)
    with pytest.raises(W2SError, match=r"--img-size 48: feature store .* was embedded at 32 px"):
        run_train(TrainConfig.tiny(strong="test_resnet", strong_checkpoint=ckpt, labels=labels, features=train,
                                   img_size=48, run="resized"))


def test_a_ground_truth_probe_needs_no_store_and_report_groups_probe_seeds(stores, tmp_path):  # noqa: F811
    """--loss gt --features alone trains the probe ceiling on the feature store's labels; report files it
    as the ceiling (with --labels too), averages the probes of two seeds (each with its own feature store)
    in one row, and gives each its PGR against that ceiling."""
    from w2s_pipe.stages.report import build_report

    labels, ckpt, train, val = stores
    other = str(tmp_path / "features-copy")
    shutil.copytree(train, other)  # a second seed's feature store: another path, the same rows
    common = dict(strong="test_resnet", strong_checkpoint=ckpt, epochs=2, batch_size=64, val_features=val)
    ceiling = run_train(TrainConfig.tiny(**common, loss="gt", features=train, run="ceiling"))
    assert ceiling.finished and ceiling.val_top1 is not None
    run_train(TrainConfig.tiny(**common, loss="gt", features=other, labels=labels, seed=1, run="ceiling-labels"))
    for seed, features in ((0, train), (1, other)):
        run_train(TrainConfig.tiny(**common, loss="kd", labels=labels, features=features, seed=seed, run=f"kd-{seed}"))
    report = build_report(os.environ["W2S_HOME"])
    roles = {r["name"]: r["role"] for r in report["runs"]}
    assert roles["ceiling"] == roles["ceiling-labels"] == "ceiling"
    rows = {r["label"]: r for r in report["rows"]}
    kd = next(r for label, r in rows.items() if label.startswith("test_resnet probe from") and r["loss"] == "kd")
    assert kd["n"] == 2 and sorted(kd["runs"]) == ["kd-0", "kd-1"]
    assert not kd.get("no_ceiling")  # (their PGR is undefined here: a random backbone's ceiling is at chance)
    for run in (r for r in report["runs"] if r["name"] in ("kd-0", "kd-1")):
        assert run["ceiling_runs"] in (["ceiling"], ["ceiling-labels"]), run["ceiling_runs"]  # their seed's
    ceiling_row = rows["ceiling test_resnet probe (ground truth)"]
    assert ceiling_row["n"] == 2
    config = json.load(open(os.path.join(ceiling.run_dir, "config.json")))
    assert config["data_source"]["name"] == "digits" and config["data_source"]["split"] == "transfer"


def test_a_probe_epoch_keeps_its_last_partial_batch():
    from w2s_pipe.pipeline.train.probe import ProbeBatches, ProbeRows, probe_steps

    assert probe_steps(897, 100, 1, 1) == 9  # 8 x 100 + 97
    assert probe_steps(900, 100, 1, 1) == 9
    assert probe_steps(897, 60, 1, 2) == 8  # 7 x 120 + 57, split 29 + 28 over the two ranks
    assert probe_steps(841, 60, 1, 2) == 7  # 7 x 120 + 1: a row for one rank of two, dropped
    assert probe_steps(897, 50, 2, 1) == 8  # with --grad-accum: whole steps only
    rows = ProbeRows(torch.arange(897, dtype=torch.float32)[:, None])
    seen = []
    for rank in (0, 1):
        batches = iter(ProbeBatches(rows, batch_size=60, per_epoch=8, seed=0, rank=rank, world_size=2))
        epoch = [next(batches) for _ in range(8)]
        assert [len(b["features"]) for b in epoch] == [60] * 7 + [29 - rank]
        assert [b["share"] for b in epoch][-1] == pytest.approx((29 - rank) * 2 / 57)
        seen += [int(v) for b in epoch for v in b["features"][:, 0]]
    assert sorted(seen) == list(range(897))  # every row once an epoch, over both ranks


def test_pretrained_weights_that_saw_the_tasks_labels_are_named():
    import timm

    from w2s_pipe.pipeline.models.build import seen_labels

    model = timm.create_model("resnet18", pretrained=False)  # its default tag: a1_in1k (no weights are fetched)
    assert "resnet18.a1_in1k was trained with imagenet's labels" in seen_labels(model, "imagenet")
    assert seen_labels(model, "digits") is None
    vit = timm.create_model("vit_base_patch16_224.mae", pretrained=False)  # self-supervised: no labels
    assert seen_labels(vit, "imagenet") is None
    augreg = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    assert seen_labels(augreg, "imagenet") is not None
