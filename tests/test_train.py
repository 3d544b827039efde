"""Stage two end to end: real shards, a real store, tiny timm models, real checkpoints."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from launch import end_run, rank_pids, start_run, torchrun, torchrun_cmd

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.train import TrainConfig, run_train


def records(run_dir, kind=None):
    return read_metrics(run_dir, kind)


@pytest.fixture
def store(workspace_store):
    return workspace_store


def test_gt_training_lowers_the_loss_and_its_checkpoint_labels(tmp_path, digits_data):
    # On the CPU, where `eval` must reproduce training's own figures to the bit.
    result = run_train(TrainConfig.tiny(loss="gt", data="digits", split="weak", epochs=4, run="weak", device="cpu"))
    assert result.finished and result.step == 4 * (600 // 32)
    steps = records(result.run_dir, "step")
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.1
    epochs = records(result.run_dir, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and all(0 <= e["val_top1"] <= 1 for e in epochs)
    assert result.best_top1 == max(e["val_top1"] for e in epochs)
    config = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert config["data_source"]["split"] == "weak" and config["strong"] == "test_resnet"
    # `eval --run` measures the final weights, in the training precision: the last epoch's figure.
    from w2s_pipe.stages.evaluate import EvalConfig, run_eval

    final = run_eval(EvalConfig(run="weak", workers=0, device="cpu"))
    assert final["split"] == "val" and final["samples"] == 300 and final["precision"] == "fp32"
    assert final["checkpoint"].endswith("last.pt") and final["step"] == result.step
    assert (final["top1"], final["top5"]) == (epochs[-1]["val_top1"], epochs[-1]["val_top5"])
    best = run_eval(EvalConfig(run="weak", pick="best", workers=0, device="cpu"))
    assert best["checkpoint"].endswith("best.pt") and "selected on validation" in best["picked"]
    assert best["top1"] == pytest.approx(result.best_top1, abs=1e-9)
    # best.pt holds the weights alone; the optimizer's state, which only --resume reads, is in last.pt.
    import torch

    saved = {n: torch.load(os.path.join(result.run_dir, n), weights_only=True) for n in ("best.pt", "last.pt")}
    assert "optimizer" not in saved["best.pt"] and saved["last.pt"]["optimizer"]["state"]
    with pytest.raises(W2SError, match="no run 'nope'"):
        run_eval(EvalConfig(run="nope"))
    with pytest.raises(W2SError, match="--decode gpu needs a CUDA device, and this run is on cpu"):
        run_eval(EvalConfig(run="weak", decode="gpu", device="cpu"))
    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    printed = CliRunner().invoke(cli, ["eval", "--run", "weak", "--workers", "0", "--device", "cpu"]).output
    assert f"top-1 {final['top1']:.4f}" in printed
    assert f"last.pt (step {result.step}, epoch 4, the final weights), fp32, --decode cpu" in printed
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
    with open(os.path.join(first.run_dir, "metrics.jsonl"), "a") as f:
        f.write('{"kind": "step", "step": 6, "lo')  # a line cut by a crash
    second = run_train(TrainConfig.tiny(run="r", resume=True))
    total = 2 * (897 // 32)
    assert second.finished and second.step == total
    steps = [r["step"] for r in records(second.run_dir)]
    assert steps == sorted(steps) and steps[-1] == total
    assert [r["step"] for r in records(second.run_dir, "step")][:3] == [2, 4, 5]  # 5: the stop, then on from 6
    assert torch.load(os.path.join(second.run_dir, "last.pt"), weights_only=True)["step"] == total


def weights(run_dir):
    return torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)["state_dict"]


def test_a_resumed_run_is_the_uninterrupted_run(store):
    """On the CPU, 3 steps then --resume to 8 ends with the uninterrupted run's weights, and logs the
    same figures: same samples in the same order, same views, same generators. The stop falls inside
    the first epoch, so its train_agree spans the resume."""
    options = dict(epochs=2, steps_per_epoch=4, workers=1, hflip=0.5, log_every=1, device="cpu")
    whole = run_train(TrainConfig.tiny(run="whole", **options))
    run_train(TrainConfig.tiny(run="split", max_steps=3, **options))
    split = run_train(TrainConfig.tiny(run="split", resume=True, **options))
    assert split.finished and split.step == 8
    a, b = weights(whole.run_dir), weights(split.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)

    def figures(run_dir):
        return [{k: v for k, v in r.items() if k not in ("img_per_s", "seconds")} for r in records(run_dir)]

    assert figures(split.run_dir) == figures(whole.run_dir)
    assert "train_agree" in records(split.run_dir, "epoch")[0]


def test_the_paper_recipes_parts_resume_exactly(store):
    """A run with everything the recipes add (RandAugment, random erasing, mixup and cutmix with mixed
    weak labels, the ground-truth term smoothed, drop path, layer decay, gradient accumulation, EMA)
    stopped mid-epoch and resumed ends, on the CPU, with the uninterrupted run's weights and average."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from w2s_pipe.stages.evaluate import EvalConfig, run_eval

    options = dict(strong="test_vit", epochs=2, steps_per_epoch=3, hflip=0.5, aa="rand-m9-mstd0.5-inc1", reprob=0.5,
                   mixup=0.8, cutmix=1.0, gt_weight=1.0, smoothing=0.1, drop_path=0.1, layer_decay=0.75, grad_accum=2,
                   model_ema=True, model_ema_decay=0.9, kd_weight=0.5, log_every=1, device="cpu")
    whole = run_train(TrainConfig.tiny(run="whole", **options))
    run_train(TrainConfig.tiny(run="split", max_steps=2, **options))
    split = run_train(TrainConfig.tiny(run="split", resume=True, **options))
    assert whole.finished and split.finished and whole.step == 6
    for name in ("last.pt", "ema.pt"):
        a = torch.load(os.path.join(whole.run_dir, name), weights_only=True)["state_dict"]
        b = torch.load(os.path.join(split.run_dir, name), weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    last = torch.load(os.path.join(whole.run_dir, "last.pt"), weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], last[k]) for k in a)  # the average is not the weights
    # 2 batches of 32 per step; the EMA is evaluated beside the model, and `eval --pick ema` agrees
    assert all(r["img_per_s"] > 0 for r in records(whole.run_dir, "step"))
    epochs = records(whole.run_dir, "epoch")
    assert all("val_top1_ema" in e for e in epochs)
    ema = run_eval(EvalConfig(run="whole", pick="ema", workers=0, device="cpu"))
    assert ema["checkpoint"].endswith("ema.pt") and ema["top1"] == epochs[-1]["val_top1_ema"]
    # TensorBoard has every logged figure at its step, the resumed run's without repeats
    for run in (whole, split):
        board = EventAccumulator(os.path.join(run.run_dir, "tensorboard"))
        board.Reload()
        assert [e.step for e in board.Scalars("step/loss")] == [1, 2, 3, 4, 5, 6]
        assert [e.step for e in board.Scalars("epoch/val_top1_ema")] == [3, 6]


