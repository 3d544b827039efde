"""Feature stores (`w2s-pipe features`) and probes trained from stores alone (`train --features`):
the same head `--linear-probe` trains on the images, every bad pairing of stores one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.stages.features_config import FeaturesConfig
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.train import TrainConfig, run_train
from w2s_pipe.storage import open_store


def backbone(path, seed: int = 0, crop_pct: float = 1.0, model: str = "test_resnet") -> str:
    """A tiny timm model saved as this tool's checkpoint, evaluated at 32 px with the whole image
    (crop_pct 1): the centre view is then the training view of --crop-scale 1 --hflip 0."""
    import timm

    from w2s_pipe.pipeline.image.preprocess import data_config_for
    from w2s_pipe.pipeline.models.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    net = timm.create_model(model, num_classes=10, **({"img_size": 32} if "vit" in model else {}))
    save_checkpoint(str(path), net.state_dict(), model_name=model, num_classes=10,
                    data_config={**data_config_for(net, 32), "crop_pct": crop_pct})
    return str(path)


@pytest.fixture
def stores(digits_data, workspace_store, tmp_path):
    """(label store of the transfer split, the backbone, its feature stores of transfer and val)."""
    ckpt = backbone(tmp_path / "backbone.pt", seed=1)  # not the weak model (seed 0): its head has to move
    train = run_label(FeaturesConfig.tiny(checkpoint=ckpt).label_config())
    val = run_label(FeaturesConfig.tiny(checkpoint=ckpt, split="val").label_config())
    return workspace_store, ckpt, train.store, val.store


def test_a_feature_store_is_a_store_of_pooled_features(stores):
    labels, ckpt, train, val = stores
    store = open_store(train)
    assert store.features == 96 and store.kind == "feature store"  # test_resnet's pooled width
    assert train.endswith(os.path.join("features", "digits-transfer-test_resnet"))
    assert store.num_samples == open_store(labels).num_samples
    assert set(store.index().column_names) == {"key", "shard", "row", "label"}
    # the rows are the model's own pre-logits on the centre view, to float16
    from w2s_pipe.pipeline.image.preprocess import Preprocess
    from w2s_pipe.pipeline.models.build import load_model
    from w2s_pipe.pipeline.sources.shards import iter_samples

    loaded = load_model(None, checkpoint=ckpt, num_classes=10)
    config = loaded.data_config
    sample = next(iter_samples(store.shards[0]["url"]))
    image = Preprocess(config, "cpu")(sample, ("png",), store.shards[0]["name"]).float() / 255
    mean, std = (torch.tensor(config[k])[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        model = loaded.model.eval()
        expected = model.forward_head(model.forward_features(((image - mean) / std)[None]), pre_logits=True)[0]
    rows = store.shard_rows(0)
    assert rows.keys[0] == sample["__key__"]
    np.testing.assert_allclose(rows.arrays["features"][0].astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)
    # verify, inspect and a second run: a store like any other
    cli = [sys.executable, "-m", "w2s_pipe.cli"]
    out = subprocess.run([*cli, "verify", train], capture_output=True, text=True)
    assert out.returncode == 0 and "no problems found" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([*cli, "inspect", train, "--format", "json"], capture_output=True, text=True)
    stats = json.loads(out.stdout)
    assert stats["kind"] == "features" and stats["width"] == 96 and stats["samples"] == store.num_samples
    from w2s_pipe.stages.verify import VerifyConfig, run_verify

    refused = run_verify(VerifyConfig(store=train, recompute=2, check_data=False))
    assert not refused.ok and "recomputing is for label stores" in "\n".join(refused.summary())
    again = run_label(FeaturesConfig.tiny(checkpoint=ckpt).label_config())
    assert again.already_complete and "feature store" in again.summary()[0]


# kd is smooth in the features; adaptconf's argmax terms flip on the few samples whose logits (of this
# random backbone) are near ties once the features are rounded to float16
@pytest.mark.parametrize("loss,atol", [("kd", 1e-4), ("adaptconf", 2e-3)])
def test_a_probe_from_stored_features_is_the_linear_probe_on_images(stores, loss, atol):
    """On digits' centre views, no augmentation, one step per epoch of the whole split (so the
    order of samples within a batch is the only difference): the head trained from the stores equals
    the head `--linear-probe` trains on the decoded images, to float16's rounding of the features."""
    labels, ckpt, train, val = stores
    n = open_store(labels).num_samples
    common = dict(strong="test_resnet", strong_checkpoint=ckpt, labels=labels, batch_size=n, epochs=3, loss=loss,
                  crop_scale=1.0, hflip=0.0, opt="sgd", lr=0.5, weight_decay=0.0)
    probe = run_train(TrainConfig.tiny(**common, features=train, run="probe"))
    images = run_train(TrainConfig.tiny(**common, linear_probe=True, run="images"))
    heads = [torch.load(os.path.join(r.run_dir, "last.pt"), weights_only=True)["state_dict"] for r in (probe, images)]
    start = torch.load(ckpt, weights_only=True)["state_dict"]
    assert (heads[0]["fc.weight"] - start["fc.weight"]).abs().max() > 1e-2  # it trained
    for name in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=1e-3, atol=atol)  # it moved > 1e-2
    assert all(torch.equal(heads[0][k], start[k]) for k in start if not k.startswith("fc."))  # backbone kept
    config = json.load(open(os.path.join(probe.run_dir, "config.json")))
    assert config["data_source"]["features"] == train and config["data_source"]["val_features"] == val
    assert probe.val_top1 is not None and abs(probe.val_top1 - images.val_top1) <= 0.01


