"""Faults a shared machine makes: data and stores on a read-only mount (read from, never written;
writing into one is one line before any work). Mounts are made in a private mount namespace
(`unshare -m`, as root); where that is not permitted the test skips, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from w2s_pipe.pipeline.train.runs import read_metrics

EXE = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")


def can_mount() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not can_mount(), reason="needs root and `unshare -m` to mount in a private namespace")


def in_namespace(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)


def read_only(*paths) -> str:
    return "".join(f"mount --bind {p} {p} && mount -o remount,ro,bind {p} && " for p in paths)


@needs_mounts
def test_a_store_and_data_on_a_read_only_mount_are_read_and_never_written(tmp_path, digits_data, workspace_store,
                                                                          weak_ckpt):
    """train, verify, inspect and report work from a store and data on a read-only mount; prepare,
    label and study into one, and train into a read-only runs folder, each say so in one line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    data, store, runs = str(digits_data.parent), workspace_store, str(tmp_path / "ws" / "runs")
    os.makedirs(runs)
    train = (f"{EXE} train --labels {store} --strong test_resnet --img-size 32 --batch-size 32 --epochs 1 --workers 0 "
             "--precision fp32 --device cpu --quiet --max-steps 4")
    script = read_only(data, store) + f"""
        {train} --run-name r && {EXE} verify {store} && {EXE} inspect {store} --no-plots && {EXE} report --no-plots &&
        echo READ-OK
        {EXE} prepare digits --out {data}/digits-again; echo "rc=$?"
        {EXE} label --weak-checkpoint {tmp_path}/ws/runs/r/last.pt --labels {data}/store --workers 0 --quiet; echo "rc=$?"
        {EXE} study {tiny_study(tmp_path, weak_ckpt)} --out {data}/study; echo "rc=$?"
        """ + read_only(runs) + f"{train} --run-name r2; echo rc=$?"
    done = in_namespace(script, env)
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    assert "READ-OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == [
        f"Error: prepare: the output {data}/digits-again: {data} is on a read-only file system; choose a writable place",
        f"Error: label: the store {data}/store: {data} is on a read-only file system; choose a writable place",
        f"Error: study: the workspace {data}/study: {data} is on a read-only file system; choose a writable place",
        f"Error: train: the run {runs}/r2: {runs} is on a read-only file system; choose a writable place"], lines
    assert done.stdout.count("rc=1") == 4 and "Traceback" not in done.stderr
    assert not os.path.exists(os.path.join(runs, "r2"))


@needs_mounts
def test_a_full_disk_is_one_line_and_freed_the_same_command_finishes_as_if_never_full(tmp_path, digits_data,
                                                                                       workspace_store, weak_ckpt):
    """A 64 KiB tmpfs fills under prepare, label and train: each ends in one line naming the path,
    what was written and the bytes it needed; nothing written in part is left. The tmpfs then grown
    (space freed), the same commands finish: train (its run never reached a checkpoint, so it starts
    again), and prepare and label, whose shards and store equal runs that never met a full disk."""
    from w2s_pipe.storage import open_store

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    full.mkdir()
    label = f"{EXE} label --weak-checkpoint {weak_ckpt} --workers 0 --precision fp32 --device cpu --quiet"
    train = (f"{EXE} train --labels {workspace_store} --strong test_resnet --img-size 32 --batch-size 32 --epochs 1 "
             f"--workers 0 --precision fp32 --device cpu --quiet --max-steps 2 --run-name {full}/run")
    script = f"""mount -t tmpfs -o size=64k tmpfs {full}
        left() {{ echo "left: $(find {full} -name '*.tmp-*' | wc -l) partial files"; }}
        {EXE} prepare digits --out {full}/digits; left; rm -rf {full}/digits; {train}; left
        mount -o remount,size=16m {full}; {train} && echo TRAINED; rm -rf {full}/run; mount -o remount,size=64k {full}
        {label} --labels {full}/store; left
        mount -o remount,size=16m {full}
        {EXE} prepare digits --out {full}/digits > /dev/null && {label} --labels {full}/store > /dev/null &&
        cp -r {full}/digits {full}/store {tmp_path}/ && echo FINISHED"""
    done = in_namespace(script, env)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 3 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for error, what in zip(errors, (f"the file {full}/digits/digits-", f"the checkpoint {full}/run/",
                                    f"the file {full}/store/")):
        assert error.startswith(f"Error: no space left on device writing {what}"), error
        assert "bytes needed" in error and "run the same command again" in error
    assert "TRAINED" in done.stdout  # the run that never reached a checkpoint: the same command trains it
    assert done.stdout.count("left: 0 partial files") == 3 and "FINISHED" in done.stdout, done.stdout + done.stderr[-2000:]
    again, whole = json.load(open(tmp_path / "digits" / "manifest.json")), json.load(open(digits_data / "manifest.json"))
    assert again["splits"] == whole["splits"]  # every shard's name, count, bytes and digest
    store, reference = open_store(str(tmp_path / "store")), open_store(workspace_store)
    assert store.complete and store.index().equals(reference.index())
    for shard in reference.shards:
        assert (store.shard_rows(shard["name"]).arrays["logits"] == reference.shard_rows(shard["name"]).arrays["logits"]).all()


