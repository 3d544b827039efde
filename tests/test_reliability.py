"""Crashes lose nothing: SIGKILL at random points, two labellers on one store, resumed training."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.prepare import prepare_digits
from w2s_pipe.storage import open_store

EXE = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """digits with 32-sample shards: 29 transfer shards, so kills land between and inside shards."""
    root = tmp_path_factory.mktemp("data32")
    prepare_digits(str(root / "digits"), shard_size=32)
    return root


def env_for(tmp_path, data_root):
    return {**os.environ, "W2S_HOME": str(tmp_path / "ws"), "W2S_DATA": str(data_root), "OMP_NUM_THREADS": "1"}


def label_cmd(ckpt, store):
    return [EXE, "label", "--weak-checkpoint", ckpt, "--labels", store, "--quiet", "--workers", "1",
            "--batch-size", "8", "--precision", "fp32"]


def same_store(a, b):
    a, b = open_store(a), open_store(b)
    assert a.index().equals(b.index())
    for name, values in a.dask_arrays().items():
        np.testing.assert_array_equal(b.dask_arrays()[name].compute(), values.compute())
    keys = b.index().column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 897


@pytest.fixture
def one_thread():
    """The killed processes run with OMP_NUM_THREADS=1; a model's float output depends on the thread
    count, so in-process runs compared with them bit for bit use one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def label_in_process(ckpt, store, **kw):
    """The same job as `label_cmd`, run in this process (saves a process start per run)."""
    return run_label(LabelConfig(weak=None, weak_checkpoint=ckpt, data="digits", labels=store, workers=1, batch_size=8,
                                 precision="fp32", progress=False, **kw))


def reference_store(tmp_path, ckpt):
    return label_in_process(ckpt, str(tmp_path / "ref")).store


def test_label_killed_at_random_points_then_rerun_equals_uninterrupted(tmp_path, many_shards, weak_ckpt, one_thread,
                                                                        monkeypatch):
    env = env_for(tmp_path, many_shards)
    monkeypatch.setenv("W2S_DATA", str(many_shards))
    reference = reference_store(tmp_path, weak_ckpt)
    rng = random.Random(0)
    outcomes = []
    for trial in range(3):  # three points: the suite's time is shared (each trial is a label process)
        store = str(tmp_path / f"killed{trial}")
        # Kill after a random number of finished shards (or, for trial 0, before any).
        target = 0 if trial == 0 else rng.randint(1, 27)
        proc = subprocess.Popen(label_cmd(weak_ckpt, store), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            done = os.path.join(store, "done")
            if (target == 0 and os.path.exists(os.path.join(store, "zarr.json"))) or \
                    (os.path.isdir(done) and len(os.listdir(done)) >= target > 0):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        finished_before, samples_done = 0, 0
        # The half-done store is readable and says exactly what is missing.
        if os.path.exists(os.path.join(store, "zarr.json")):
            try:
                partial = open_store(store)
            except Exception as exc:  # attributes not yet written: the re-run must cope
                assert "attribute" in str(exc) or "format" in str(exc), exc
            else:
                done = partial.done_shards()
                assert len(partial.missing_shards()) == 29 - len(done)
                finished_before = len(done)
                samples_done = sum(partial.shards[i]["count"] for i in done)
        rerun = label_in_process(weak_ckpt, store)
        assert rerun.complete
        labelled_again = rerun.samples
        outcomes.append((target, finished_before, labelled_again))
        same_store(reference, store)
        # Exactly what was missing was labelled: nothing finished before the kill, again.
        assert labelled_again == 897 - samples_done
    assert any(done > 0 for _, done, _ in outcomes)
    print("kill trials (target shards, shards done at the kill, samples labelled by the re-run):", outcomes)


def test_two_labellers_started_by_hand_share_the_shards(tmp_path, many_shards, weak_ckpt, one_thread, monkeypatch):
    env = env_for(tmp_path, many_shards)
    monkeypatch.setenv("W2S_DATA", str(many_shards))
    reference = reference_store(tmp_path, weak_ckpt)
    store = str(tmp_path / "shared")
    # Create the store first so that both processes start labelling at once.
    first = subprocess.run([*label_cmd(weak_ckpt, store), "--max-shards", "1"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    procs = [subprocess.Popen(label_cmd(weak_ckpt, store), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    # Both must really run at once: the first to claim a shard is paused (its claim held) until the other
    # has claimed one too, so that a slow start-up cannot leave one process nothing to do.
    claims, paused, deadline = os.path.join(store, "claims"), None, time.time() + 120
    while time.time() < deadline and all(p.poll() is None for p in procs):
        holders = set()
        for name in os.listdir(claims) if os.path.isdir(claims) else ():
            try:
                holders.add(json.load(open(os.path.join(claims, name)))["pid"])
            except (OSError, ValueError, KeyError):
                pass
        if paused is None and holders & {p.pid for p in procs}:
            paused = next(p for p in procs if p.pid in holders)
            paused.send_signal(signal.SIGSTOP)
        if paused is not None and any(p.pid in holders for p in procs if p is not paused):
            break
        time.sleep(0.005)
    if paused is not None:
        paused.send_signal(signal.SIGCONT)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    counts = [int(out.split("labelled ")[1].split(" samples")[0]) for out, _ in outs]
    shards = [int(out.split(" samples in ")[1].split(" shards")[0]) for out, _ in outs]
    # Every remaining shard labelled exactly once between the two processes, and each reports
    # only the shards it labelled itself.
    assert sum(counts) == 897 - 32 and sum(shards) == 28
    assert min(counts) > 0, counts
    same_store(reference, store)
    assert not os.listdir(os.path.join(store, "claims"))


def test_a_store_creation_cut_short_is_started_again(tmp_path, digits_data, weak_ckpt):
    import zarr

    store = str(tmp_path / "cut")
    zarr.open_group(store, mode="w")  # the group exists, its attributes were never written
    result = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=store, workers=0,
                                   progress=False))
    assert result.complete and open_store(store).num_samples == 897


def test_stale_claim_of_a_dead_process_is_taken_over(tmp_path, digits_data, weak_ckpt):
    from w2s_pipe.storage.claims import ShardClaims

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = str(tmp_path / "s")
    run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=store, workers=0, max_shards=1,
                          progress=False))
    assert ShardClaims(store, dead.pid).claim(2)  # a claim left behind by a process that died
    live = ShardClaims(store, os.getpid())
    result = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=store, workers=0,
                                   progress=False))
    assert result.complete and result.shards == 3
    assert live.held_by_others(set(range(4))) == []


