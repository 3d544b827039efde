"""Stage two end to end: real shards, a real store, tiny timm models, real checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from w2s_pipe.errors import W2SError
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.train import TrainConfig, run_train


def records(run_dir, kind=None):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        out = [json.loads(line) for line in f]
    return [r for r in out if kind is None or r["kind"] == kind]


@pytest.fixture
def store(tmp_path, digits_data, weak_ckpt):
    cfg = LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", workers=0, precision="fp32", progress=False)
    return run_label(cfg).store  # in the workspace, where `train` finds it without being told


def test_gt_training_lowers_the_loss_and_its_checkpoint_labels(tmp_path, digits_data):
    result = run_train(TrainConfig.tiny(loss="gt", data="digits", split="weak", epochs=4, run="weak"))
    assert result.finished and result.step == 4 * (600 // 32)
    steps = records(result.run_dir, "step")
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.1
    epochs = records(result.run_dir, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and all(0 <= e["val_top1"] <= 1 for e in epochs)
    assert result.best_top1 == max(e["val_top1"] for e in epochs)
    config = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert config["data_source"]["split"] == "weak" and config["strong"] == "test_resnet"
    # `eval --run` re-measures the best checkpoint on the validation split.
    from w2s_pipe.stages.evaluate import EvalConfig, run_eval

    again = run_eval(EvalConfig(run="weak", workers=0))
    assert again["split"] == "val" and again["samples"] == 300
    assert again["top1"] == pytest.approx(result.best_top1, abs=1e-9)
    with pytest.raises(W2SError, match="no run 'nope'"):
        run_eval(EvalConfig(run="nope"))
    # A `train --loss gt` checkpoint is a valid --weak-checkpoint for `label`.
    labelled = run_label(LabelConfig(weak=None, weak_checkpoint=os.path.join(result.run_dir, "best.pt"), data="digits",
                                     labels=str(tmp_path / "s"), workers=0, progress=False))
    assert labelled.complete and labelled.samples == 897


def test_adaptconf_run_from_the_workspace_store(store):
    result = run_train(TrainConfig.tiny(run="strong"))
    steps = records(result.run_dir, "step")
    assert all(0 < r["beta"] <= 0.5 and 0 <= r["agree"] <= 1 and r["kd"] >= 0 for r in steps)
    assert "train_agree" in records(result.run_dir, "epoch")[-1]
    config = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert config["data_source"]["store"] == store and len(config["data_source"]["store_id"]) == 16


@pytest.mark.parametrize("loss", ["hard", "kd", "augconf"])
def test_other_losses_run(store, loss):
    result = run_train(TrainConfig.tiny(loss=loss, run=loss, epochs=1, gt_weight=0.5))
    last = records(result.run_dir, "step")[-1]
    assert result.finished and "ce_gt" in last and (loss != "augconf" or last["alpha"] > 0)


def test_resume_continues_from_the_step_it_stopped_at(store):
    first = run_train(TrainConfig.tiny(run="r", max_steps=5))
    assert not first.finished and first.step == 5
    assert torch.load(os.path.join(first.run_dir, "last.pt"), weights_only=True)["step"] == 5
    with pytest.raises(W2SError, match="exists; pass --resume"):
        run_train(TrainConfig.tiny(run="r"))
    with pytest.raises(W2SError, match="started with epochs=2"):
        run_train(TrainConfig.tiny(run="r", resume=True, epochs=3))
    with open(os.path.join(first.run_dir, "metrics.jsonl"), "a") as f:
        f.write('{"kind": "step", "step": 6, "lo')  # a line cut by a crash
    second = run_train(TrainConfig.tiny(run="r", resume=True))
    total = 2 * (897 // 32)
    assert second.finished and second.step == total
    steps = [r["step"] for r in records(second.run_dir)]
    assert steps == sorted(steps) and steps[-1] == total
    assert [r["step"] for r in records(second.run_dir, "step")][:3] == [2, 4, 5]  # 5: the stop, then on from 6
    assert torch.load(os.path.join(second.run_dir, "last.pt"), weights_only=True)["step"] == total


def test_linear_probe_trains_only_the_head(store):
    import timm

    result = run_train(TrainConfig.tiny(run="probe", linear_probe=True, epochs=1))
    trained = torch.load(os.path.join(result.run_dir, "last.pt"), weights_only=True)["state_dict"]
    torch.manual_seed(0)
    initial = timm.create_model("test_resnet", num_classes=10).state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_non_finite_loss_stops_with_the_step(store):
    with pytest.raises(W2SError, match=r"the loss is (nan|inf) at step \d+"):
        run_train(TrainConfig.tiny(run="boom", opt="sgd", lr=1e12, loss="kd", epochs=1))


def test_topk_store_trains(tmp_path, digits_data, weak_ckpt):
    top = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "t"),
                                topk=3, workers=0, progress=False)).store
    assert run_train(TrainConfig.tiny(labels=top, loss="kd", run="top", epochs=1)).finished


def test_bad_inputs(tmp_path, digits_data, store, weak_ckpt):
    with pytest.raises(W2SError, match="store .* labelled digits split transfer, not --data digits --split weak"):
        run_train(TrainConfig.tiny(data="digits", split="weak", run="x"))
    with pytest.raises(W2SError, match="unknown model 'resnet181'"):
        run_train(TrainConfig.tiny(strong="resnet181", run="y"))
    with pytest.raises(W2SError, match="--loss 'ce' is invalid"):
        TrainConfig.tiny(loss="ce")
    # Shards without ground truth: a store of them cannot serve --gt-weight.
    from w2s_pipe.pipeline.shards import iter_samples, write_shard

    os.makedirs(tmp_path / "nolabel")
    src = sorted((digits_data).glob("digits-val-*.tar"))[0]
    write_shard(str(tmp_path / "nolabel" / "nl-000000.tar"),
                [{"__key__": s["__key__"], "png": s["png"]} for s in iter_samples(str(src))])
    bare = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data=str(tmp_path / "nolabel" / "nl-*.tar"),
                                 labels=str(tmp_path / "bare"), workers=0, progress=False)).store
    with pytest.raises(W2SError, match="--gt-weight needs ground-truth labels"):
        run_train(TrainConfig.tiny(labels=bare, gt_weight=1.0, no_eval=True, run="z"))


def test_no_store_found(tmp_path):
    with pytest.raises(W2SError, match="no label store found in .*stores; run `w2s-pipe label` first"):
        run_train(TrainConfig.tiny(run="n"))


def test_two_train_processes_read_one_store(store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")
    args = ["train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "32", "--epochs", "1",
            "--workers", "1", "--precision", "fp32", "--quiet", "--labels", store]
    procs = [subprocess.Popen([exe, *args, "--run-name", f"p{i}", "--seed", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "finished at step 28" in out


def test_torchrun_two_ranks_end_with_identical_weights(store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "w2s_pipe.cli",
           "train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "1",
           "--steps-per-epoch", "6", "--workers", "1", "--precision", "fp32", "--quiet", "--run-name", "ddp"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    end = records(str(tmp_path / "ws" / "runs" / "ddp"), "end")[0]
    assert end["step"] == 6 and len(end["weights_sha256"]) == 2
    assert end["weights_sha256"][0] == end["weights_sha256"][1]
    assert out.stdout.count("finished at step 6") == 1


def test_same_seed_same_run(digits_data):
    """--seed fixes everything, augmentation included (timm's transforms draw from Python's random)."""
    runs = [run_train(TrainConfig.tiny(loss="gt", data="digits", split="weak", epochs=1, run=f"seed{i}", hflip=0.5,
                                       no_eval=True)) for i in range(2)]
    losses = [[r["loss"] for r in records(run.run_dir, "step")] for run in runs]
    assert losses[0] == losses[1]
    other = run_train(TrainConfig.tiny(loss="gt", data="digits", split="weak", epochs=1, run="seed-other", hflip=0.5,
                                       no_eval=True, seed=1))
    assert [r["loss"] for r in records(other.run_dir, "step")] != losses[0]
