"""Running a study's steps: each as soon as every step it needs has ended (graphlib's order), in
this process, a process pool (`--jobs N`) or submitit's executor (`--cluster`); each kind's work is
study_steps.py's; a step another process holds (a study started twice, or two sharing a workspace)
is waited for (StepClaims), never run twice. A failed step is reported and its dependents skipped,
never the others."""

from __future__ import annotations

import concurrent.futures
import contextlib
import graphlib
import json
import multiprocessing
import os
import re
import socket
import time
from dataclasses import dataclass, field

from ..errors import W2SError
from ..storage.claims import pid_alive, read_holder, take
from ..storage.fsutil import write_whole
from .study_plan import LAYERS, Step, marker_path
from .study_steps import KINDS

POLL_S = 0.5  # how often steps another process holds (or submitit's jobs) are looked at


def execute(step: Step, ws: str) -> dict:
    """Run one step (in this process, or a worker's: its kind's `run`, study_steps.py) and write its
    marker; returns the marker."""
    started = time.perf_counter()
    _cluster_ranks()
    result = KINDS[step.kind].run(step, ws)
    marker = {"id": step.id, "kind": step.kind, "name": step.name, "meta": step.meta, "options": step.options,
              "result": result, "seconds": time.perf_counter() - started}
    write_whole(marker_path(ws, step.id), json.dumps(marker, indent=1, default=str))  # whole or absent
    return marker


def _cluster_ranks() -> None:
    """In a submitit job of several tasks (the study's cluster: tasks_per_node, nodes), each task
    is a rank: submitit's TorchDistributedEnvironment exports what torchrun would (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT), as the MAE, DINO and DeiT codebases do."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    import submitit  # lazy: only in a submitit job, where it is installed

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()


class _InProcess:
    """`--jobs 1`: each step in this process, one after the other (the demo's way)."""

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # reported with the step, as a pool's would be
            future.set_exception(exc)
        return future


def _threads(count: int) -> None:
    """A pool worker's torch threads: the cores shared between the jobs."""
    import torch  # lazy: the worker's first act, before its step imports the rest

    torch.set_num_threads(count)


def engine(jobs: int, cluster: str | None, folder: str, parameters: dict):
    """Where a layer's steps run: this process (jobs 1), a pool of `jobs` processes (each step its
    own process), or submitit's executor for `cluster` ("slurm", or "local": its local executor)."""
    if cluster:
        try:
            import submitit  # lazy: an optional dependency, for clusters (pip install w2s-pipe[cluster])
        except ImportError:
            raise W2SError("--cluster needs submitit: pip install 'w2s-pipe[cluster]'", option="--cluster") from None
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        if parameters:
            executor.update_parameters(**parameters)
        return executor
    if jobs <= 1:
        return _InProcess()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_threads, initargs=(threads,), max_tasks_per_child=1)


@dataclass
class Progress:
    """Runs done / running / left, and the time so far, said as each step ends."""

    total: int
    echo: object
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def ended(self, step: Step, marker: dict | None, error: str | None, running: int, by=None) -> None:
        """Say that `step` ended: with its marker, or failed (`error`); `by` the process that ran it,
        where that was another study's."""
        self.done += 1
        what = error or said(marker) + (f" (run by {by} on this workspace)" if by else "")
        self.echo(f"[{self.done}/{self.total}] {step.name}: {what} ({(marker or {}).get('seconds', 0):.0f} s; "
                  f"{running} running, {self.total - self.done - running} left, "
                  f"{(time.perf_counter() - self.started) / 60:.1f} min so far)")


def said(marker: dict) -> str:
    """What a finished step made, from its marker: the progress line's words (its kind's)."""
    return KINDS[marker["kind"]].said(marker["result"])


class StepClaims:
    """Which process runs which step, when two studies (or one started twice) share a workspace:
    <ws>/study/claims/<step id>.json, created atomically (storage/claims.py's, as a labeller's
    shard claims and a run's owner.json) just before the step starts and removed when it ends. A
    step another live process holds is waited for: its marker is then this study's too, and its
    dependents go on; a holder that dies leaves the step to be taken over. The step claims are
    this module's rather than a library's (filelock's) because a waiter must know *who* holds a
    step, to say so, and whether that process is alive: a claim names its host and pid."""

    def __init__(self, ws: str):
        self.dir = os.path.join(ws, "study", "claims")
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held: set[str] = set()

    def path(self, step: Step) -> str:
        return os.path.join(self.dir, f"{step.id}.json")

    def take(self, step: Step) -> dict | None:
        """None once this process holds `step`, else its live holder."""
        holder = take(self.path(step), self.me)
        if holder is None:
            self.held.add(step.id)
        return holder

    def free(self, step: Step) -> bool:
        """Whether no live process holds `step` any more."""
        holder = read_holder(self.path(step))
        return holder is None or (holder.get("host") == self.me["host"] and not pid_alive(holder.get("pid")))

    def release(self, step_id: str) -> None:
        self.held.discard(step_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, f"{step_id}.json"))

    def release_all(self) -> None:
        for step_id in list(self.held):
            self.release(step_id)


