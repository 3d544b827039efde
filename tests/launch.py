"""Real multi-process runs for the tests: torchrun (gloo on the CPU), so that a run past its
limit explains itself and leaves nothing behind.

On a timeout, every process of the run that can dump its stacks (each `w2s-pipe` rank registers
SIGUSR1 with faulthandler) is asked to, all of them are killed, and the test fails with the stacks:
the next hang says where each rank was, and no rank or loading process outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

TORCHRUN_ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def torchrun_cmd(args, nproc: int = 2, launcher=("--standalone",)) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc-per-node={nproc}", "-m", "w2s_pipe.cli",
            *args]


def torchrun(args, *, nproc: int = 2, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node NPROC -m w2s_pipe.cli ARGS`, its output captured."""
    return run_limited(torchrun_cmd(args, nproc), timeout=timeout, env=env)


def two_nodes(args, *, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Two node agents (`torchrun --nnodes 2 --nproc-per-node 1`) meeting through the c10d rendezvous
    on loopback, as two machines would through one's address; each node's output captured. Past
    `timeout` every process of both is asked for its stacks and killed, and the test fails with them."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = ("--nnodes", "2", "--rdzv-backend", "c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id", "w2s-test")
    cmd = torchrun_cmd(args, 1, launcher)
    procs = [start_run(cmd) for _ in range(2)]
    deadline, done = time.monotonic() + timeout, []
    for proc in procs:
        try:
            done.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            stacks = [end_run(p)[1] for p in procs if p.poll() is None]
            pytest.fail(f"two nodes of {' '.join(args[:1])} ran past {timeout:.0f} s; their stacks:\n"
                        + "\n".join(s[-15000:] for s in stacks))
    return [subprocess.CompletedProcess(cmd, p.returncode, out, err) for p, (out, err) in zip(procs, done)]


def start_run(cmd, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, **TORCHRUN_ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_limited(cmd, *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = start_run(cmd, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ranks = {pid: rank for rank, pid in rank_pids(proc.pid).items()}
        out, err, dumped = end_run(proc)
        order = ", ".join(f"pid {pid}" + (f" (rank {ranks[pid]})" if pid in ranks else "") for pid in dumped)
        pytest.fail(f"{' '.join(cmd[3:])} ran past {timeout:.0f} s; the stacks of {order}, in that order:\n"
                    f"{err[-30000:]}\nstdout:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def end_run(proc: subprocess.Popen, grace: float = 1.0) -> tuple[str, str, list[int]]:
    """Dump the stacks of every process of the run that can, kill them all; (the output so far, the
    pids whose stacks it holds, in order). (torchrun starts each rank in a session of its own, so the run's processes are found
    by descent from the launcher, not by process group.)"""
    everyone = [proc.pid, *descendants(proc.pid)]
    dumped = dump_stacks(everyone, pause=grace)
    for pid in [*everyone, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return (*proc.communicate(), dumped)


def dump_stacks(pids, pause: float = 1.0) -> list[int]:
    """Ask each of `pids` that can (a handler for SIGUSR1) to write its threads' stacks, one process
    at a time: they share the run's stderr, and stacks written at once interleave line by line.
    Returns the pids asked, in order."""
    asked = []
    for pid in pids:
        if catches(pid, signal.SIGUSR1):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
                asked.append(pid)
            time.sleep(pause)
    return asked


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process (Linux's /proc)."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(name)] = (int(fields[1]), fields[0])
    return found


def descendants(pid: int) -> list[int]:
    """The live processes started by `pid`, by their children, and so on."""
    children: dict[int, list[int]] = {}
    for child, (parent, state) in _processes().items():
        if state != "Z":
            children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    state = _processes().get(pid)
    return state is not None and state[1] != "Z"


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (its SigCgt mask)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (sig - 1) & 1)


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the ranks torchrun `launcher` started (its children with RANK in their environment)."""
    ranks = {}
    for pid, (parent, _) in _processes().items():
        if parent != launcher:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if b"RANK" in environ:
            ranks[int(environ[b"RANK"])] = pid
    return ranks
