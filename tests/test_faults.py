"""Faults a shared machine makes: data and stores on a read-only mount (read from, never written;
writing into one is one line before any work). Mounts are made in a private mount namespace
(`unshare -m`, as root); where that is not permitted the test skips, saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

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
def test_a_store_and_data_on_a_read_only_mount_are_read_and_never_written(tmp_path, digits_data, workspace_store):
    """train, verify, inspect and report work from a store and data on a read-only mount; prepare and
    label into one, and train into a read-only runs folder, each say so in one line."""
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
        """ + read_only(runs) + f"{train} --run-name r2; echo rc=$?"
    done = in_namespace(script, env)
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    assert "READ-OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == [
        f"Error: prepare: the output {data}/digits-again: {data} is on a read-only file system; choose a writable place",
        f"Error: label: the store {data}/store: {data} is on a read-only file system; choose a writable place",
        f"Error: train: the run {runs}/r2: {runs} is on a read-only file system; choose a writable place"], lines
    assert done.stdout.count("rc=1") == 3 and "Traceback" not in done.stderr
    assert not os.path.exists(os.path.join(runs, "r2"))