def run_steps(steps: list[Step], ws: str, pool, echo, capacity: int = 1) -> dict:
    """Every step not done yet, each as soon as every step it needs has ended (graphlib's order;
    among the ready ones, earlier layers first), at most `capacity` at once in `pool`; a step that
    another process holds (StepClaims) is waited for, not run twice. {step id: error} of the steps
    that failed or were skipped because a step they need did, and how many steps another process ran."""
    todo = {s.id: s for s in steps if not s.done_in(ws)}
    graph = graphlib.TopologicalSorter({i: [d for d in s.deps if d in todo] for i, s in todo.items()})
    try:
        graph.prepare()
    except graphlib.CycleError as exc:
        raise W2SError(f"study steps wait on each other: {', '.join(todo[i].name for i in exc.args[1][:3])}") from None
    failed: dict[str, str] = {}
    ready: list[Step] = []
    running: dict[str, tuple] = {}  # step id: (step, future), in this study's pool
    elsewhere: dict[str, tuple] = {}  # step id: (step, its holder), held by another process
    claims, progress, others = StepClaims(ws), Progress(len(todo), echo), 0
    try:
        while graph.is_active():
            ready += sorted((todo[i] for i in graph.get_ready()), key=lambda s: LAYERS.index(s.layer))
            for step in list(ready):
                if len(running) >= capacity:
                    break
                ready.remove(step)
                lost = next((d for d in step.deps if d in failed), None)
                if lost:
                    failed[step.id] = f"skipped: a step it needs failed ({lost[:6]})"
                    _ended(step, None, failed[step.id], graph, progress, running)
                    continue
                holder = claims.take(step)
                if holder is not None:
                    echo(f"{step.name}: held by process {holder.get('pid')} on {holder.get('host')}; waiting for it "
                         f"(if that process is gone, delete {claims.path(step)})")
                    elsewhere[step.id] = (step, holder)
                elif step.done_in(ws):  # ended in another process since this study planned
                    claims.release(step.id)
                    others += 1
                    _ended(step, _read_marker(ws, step), None, graph, progress, running, by="another process")
                else:
                    running[step.id] = (step, pool.submit(execute, step, ws))
            _wait(running, elsewhere)
            for step_id, (step, future) in list(running.items()):
                if future.done():
                    del running[step_id]
                    try:
                        marker, error = future.result(), None
                    except Exception as exc:  # a failed step: reported, its dependents skipped, the others go on
                        marker, error = None, "failed: " + _reason(exc)
                        failed[step_id] = error
                    claims.release(step_id)
                    _ended(step, marker, error, graph, progress, running)
            for step_id, (step, holder) in list(elsewhere.items()):
                if step.done_in(ws):
                    del elsewhere[step_id]
                    others += 1
                    _ended(step, _read_marker(ws, step), None, graph, progress, running, by=f"process {holder.get('pid')}")
                elif claims.free(step):  # its holder ended without a marker, or died: this study tries it
                    del elsewhere[step_id]
                    ready.insert(0, step)
    finally:
        claims.release_all()
    return failed, others


def _ended(step: Step, marker: dict | None, error: str | None, graph, progress: Progress, running: dict,
           by=None) -> None:
    graph.done(step.id)
    progress.ended(step, marker, error, len(running), by)


def _read_marker(ws: str, step: Step) -> dict:
    with open(marker_path(ws, step.id)) as f:
        return json.load(f)


def _wait(running: dict, elsewhere: dict) -> None:
    """Until a step of this pool ends (or, while steps of another process are awaited, POLL_S)."""
    futures = [future for _, future in running.values()]
    if futures and all(isinstance(f, concurrent.futures.Future) for f in futures):
        concurrent.futures.wait(futures, timeout=POLL_S if elsewhere else None,
                                return_when=concurrent.futures.FIRST_COMPLETED)
    elif futures or elsewhere:  # submitit's jobs are polled
        time.sleep(POLL_S)


def _reason(exc: Exception) -> str:
    """A failed step's error on one line: a job's traceback (submitit's) reduced to its last line."""
    text = str(exc)
    if "Traceback (most recent call last)" in text:
        raised = [line for line in text.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b[^ ]*: ", line)]
        text = raised[-1].split(": ", 1)[1] if raised else text.strip().splitlines()[-1]
    return " ".join(text.split())[:300]