def test_probe_options_work_as_on_images(stores):
    """Selection, weighting, an ensemble and the ceiling (ground truth, no label store) run as probes,
    and a probe resumes to the uninterrupted run's weights."""
    labels, ckpt, train, _ = stores
    other = run_label(LabelConfig.tiny(weak_checkpoint=backbone(os.path.dirname(ckpt) + "/weak2.pt", seed=3),
                                       labels=os.path.dirname(labels) + "/second")).store
    base = dict(strong="test_resnet", strong_checkpoint=ckpt, features=train, epochs=2, batch_size=64)
    kept = run_train(TrainConfig.tiny(**base, labels=labels, keep_frac=0.5, run="kept"))
    kept_rows = -(-open_store(labels).num_samples // 2)  # ceil(0.5 x 897) = 449
    assert kept.step == 2 * -(-kept_rows // 64)  # each epoch keeps its last partial batch (449 = 7 x 64 + 1)
    run_train(TrainConfig.tiny(**base, labels=labels, weight_by="confidence", run="weighted"))
    run_train(TrainConfig.tiny(**base, labels=f"{labels},{other}", ensemble="mean-prob", run="ensemble"))
    # the methods that read each member (tests/test_methods.py has their formulas) run as probes
    learned = run_train(TrainConfig.tiny(**base, labels=f"{labels},{other}", ensemble="learned-sample",
                                         easy_epochs=1, run="learned"))
    table = torch.load(os.path.join(learned.run_dir, "last.pt"), weights_only=True)["members"]["weights"]
    assert table.shape == (sum(s["count"] for s in open_store(labels).shards), 2) and (table != 0.5).any()
    records = read_metrics(learned.run_dir)
    assert {r["epoch"] for r in records if r.get("kind") == "step" and "easy_kept" in r} == {1}
    run_train(TrainConfig.tiny(**base, labels=f"{labels},{other}", loss="evidential", run="evidential"))
    ceiling = run_train(TrainConfig.tiny(**base, loss="gt", data="digits", run="ceiling"))
    assert ceiling.finished
    whole = run_train(TrainConfig.tiny(**base, labels=labels, run="whole"))
    run_train(TrainConfig.tiny(**base, labels=labels, run="split", max_steps=5))
    split = run_train(TrainConfig.tiny(**base, labels=labels, run="split", resume=True))
    a, b = (torch.load(os.path.join(r.run_dir, "last.pt"), weights_only=True)["state_dict"] for r in (whole, split))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_pairings_of_stores_are_one_line(stores, tmp_path):
    labels, ckpt, train, val = stores
    base = dict(strong="test_resnet", strong_checkpoint=ckpt, labels=labels, epochs=1, features=train)
    with pytest.raises(W2SError, match=r"--features .* is a label store, not a feature store"):
        run_train(TrainConfig.tiny(**{**base, "features": labels}))
    vit = run_label(FeaturesConfig.tiny(checkpoint=backbone(tmp_path / "vit.pt", model="test_vit")).label_config())
    with pytest.raises(W2SError, match=r"holds test_vit's features, not --strong test_resnet's"):
        run_train(TrainConfig.tiny(**{**base, "features": vit.store}))
    with pytest.raises(W2SError, match=r"label store .* \(digits transfer\) and feature store .* \(digits val\) are of "
                                       r"different samples"):
        run_train(TrainConfig.tiny(**{**base, "features": val}))
    with pytest.raises(W2SError, match=r"was embedded with .*backbone.pt, not this run's weights"):
        run_train(TrainConfig.tiny(**{**base, "strong_checkpoint": backbone(tmp_path / "other.pt", seed=5)}))
    with pytest.raises(W2SError, match=r"give the --strong-checkpoint it was embedded with, or --pretrained"):
        run_train(TrainConfig.tiny(**{**base, "strong_checkpoint": None}))
    with pytest.raises(W2SError, match=r"no feature store of the validation split at .*digits-val-test_resnet: run "
                                       r"`w2s-pipe features --model test_resnet --data digits --split val`"):
        os.rename(val, val + "-moved")
        run_train(TrainConfig.tiny(**base))
    with pytest.raises(W2SError, match=r"--mixup/--cutmix acts on images"):
        TrainConfig.tiny(**base, mixup=0.8)
    with pytest.raises(W2SError, match=r"no --topk or --views"):
        LabelConfig.tiny(weak_checkpoint=ckpt, features=True, views=2)


def test_two_ranks_probe_as_one_process_with_their_global_batch(stores):
    """Under torchrun each rank takes its slice of every batch: two ranks of batch 30 train the head one
    process trains with batch 60 (the gradient of the same 60 rows, averaged), to float rounding, the
    epoch's last partial batch (897 = 14 x 60 + 57) too, split 29 + 28 and weighed by each part's
    share; with per-sample ensemble weights, every rank's table takes the steps of both ranks'
    samples (gathered)."""
    from launch import torchrun

    labels, ckpt, train, _ = stores
    other = run_label(LabelConfig.tiny(weak_checkpoint=backbone(os.path.dirname(ckpt) + "/weak2.pt", seed=3),
                                       labels=os.path.dirname(labels) + "/second")).store
    both = f"{labels},{other}"
    common = ["--strong", "test_resnet", "--strong-checkpoint", ckpt, "--features", train, "--labels", both,
              "--ensemble", "learned-sample", "--ensemble-lr", "0.5",
              "--epochs", "2", "--loss", "kd", "--opt", "sgd", "--lr", "0.5", "--weight-decay", "0", "--quiet",
              "--device", "cpu", "--precision", "fp32", "--no-eval"]
    out = torchrun(["train", *common, "--batch-size", "30", "--run-name", "ranks"], nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    one = run_train(TrainConfig.tiny(strong="test_resnet", strong_checkpoint=ckpt, features=train, labels=both,
                                     ensemble="learned-sample", ensemble_lr=0.5,
                                     epochs=2, loss="kd", opt="sgd", lr=0.5, weight_decay=0.0, batch_size=60,
                                     no_eval=True, run="one"))
    runs = os.path.join(os.environ["W2S_HOME"], "runs")
    end = read_metrics(os.path.join(runs, "ranks"))[-1]
    assert end["step"] == one.step == 2 * 15 and len(set(end["weights_sha256"])) == 1  # both ranks: the same head
    heads = [torch.load(os.path.join(d, "last.pt"), weights_only=True)["state_dict"]
             for d in (os.path.join(runs, "ranks"), one.run_dir)]
    start = torch.load(ckpt, weights_only=True)["state_dict"]
    assert (heads[1]["fc.weight"] - start["fc.weight"]).abs().max() > 1e-2  # it trained
    for name in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=1e-4, atol=1e-5)
    tables = [torch.load(os.path.join(d, "last.pt"), weights_only=True)["members"]["weights"]
              for d in (os.path.join(runs, "ranks"), one.run_dir)]
    assert (tables[1] != 0.5).any(1).sum() > len(tables[1]) // 2  # most samples' weights moved
    torch.testing.assert_close(tables[0], tables[1], rtol=1e-4, atol=1e-5)


def test_an_mlp_head_from_stores_equals_it_on_images_and_its_checkpoints_load_everywhere(stores, tmp_path):
    """--head-hidden 16: the MLP head trained from the stores equals the one --linear-probe trains on the
    images (float16's rounding); eval and label rebuild it from the checkpoint."""
    from w2s_pipe.stages.evaluate import EvalConfig, run_eval

    labels, ckpt, train, val = stores
    n = open_store(labels).num_samples
    common = dict(strong="test_resnet", strong_checkpoint=ckpt, labels=labels, batch_size=n, epochs=3, loss="kd",
                  crop_scale=1.0, hflip=0.0, opt="sgd", lr=0.5, weight_decay=0.0, head_hidden=16)
    probe = run_train(TrainConfig.tiny(**common, features=train, run="mlp-probe"))
    images = run_train(TrainConfig.tiny(**common, linear_probe=True, run="mlp-images"))
    heads = [torch.load(os.path.join(r.run_dir, "last.pt"), weights_only=True)["state_dict"] for r in (probe, images)]
    names = [k for k in heads[0] if k.startswith("fc.")]
    assert names == ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"]
    for name in names:
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=1e-3, atol=1e-4)
    evaluated = run_eval(EvalConfig(run=probe.run_dir, device="cpu", workers=0))
    assert abs(evaluated["top1"] - probe.val_top1) <= 0.01  # the same head rebuilt (float32 features, not fp16)
    relabelled = run_label(LabelConfig.tiny(weak_checkpoint=os.path.join(probe.run_dir, "last.pt"),
                                            labels=str(tmp_path / "by-mlp")))
    assert open_store(relabelled.store).complete
    with pytest.raises(W2SError, match="--head-hidden"):
        TrainConfig.tiny(head_hidden=0)