def test_train_killed_then_resumed(tmp_path, digits_data, weak_ckpt):
    run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", workers=0, progress=False))
    env = {**os.environ, "W2S_HOME": str(tmp_path / "ws"), "OMP_NUM_THREADS": "1"}
    args = [EXE, "train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "4",
            "--workers", "0", "--precision", "fp32", "--device", "cpu", "--quiet", "--log-every", "1", "--run-name", "k"]
    run_dir = tmp_path / "ws" / "runs" / "k"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "last.pt").exists() and (run_dir / "metrics.jsonl").exists() and \
                sum(1 for _ in open(run_dir / "metrics.jsonl")) > 60:  # past epoch 1's checkpoint
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    saved = torch.load(run_dir / "last.pt", weights_only=True)  # never half-written
    resumed = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    total = 4 * (897 // 16)
    assert f"finished at step {total}" in resumed.stdout
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]  # every line parses
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == total
    assert saved["step"] in steps and saved["step"] % (897 // 16) == 0
    # and it ends where the run that was never killed ends, to the bit (the CPU, one thread each)
    whole = subprocess.run([*args[:-1], "whole"], env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]

    def end(name):
        return read_metrics(tmp_path / "ws" / "runs" / name)[-1]

    assert end("k")["weights_sha256"] == end("whole")["weights_sha256"]


def test_two_creators_at_once_share_one_store(tmp_path):
    """Two processes (threads here, started together by a barrier) creating one new store: one creates
    it, the other waits and opens it; before the creation lock, 7 trials in 10 raised ContainsArrayError
    or FileNotFoundError."""
    import threading

    from w2s_pipe.storage.writer import StoreWriter

    attrs = {"weak": {"model": "m", "checkpoint": None, "checkpoint_sha256": "x"}, "num_classes": 4,
             "class_names": None, "preprocessing": {}, "precision": "fp32",
             "data": {"name": "t", "split": "s", "pattern": "p", "image_field": "png", "label_field": "cls",
                      "fingerprint": "f", "shards": [{"name": f"s{i}.tar", "url": f"/x/s{i}.tar", "count": 10,
                                                      "bytes": 1} for i in range(50)]},
             "layout": {"capacity": 10, "rows": 500, "topk": None}, "tool_version": "t"}
    for trial in range(10):
        url, barrier, errors, writers = str(tmp_path / f"store{trial}"), threading.Barrier(2), [], []

        def create():
            barrier.wait()
            try:
                writers.append(StoreWriter.create(url, dict(attrs)))
            except Exception as exc:  # the failure this test exists for
                errors.append(repr(exc))

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(writers) == 2, errors
        assert not os.path.exists(url + ".creating")


def test_a_claim_from_another_host_is_a_lease(tmp_path):
    """Another host's claim holds while renewed and is taken over once LEASE_S old; renew() keeps
    this owner's claims fresh."""
    from w2s_pipe.storage import claims as C

    store = str(tmp_path / "s")
    os.makedirs(os.path.join(store, "claims"))
    elsewhere = os.path.join(store, "claims", "000003.json")
    with open(elsewhere, "w") as f:
        json.dump({"host": "another-host", "pid": 1, "time": time.time()}, f)
    mine = C.ShardClaims(store, os.getpid())
    assert not mine.claim(3)  # fresh: respected
    old = time.time() - C.LEASE_S - 5
    os.utime(elsewhere, (old, old))
    assert mine.claim(3)  # not renewed for LEASE_S: taken over
    os.utime(mine._path(3), (old, old))
    mine.renew(force=True)
    assert time.time() - os.path.getmtime(mine._path(3)) < 5


def test_a_claim_is_never_seen_empty(tmp_path):
    """A claim appears with its holder already in it (written aside, then hard-linked into place): a
    process killed while claiming leaves no empty claim behind, which a re-run respected as 'being
    written' for 30 s and so left a shard unlabelled (seen once in CI after the loading processes
    began to die with their parent)."""
    from w2s_pipe.storage.claims import create_exclusive

    path = str(tmp_path / "000001.json")
    assert create_exclusive(path, {"host": "h", "pid": 1})
    assert not create_exclusive(path, {"host": "other", "pid": 2})
    assert json.load(open(path)) == {"host": "h", "pid": 1}
    assert os.listdir(tmp_path) == ["000001.json"]  # the private copy is gone


def test_store_size_survives_a_file_renamed_under_it(tmp_path, digits_data, weak_ckpt, monkeypatch):
    """Two labellers finishing one store at once: one summed the store's size while the other renamed
    its temporary index file, and died with FileNotFoundError (seen once in CI). The listing is made
    to include a file that is gone by the time it is sized, as in that race."""
    store = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "s"),
                                  workers=0, progress=False)).store
    opened = open_store(store)
    expected = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(store) for f in files)
    listed = opened.fs.find(opened.path)
    # fsspec shares one filesystem instance: patched for this test only, and restored after it
    monkeypatch.setattr(opened.fs, "find", lambda path, **kw: listed + [os.path.join(store, "index.parquet.tmp-1-gone")])
    assert opened.size_bytes() == expected


