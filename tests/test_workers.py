"""Loading processes start from a single-threaded fork server, never forked from the stage, and
still see the stage's environment and working directory (workers.py)."""

from __future__ import annotations

import os
import threading

import pytest
from torch.utils.data import DataLoader, IterableDataset

from w2s_pipe.pipeline.loaders.workers import worker_loader

HELD = threading.Lock()  # held by a thread of the test process while a loader starts


class Probe(IterableDataset):
    """What a loading process finds when it starts."""

    def __init__(self, wait: float):
        self.wait = wait

    def __iter__(self):
        got = HELD.acquire(timeout=self.wait)  # a forked copy of a held lock is never released
        if got:
            HELD.release()
        parent = os.getppid()
        yield {"lock": got, "parent": parent, "parent_threads": len(os.listdir(f"/proc/{parent}/task")),
               "probe": os.environ.get("W2S_PROBE"), "cwd": os.getcwd()}


@pytest.fixture
def held_by_a_thread():
    taken, done = threading.Event(), threading.Event()

    def hold():
        with HELD:
            taken.set()
            done.wait()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    taken.wait()
    yield
    done.set()
    thread.join()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads threads from Linux's /proc")
def test_a_worker_is_not_forked_from_the_threaded_stage(held_by_a_thread, tmp_path, monkeypatch):
    # A plain fork copies the lock as the other thread holds it: the hazard that hung a CI run.
    forked = next(iter(DataLoader(Probe(wait=1), batch_size=None, num_workers=1, multiprocessing_context="fork")))
    assert forked["lock"] is False and forked["parent"] == os.getpid()

    monkeypatch.setenv("W2S_PROBE", "set after the server may have started")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the fork server's first start, and a later loader
        seen = next(iter(worker_loader(Probe(wait=30), 1, pin_memory=False, batch_size=None)))
        assert seen["lock"] is True
        assert seen["parent"] != os.getpid() and seen["parent_threads"] == 1  # a single-threaded fork server
        assert seen["probe"] == "set after the server may have started" and seen["cwd"] == str(tmp_path)


def test_in_process_loading_starts_no_process():
    loader = worker_loader(Probe(wait=0), 0, pin_memory=False, batch_size=None)
    assert loader.num_workers == 0 and loader.multiprocessing_context is None


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield os.getpid()


STAGE = """
import sys, time
from test_workers import Endless
from w2s_pipe.pipeline.loaders.workers import worker_loader
it = iter(worker_loader(Endless(), 2, pin_memory=False, batch_size=None))
print(sorted({int(next(it)) for _ in range(64)}), flush=True)
time.sleep(600)
"""


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from Linux's /proc")
def test_a_killed_stage_leaves_no_loading_process():
    """SIGKILL the stage: its loading processes and their fork server end within seconds, and
    nothing holds the stage's output open."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    stage = subprocess.Popen([sys.executable, "-c", STAGE], env=env, stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in stage.stdout.readline().strip("[]\n").split(",")]
    assert len(workers) == 2
    server = parent_of(workers[0])
    assert server != stage.pid and parent_of(workers[1]) == server
    stage.kill()
    stage.wait()
    deadline = time.monotonic() + 20
    while not all(gone(p) for p in [*workers, server]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(p) for p in [*workers, server]), "loading processes outlived their stage"
    assert stage.stdout.read() == ""  # EOF: no process holds the stage's output