def tiny_study(tmp_path, weak_ckpt) -> str:
    """A study of one store and one run (digits, the tiny weak model): seconds."""
    study = {"data": "digits", "seeds": 1, "ceiling": False, "grid": [{"loss": "hard"}],
             "train": {"batch_size": 16, "steps_per_epoch": 2, "epochs": 1, "workers": 0, "precision": "fp32",
                       "hflip": 0.0, "device": "cpu"},
             "weak": {"w": {"checkpoint": weak_ckpt}},
             "stores": {"s": {"weak": "w", "workers": 0, "precision": "fp32", "device": "cpu"}},
             "strong": {"strong": "test_resnet", "img_size": 32}}
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(study))  # JSON is YAML
    return str(path)


def end_digest(run_dir) -> str:
    ends = read_metrics(run_dir, "end")
    return ends[-1]["weights_sha256"]


@needs_mounts
def test_a_study_and_a_report_on_a_full_disk_end_in_one_line_and_finish_once_freed(tmp_path, digits_data, weak_ckpt):
    """A study whose workspace fills: the step that met it fails in one line (its dependents are
    skipped), the study ends in one line naming the file, and nothing half-written is left; freed,
    the same command finishes, and its run's weights equal those of a study that never met a full
    disk. A report into a full disk: one line; freed, it writes."""
    study = tiny_study(tmp_path, weak_ckpt)
    full = tmp_path / "full"
    full.mkdir()
    script = f"""mount -t tmpfs -o size=64k tmpfs {full}
        left() {{ echo "left: $(find {full} -name '*.tmp-*' | wc -l) partial files"; }}
        {EXE} study {study} --out {full}/ws --no-plots; echo rc=$?; left
        mount -o remount,size=16m {full}
        {EXE} study {study} --out {full}/ws --no-plots > /dev/null && echo FINISHED
        rm -rf {full}/ws/report; dd if=/dev/zero of={full}/filler bs=4k 2> /dev/null
        {EXE} report {full}/ws --no-plots; echo rc=$?; left
        rm {full}/filler; {EXE} report {full}/ws --no-plots > /dev/null && echo REPORTED
        cp -r {full}/ws {tmp_path}/after
        {EXE} study {study} --out {tmp_path}/reference --no-plots > /dev/null  # the same, never full"""
    done = in_namespace(script, {**os.environ, "OMP_NUM_THREADS": "1"})
    out, errors = done.stdout, [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in done.stderr and len(errors) == 2, done.stderr[-3000:]
    assert f"s-s0: failed: no space left on device writing the file {full}/ws/stores/s-s0/" in out, out
    assert "s0-hard: skipped: a step it needs failed" in out
    for error in errors:  # the study's report, then report's: each names the file it was writing
        assert error.startswith(f"Error: no space left on device writing the file {full}/ws/report/"), errors
    assert out.count("rc=1") == 2 and out.count("left: 0 partial files") == 2, out
    assert "FINISHED" in out and "REPORTED" in out, out + done.stderr[-2000:]
    runs = [f"{d}/runs/s0-hard" for d in (tmp_path / "reference", tmp_path / "after")]
    assert end_digest(runs[0]) == end_digest(runs[1])