def test_a_second_train_of_a_live_run_is_refused_naming_it_and_a_gone_ones_starts_again(tmp_path, workspace_store):
    """Two processes, one --run-name: a real `train` process holds its run while it trains
    (<run>/owner.json; paused here with SIGSTOP, so that it is alive for as long as the test needs);
    a second, with --resume or not, is refused naming that process and trains nothing. Killed before
    its first checkpoint (its owner.json stays, naming a dead pid), the same command trains the run
    from its start, and the finished run holds no claim. A holder on another host is refused with the
    file to delete. (A run killed after a checkpoint resumes through the same takeover:
    test_train_killed_then_resumed.)"""
    from w2s_pipe.errors import W2SError
    from w2s_pipe.stages.train import TrainConfig, run_train

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [EXE, "train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "64", "--epochs", "1",
            "--workers", "0", "--precision", "fp32", "--device", "cpu", "--quiet", "--run-name", "r"]
    run_dir = tmp_path / "ws" / "runs" / "r"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "config.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)
    try:
        assert json.load(open(run_dir / "owner.json"))["pid"] == proc.pid and not (run_dir / "last.pt").exists()
        same = TrainConfig(strong="test_resnet", img_size=32, batch_size=64, epochs=1, workers=0, precision="fp32",
                           device="cpu", progress=False, run="r")
        for resume in (False, True):
            with pytest.raises(W2SError, match=rf"run {run_dir} is being trained by process {proc.pid} \(since .*\); "
                                               "wait for it to end, or choose another --run-name"):
                run_train(dataclasses.replace(same, resume=resume))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert json.load(open(run_dir / "owner.json"))["pid"] == proc.pid  # left by the killed process
    result = run_train(same)  # no checkpoint was written: the same command starts the run again
    assert result.finished and not (run_dir / "owner.json").exists()
    (run_dir / "owner.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}))
    with pytest.raises(W2SError, match=rf"held by process 1 on elsewhere \(since then\); if it is gone, delete "
                                       rf"{run_dir / 'owner.json'}"):
        run_train(dataclasses.replace(same, resume=True))
    (run_dir / "owner.json").unlink()
    with pytest.raises(W2SError, match="exists; pass --resume"):  # refused for another reason: no claim kept
        run_train(same)
    assert not (run_dir / "owner.json").exists()