def test_gradient_accumulation_adds_up_to_the_whole_batch():
    """Two batches of 8 accumulated take the step that one batch of 16 takes (a model without
    batch statistics, so the two are the same computation)."""
    from w2s_pipe.pipeline.train.losses import objective
    from w2s_pipe.stages.train import train_step

    torch.manual_seed(0)
    images, weak, labels = torch.randn(16, 12), torch.randn(16, 5), torch.arange(16) % 5
    models = [torch.nn.Linear(12, 5) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in models]
    loss = objective("adaptconf", gt_weight=1.0)
    whole = train_step(models[0], [{"image": images, "weak": weak, "target": labels}], optimizers[0], loss, progress=0.5)
    halves = [{"image": images[i:i + 8], "weak": weak[i:i + 8], "target": labels[i:i + 8]} for i in (0, 8)]
    accumulated = train_step(models[1], halves, optimizers[1], loss, progress=0.5)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert accumulated["loss"].item() == pytest.approx(whole["loss"].item(), rel=1e-5)


def test_resume_refuses_changed_settings_by_name(store):
    run_train(TrainConfig.tiny(run="c", max_steps=2))
    with pytest.raises(W2SError) as exc:
        run_train(TrainConfig.tiny(run="c", resume=True, lr=0.01, weight_decay=0.0, threshold=4.0,
                                   kd_temperature=2.0, epochs=3))
    message = str(exc.value)
    for name in ("lr (started with 0.001, now 0.01)", "weight_decay", "threshold", "kd_temperature", "epochs"):
        assert name in message
    with pytest.raises(W2SError, match=r"workers_resolved \(started with 0, now 1\)"):
        run_train(TrainConfig.tiny(run="c", resume=True, workers=1))
    # What only steers the invocation may change.
    assert run_train(TrainConfig.tiny(run="c", resume=True, log_every=5, max_steps=1)).step == 3


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
        run_train(TrainConfig.tiny(data="digits", split="weak", labels=store, run="x"))
    with pytest.raises(W2SError, match="no complete label store of digits split weak in .*; run `w2s-pipe label` first"):
        run_train(TrainConfig.tiny(data="digits", split="weak", run="x"))
    with pytest.raises(W2SError, match="unknown model 'resnet181'"):
        run_train(TrainConfig.tiny(strong="resnet181", run="y"))
    with pytest.raises(W2SError, match="--loss 'ce' is invalid"):
        TrainConfig.tiny(loss="ce")
    # Shards without ground truth: a store of them cannot serve --gt-weight.
    from w2s_pipe.pipeline.sources.shards import iter_samples, write_shard

    os.makedirs(tmp_path / "nolabel")
    src = sorted((digits_data).glob("digits-val-*.tar"))[0]
    write_shard(str(tmp_path / "nolabel" / "nl-000000.tar"),
                [{"__key__": s["__key__"], "png": s["png"]} for s in iter_samples(str(src))])
    bare = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data=str(tmp_path / "nolabel" / "nl-*.tar"),
                                 labels=str(tmp_path / "bare"), workers=0, progress=False)).store
    with pytest.raises(W2SError, match="--gt-weight needs ground-truth labels"):
        run_train(TrainConfig.tiny(labels=bare, gt_weight=1.0, no_eval=True, run="z"))


