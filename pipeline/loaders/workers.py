"""Loading processes: how many, how they start, and that they end with the process they serve.

Workers are never forked from the process that runs a stage. By the time a loader starts, that
process runs threads (zarr's I/O event loop and its executor, TensorBoard's writer, the DataLoader's
own pin-memory thread), and `fork` copies every lock as one of them held it at that instant: a
worker can then wait forever inside CPython's after-fork initialisation, and the stage with it (a
two-rank CI run hung so at an epoch's end, in the evaluation loader; issue 29). Python 3.14 made
`forkserver` Linux's default start method for this reason.

So every loader here starts its workers through multiprocessing's fork server: a fresh process,
started once per process that loads, which imports torch and the loading modules once
(`worker_preload`) and stays single-threaded; each worker is forked from it, so it starts in
milliseconds, as a fork from the stage would (bench/loader_start.py measures it), without the
threads. What a fork would have carried over and the fork server cannot (the stage's environment
and working directory, as they are when the loader starts) each worker takes from `WorkerStart`,
and each ends when the stage does, however it ends (`end_with`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import threading
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..runtime.watchdog import end_with

START_METHOD = "forkserver"
PRELOAD = "w2s_pipe.pipeline.loaders.worker_preload"  # what the fork server imports before its first fork
_preload = {"set": False, "lock": threading.Lock()}


def default_workers() -> int:
    """One loading process per spare core of this process's share of the machine: cores divided by
    the processes torchrun started on this node, less one for the process itself. No cap: on an
    H100 machine's 16 cores, 15 loading processes labelled 3,270 img/s against 2,463 with 8
    (`--decode cpu`, resnet18; issue 12's measurement)."""
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, (os.cpu_count() or 2) // per_node - 1)


def loading_processes(requested: int | None) -> int:
    """A stage's loading processes: `requested`, or `default_workers()` where None. Where there are
    any, the fork server starts now, in the background: its imports (seconds) overlap the stage's
    own set-up (the model, the store) instead of delaying the first loader."""
    workers = default_workers() if requested is None else requested
    if workers > 0:
        start_context()
        multiprocessing.forkserver.ensure_running()
    return workers


def start_context():
    """The multiprocessing context every loader's workers start from (see the module's docstring).
    The fork server's preload is set once, before this process's first loader starts it; a server
    another library started earlier is used as it is (its workers then import what they need
    themselves: slower, as safe)."""
    context = multiprocessing.get_context(START_METHOD)
    with _preload["lock"]:
        if not _preload["set"]:
            context.set_forkserver_preload([PRELOAD])
            _preload["set"] = True
    return context


@dataclass(frozen=True)
class WorkerStart:
    """A loading process's first act (the DataLoader's `worker_init_fn`): end when the stage ends,
    and take the stage's environment and working directory, which a worker of the fork server does
    not inherit (an S3 endpoint or a credential set after the server started, a relative path)."""

    stage: int  # the process the loader serves
    environ: tuple[tuple[str, str], ...]
    cwd: str

    @classmethod
    def now(cls) -> "WorkerStart":
        return cls(os.getpid(), tuple(os.environ.items()), os.getcwd())

    def __call__(self, _worker_id: int = 0) -> None:
        end_with(self.stage)
        wanted = dict(self.environ)
        if dict(os.environ) != wanted:
            os.environ.clear()
            os.environ.update(wanted)
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)


def worker_loader(dataset, workers: int, *, pin_memory: bool, persistent: bool = False, **options) -> DataLoader:
    """A DataLoader over `dataset` with `workers` loading processes started as above (0: loads in
    this process). Its own generator: starting it draws nothing from torch's global one, which the
    model's own randomness (dropout) uses and a checkpoint saves."""
    if workers > 0:
        options.update(multiprocessing_context=start_context(), worker_init_fn=WorkerStart.now(), prefetch_factor=4,
                       persistent_workers=persistent)
    return DataLoader(dataset, num_workers=workers, pin_memory=pin_memory, generator=torch.Generator(), **options)
