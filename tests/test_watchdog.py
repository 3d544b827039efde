"""No run hangs and none leaves an orphan: a stuck process explains itself and ends, a stopped one
says where it was, a rank ends with its launcher (watchdog.py). A lost rank: test_train.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from launch import alive, catches, descendants, dump_stacks, end_run, rank_pids, start_run, torchrun_cmd

from w2s_pipe.pipeline.train.runs import read_metrics

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from Linux's /proc")

TRAIN = ["train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--workers", "1",
         "--precision", "fp32", "--quiet", "--device", "cpu",  # gloo on the CPU, on a GPU machine too
         "--log-every", "1"]


def steps_logged(run_dir: str) -> int:
    return max([r["step"] for r in read_metrics(run_dir, "step")], default=0)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)


def test_every_rank_dumps_its_stacks_and_none_outlives_its_launcher(workspace_store, tmp_path):
    """What a test's timeout does to a run (launch.end_run): each rank writes every thread's stack
    on SIGUSR1 and keeps going; then torchrun alone is killed, and its ranks, their fork servers and
    loading processes all end (nothing is left holding the run's output open)."""
    cmd = torchrun_cmd([*TRAIN, "--epochs", "50", "--labels", workspace_store, "--run-name", "long"])
    proc, below = start_run(cmd), []
    try:
        wait_for(lambda: steps_logged(str(tmp_path / "ws" / "runs" / "long")) >= 2, 120, "the run to train")
        ranks = rank_pids(proc.pid)
        assert sorted(ranks) == [0, 1] and all(catches(pid, signal.SIGUSR1) for pid in ranks.values())
        below = descendants(proc.pid)
        assert len(below) >= 6  # 2 ranks, and each rank's fork server and loading process (and resource tracker)
        dump_stacks([ranks[0], ranks[1]])
        assert all(alive(pid) for pid in ranks.values())  # a dump does not stop a rank
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)  # returns once no process holds the output
        wait_for(lambda: not any(alive(pid) for pid in below), 10, "the run's processes to end")
    finally:
        if proc.poll() is None or any(alive(pid) for pid in below):
            end_run(proc)
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert err.count("(most recent call first)") >= 4, err[-5000:]  # two ranks, several threads each
    assert len(re.findall(r'File ".*stages/train\.py", line \d+ in run_train', err)) == 2, err[-5000:]


STUCK = """
import sys, time
from w2s_pipe.pipeline.runtime import watchdog
from w2s_pipe.pipeline.runtime.watchdog import Watchdog

with Watchdog(rank=1, world_size=2, stall_timeout=float(sys.argv[1])):
    watchdog.beat("the next batch from the loading processes", "step 7, epoch 1")
    print("waiting", flush=True)
    time.sleep(float(sys.argv[2]))
print("done", flush=True)
"""


def test_a_stuck_rank_ends_with_its_place_and_stacks_after_the_stall_timeout():
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", STUCK, "2", "60"], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 124 and "done" not in out.stdout and took < 30
    first = out.stderr.splitlines()[0]
    # the watchdog looks once a second or so: on a loaded machine it says 3 s, never less than the timeout
    assert re.match(r"Error: rank 1 of 2 at step 7, epoch 1, waiting for the next batch from the loading processes: "
                    r"no progress for ([2-9]) s \(--stall-timeout 2\)", first), first
    assert 'File "<string>", line 9 in <module>' in out.stderr  # the main thread's stack, where it waits
    # a beat in time, and no timeout at all, let the same wait finish
    assert subprocess.run([sys.executable, "-c", STUCK, "5", "1"], capture_output=True, text=True).stdout.split() == \
        ["waiting", "done"]
    assert subprocess.run([sys.executable, "-c", STUCK, "0", "2"], capture_output=True, text=True).returncode == 0


def test_sigterm_ends_a_blocked_process_with_its_place():
    """The main thread blocked where no Python signal handler runs (a C call holding no lock
    of ours: here a read on a pipe nothing writes to); SIGTERM still ends it, with its line."""
    code = STUCK.replace("time.sleep(float(sys.argv[2]))", "import os; r, w = os.pipe(); os.read(r, 1)")
    proc = subprocess.Popen([sys.executable, "-c", code, "0", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "waiting\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.startswith("Error: rank 1 of 2 at step 7, epoch 1, waiting for the next batch from the loading "
                          "processes: stopped by SIGTERM (torchrun stops every rank so when another one fails")


def test_the_watchdog_leaves_the_process_as_it_found_it():
    from w2s_pipe.pipeline.runtime.watchdog import Watchdog, describe

    before = signal.getsignal(signal.SIGTERM)
    with Watchdog(stall_timeout=5) as dog:
        dog.beat("a test", "its middle")
        assert describe() == "the process at its middle, waiting for a test"
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before and describe() is None
    assert signal.set_wakeup_fd(-1) == -1  # no wakeup fd left behind


FAILING = """
import os, signal, sys, time
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.runtime import watchdog
from w2s_pipe.pipeline.runtime.watchdog import Watchdog

try:
    with Watchdog(rank=0, world_size=2) as dog:
        watchdog.beat("a collective", "step 3, epoch 1")
        try:
            raise W2SError(watchdog.describe() + ": the other rank is gone")
        except W2SError:
            dog.failing()
            if sys.argv[1] == "inside":  # torchrun's SIGTERM while the stage unwinds (a process group's shutdown)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)
            raise
except W2SError as exc:
    if sys.argv[1] == "after":  # or once it left the watched stage, before its error is printed
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.parametrize("when", ["inside", "after"])
def test_a_failing_rank_says_its_own_error_though_torchrun_stops_it_meanwhile(when):
    """torchrun sends SIGTERM to every rank the moment one fails; a rank already ending with its own
    error (the lost rank's, seen by its collective at the same moment) prints that error, not the
    stop, and is not cut short before it does (a CI run's rank 0 ended silently with -15)."""
    out = subprocess.run([sys.executable, "-c", FAILING, when], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr == "Error: rank 0 of 2 at step 3, epoch 1, waiting for a collective: the other rank is gone\n"