def test_no_store_found(tmp_path):
    with pytest.raises(W2SError, match="no complete label store in .*stores; run `w2s-pipe label` first"):
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


def test_torchrun_two_ranks_stop_lose_a_rank_and_resume_to_the_uninterrupted_weights(store, tmp_path):
    """Two ranks (gloo on the CPU) end with equal weights. The same run stopped by --max-steps in
    epoch 2, resumed, and cut short by SIGKILL of rank 1: rank 0 ends within seconds with one line
    naming itself, the step and what it waited for; it refuses to resume on one rank, and resumed on
    two (from the stop's last.pt) ends with the uninterrupted run's weights."""
    cmd = ["train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "2",
           "--steps-per-epoch", "20", "--workers", "0", "--precision", "fp32", "--quiet", "--log-every", "20",
           "--device", "cpu"]  # gloo on the CPU, on a GPU machine too; loading in each rank (other tests fork)
    runs = tmp_path / "ws" / "runs"
    out = torchrun([*cmd, "--run-name", "ddp"])
    assert out.returncode == 0, out.stderr[-3000:]
    end = records(str(runs / "ddp"), "end")[0]
    assert end["step"] == 40 and len(end["weights_sha256"]) == 2
    assert end["weights_sha256"][0] == end["weights_sha256"][1]
    assert out.stdout.count("finished at step 40") == 1

    stop = torchrun([*cmd, "--run-name", "split", "--max-steps", "24"])
    assert stop.returncode == 0 and "stopped (continue with --resume) at step 24" in stop.stdout, stop.stderr[-3000:]
    # each step logged (--log-every may change on resume), to see when to kill
    line, seconds = lose_rank_1(torchrun_cmd([*cmd, "--run-name", "split", "--resume", "--log-every", "1"]),
                                str(runs / "split"), 26)
    assert seconds < 30, f"the run took {seconds:.1f} s to end after rank 1 was lost"
    assert re.fullmatch(r"Error: rank 0 of 2 at step (2[6-9]|3\d|40), epoch 2, waiting for [^:]+: .*--resume\)", line), line
    with pytest.raises(W2SError, match=r"world_size \(started with 2, now 1\)"):
        run_train(TrainConfig.tiny(strong="test_resnet", batch_size=16, epochs=2, steps_per_epoch=20, workers=0,
                                   hflip=0.5, log_every=20, device="cpu", run="split", resume=True))
    resumed = torchrun([*cmd, "--run-name", "split", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records(str(runs / "split"), "end")[0]["weights_sha256"] == end["weights_sha256"]


def lose_rank_1(cmd, run_dir: str, at_step: int) -> tuple[str, float]:
    """Run torchrun `cmd`, SIGKILL its rank 1 once step `at_step` is logged; (rank 0's error line,
    seconds from the kill to the run's end)."""
    proc = start_run(cmd)
    try:
        deadline = time.monotonic() + 120
        while not any(r["step"] >= at_step for r in records_so_far(run_dir, "step")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        os.kill(rank_pids(proc.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            end_run(proc)
    assert proc.returncode != 0, "the run finished before rank 1 was killed"
    assert not re.search(r'File ".*(stages|pipeline)/', err), err[-3000:]  # no traceback of ours: the line says it
    lines = [line for line in err.splitlines() if line.startswith("Error: rank 0 of 2")]
    assert len(lines) == 1, err[-3000:]
    return lines[0], seconds


def records_so_far(run_dir, kind):
    try:
        return records(run_dir, kind)
    except (OSError, ValueError):  # not written yet, or a line being written
        return []


def test_more_ranks_than_gpus_is_one_line():
    from w2s_pipe.pipeline.runtime.distributed import check_gpu_count

    check_gpu_count(0, 1)
    with pytest.raises(W2SError, match="local rank 1 has no GPU: this machine has 1 GPU .* use --nproc-per-node 1"):
        check_gpu_count(1, 1)


def same_seed_runs(tag, **options):
    base = dict(loss="gt", data="digits", split="weak", epochs=1, hflip=0.5, no_eval=True)
    runs = [run_train(TrainConfig.tiny(**base, **options, run=f"{tag}{i}")) for i in range(2)]
    return [[r["loss"] for r in records(run.run_dir, "step")] for run in runs], [weights(r.run_dir) for r in runs]


def test_same_seed_same_run(digits_data):
    """On the CPU --seed fixes everything, augmentation included: two runs are identical to the bit."""
    (a, b), (wa, wb) = same_seed_runs("cpu", device="cpu")
    assert a == b and all(torch.equal(wa[k], wb[k]) for k in wa)
    other = run_train(TrainConfig.tiny(loss="gt", data="digits", split="weak", epochs=1, run="seed-other", hflip=0.5,
                                       no_eval=True, seed=1, device="cpu"))
    assert [r["loss"] for r in records(other.run_dir, "step")] != a


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU kernels' determinism needs a CUDA GPU; the CPU case is above")
def test_same_seed_on_a_gpu(digits_data):
    """On a GPU, atomics make two runs differ in the last bits: losses agree to 1e-3 (relative) after
    an epoch; --deterministic makes them identical, or says which operation has no deterministic kernel."""
    (a, b), _ = same_seed_runs("gpu", device="cuda")
    assert a == pytest.approx(b, rel=1e-3)
    try:
        (a, b), (wa, wb) = same_seed_runs("det", device="cuda", deterministic=True)
    except W2SError as exc:
        assert "has no deterministic kernel" in str(exc)
        return
    assert a == b and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_deterministic_mode_is_scoped():
    from w2s_pipe.pipeline.runtime.distributed import deterministic_mode

    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.fixture
def own_digits(tmp_path, monkeypatch, weak_ckpt):
    """A private copy of the digits shards (these tests rewrite one) and its store."""
    from w2s_pipe.stages.prepare import prepare_digits

    prepare_digits(str(tmp_path / "data" / "digits"), shard_size=256)
    monkeypatch.setenv("W2S_DATA", str(tmp_path / "data"))
    run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", workers=0, progress=False))
    return tmp_path / "data" / "digits"


def rewrite_first_transfer_shard(data, change):
    from w2s_pipe.pipeline.sources.shards import iter_samples, write_shard

    path = str(sorted(data.glob("digits-transfer-*.tar"))[0])
    samples = [{k: v for k, v in s.items() if k != "__url__"} for s in iter_samples(path)]
    write_shard(path, change(samples))
    return os.path.basename(path)


def test_shards_changed_after_labelling_are_refused(own_digits):
    """Same shard names and keys, other images: the stored labels belong to other pictures."""
    def other_images(samples):
        pngs = [s["png"] for s in samples]
        return [{**s, "png": pngs[(i + 1) % len(pngs)]} for i, s in enumerate(samples)]

    name = rewrite_first_transfer_shard(own_digits, other_images)
    with pytest.raises(W2SError, match=f"shard {name}: .* changed since it was labelled .*--skip-shard-check"):
        run_train(TrainConfig.tiny(run="changed", max_steps=1))
    assert run_train(TrainConfig.tiny(run="anyway", max_steps=1, skip_shard_check=True)).step == 1


def test_skip_missing_counts_reach_the_log(own_digits):
    def one_stranger(samples):
        return samples[:3] + [{**samples[3], "__key__": "stranger"}] + samples[3:]

    rewrite_first_transfer_shard(own_digits, one_stranger)
    with pytest.raises(W2SError, match="key 'stranger' has no row in store"):
        run_train(TrainConfig.tiny(run="strict", skip_shard_check=True))
    result = run_train(TrainConfig.tiny(run="lenient", skip_shard_check=True, skip_missing=True))
    epochs, end = records(result.run_dir, "epoch"), records(result.run_dir, "end")[0]
    assert epochs[0]["dropped_missing"] == 1  # the stranger, met once in the first pass
    assert end["dropped_missing"] == sum(e["dropped_missing"] for e in epochs) >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="--decode gpu needs a CUDA GPU; its functions run on CPU "
                    "tensors in test_augment.py")
def test_training_decodes_on_the_gpu(store):
    result = run_train(TrainConfig.tiny(run="gpu-decode", epochs=1, decode="gpu", device="cuda"))
    config = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert result.finished and config["decode_resolved"] == "gpu"
    assert all(math.isfinite(r["loss"]) for r in records(result.run_dir, "step"))


def test_train_without_labels_takes_the_one_store_and_says_so(store, weak_ckpt, capsys):
    """No newest-store guess: one complete store is used and named with why; two that fit are a
    one-line error naming both, and --labels chooses."""
    broken = os.path.join(os.path.dirname(store), "broken")  # a damaged store is no candidate
    os.makedirs(broken)
    open(os.path.join(broken, "index.parquet"), "w").close()
    open(os.path.join(broken, "zarr.json"), "w").write("{garbage")
    run_train(TrainConfig.tiny(run="one", max_steps=1))
    assert f"weak labels: store {store} (the only complete label store in " in capsys.readouterr().err
    other = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", topk=3, workers=0,
                                  precision="fp32", progress=False)).store
    with pytest.raises(W2SError, match=r"2 complete label stores in .*\(digits-transfer-test_resnet, "
                                       r"digits-transfer-test_resnet-top3\): choose one with --labels PATH"):
        run_train(TrainConfig.tiny(run="two", max_steps=1))
    run_train(TrainConfig.tiny(run="two", max_steps=1, labels=other))
    assert f"weak labels: store {other} (--labels)" in capsys.readouterr().err


def test_eval_says_which_store_a_run_trained_from(store):
    import shutil

    from click.testing import CliRunner

    from w2s_pipe.cli import cli

    run_train(TrainConfig.tiny(run="w2s", epochs=1, device="cpu"))
    args = ["eval", "--run", "w2s", "--workers", "0", "--device", "cpu"]
    printed = CliRunner().invoke(cli, args).output
    assert f"trained from the weak labels of store {store} (still there), test_resnet on digits transfer" in printed
    assert "evaluated on " in printed and "digits-val-" in printed
    shutil.rmtree(store)
    assert f"store {store} (no longer there)" in CliRunner().invoke(cli, args).output


def test_option_values_are_checked_at_once():
    with pytest.raises(W2SError, match="--img-size 0 is invalid: must be at least 8 pixels"):
        TrainConfig(strong="x", img_size=0)
